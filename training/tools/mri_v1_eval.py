"""Held-out evaluation of ``mri-v1`` beside a same-budget MONAI 3D UNet (1 mm, trained side by side).

Scores each structure the held-out case labels: the parts (hippocampal head and body, necrosis, oedema,
non-enhancing and enhancing tumour, spinal cord) and the unions (hippocampus, tumour core, whole
tumour). The text model gets the parts in one ``segment`` call (the label map a user gets) and the
unions as prompts of their own, each thresholded on its own (a union and its parts cannot share one
label map); the UNet predicts the parts as classes and its unions are the unions of its classes.
Absent structures: "liver" (untrained: the text path alone) on every case, and the trained structures
a case cannot hold (spinal cord on a hippocampus crop, hippocampus on a cord crop): the voxels returned.

    python training/tools/mri_v1_eval.py --train $TRAIN --heldout $HELD --minutes 50 --json runs/mri-unet.json
    python training/tools/mri_v1_eval.py --model mri-v1 --heldout $HELD --baseline-json runs/mri-unet.json --json runs/mri-v1-eval.json
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from medfoundcore.bench.segment import predict_baseline, summarize, train_baseline
from medfoundcore.data.datasets import find_cases
from medfoundcore.metrics import dice, hd95
from medfoundcore.train.mri_segment import ABSENT_WHERE_LABELLED
from medfoundcore.vocabulary import ancestors, load_vocabulary, structure_values

PARTS = ["hippocampus_anterior", "hippocampus_posterior", "tumor_necrosis", "peritumoral_edema", "non_enhancing_tumor",
         "enhancing_tumor", "spinal_cord"]  # fmt: skip
UNIONS = ["hippocampus", "tumor_core", "brain_tumor"]
SPACING_MM = 1.0


def reference(case) -> dict[str, np.ndarray]:
    values = structure_values(case.names, load_vocabulary(), set(PARTS + UNIONS))
    return {k: np.isin(case.labels.array, v) for k, v in values.items()}


def score(case_id: str, key: str, pred: np.ndarray, ref: np.ndarray, spacing) -> dict:
    distance = hd95(pred, ref, spacing) if pred.any() else float("inf")
    return {"case": case_id, "name": key, "dice": round(dice(pred, ref), 4), "hd95_mm": round(distance, 2)}


def text_model_rows(model: str, case, refs: dict[str, np.ndarray]) -> tuple[list[dict], list[dict]]:
    """The parts from one ``segment`` call (the label map a user gets); the unions and the absent
    prompts from one more pass, each prompt thresholded on its own (``segment_mri.prompt_masks``)."""
    from medfoundcore.inference.segment import segment
    from medfoundcore.inference.segment_mri import prompt_masks

    vocab = load_vocabulary()
    rows = []
    parts = [k for k in PARTS if k in refs]
    if parts:
        labels = segment(case.image, parts, model=model).labels.array
        rows += [score(case.case_id, k, labels == i + 1, refs[k], case.image.spacing) for i, k in enumerate(parts)]
    unions = [k for k in UNIONS if k in refs]
    cannot = sorted({a for k in refs for a in ABSENT_WHERE_LABELLED.get(k, ())} & {"spinal_cord", "hippocampus"})
    absent_keys = ["liver", *cannot]
    masks = prompt_masks(case.image, [vocab.get(k) for k in unions + absent_keys], model)
    rows += [score(case.case_id, k, masks[i], refs[k], case.image.spacing) for i, k in enumerate(unions)]
    absent = [{"case": case.case_id, "name": k, "voxels": int(masks[len(unions) + j].sum())} for j, k in enumerate(absent_keys)]
    return rows, absent


def baseline_rows(net, case, refs: dict[str, np.ndarray]) -> list[dict]:
    classes = predict_baseline(net, case, PARTS, SPACING_MM).array
    vocab = load_vocabulary()
    rows = []
    for key in (k for k in PARTS + UNIONS if k in refs):
        members = [i + 1 for i, p in enumerate(PARTS) if p == key or key in ancestors(p, vocab)]
        rows.append(score(case.case_id, key, np.isin(classes, members), refs[key], case.image.spacing))
    return rows


def table(model: dict, baseline: dict | None) -> str:
    lines = ["| structure | cases | mri-v1 Dice | mri-v1 HD95 (mm) | UNet Dice | UNet HD95 (mm) |", "|---|---|---|---|---|---|"]
    for name in [k for k in PARTS + UNIONS if k in model]:
        m, b = model[name], (baseline or {}).get(name)
        other = f"{b['dice']:.3f} | {b['hd95_mm']}" if b else "— | —"
        lines.append(f"| {name} | {m['n']} | {m['dice']:.3f} | {m['hd95_mm']} | {other} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--heldout", nargs="+", required=True)
    parser.add_argument("--train", nargs="+", help="train the UNet baseline on these cases and score it")
    parser.add_argument("--minutes", type=float, default=50.0)
    parser.add_argument("--model", help="score this text model")
    parser.add_argument("--baseline-json", help="a report of the --train form, shown beside the model's")
    parser.add_argument("--json", required=True)
    args = parser.parse_args()
    held = [r.load() for r in find_cases(args.heldout)]
    if args.train:
        started = time.monotonic()
        net, steps = train_baseline(find_cases(args.train), PARTS, args.minutes, SPACING_MM, balance=True)
        rows = [r for case in held for r in baseline_rows(net, case, reference(case))]
        out = {"model": f"MONAI 3D UNet (16-32-64-128, {SPACING_MM:g} mm, 64^3 patches, data sets balanced as mri-v1)",
               "train_minutes": args.minutes, "steps": steps, "minutes": round((time.monotonic() - started) / 60, 1),
               "rows": rows, "summary": summarize(rows)}  # fmt: skip
    else:
        rows, absent = [], []
        for case in held:
            r, a = text_model_rows(args.model, case, reference(case))
            rows, absent = rows + r, absent + a
        out = {"model": args.model, "rows": rows, "summary": summarize(rows), "absent": absent}
        baseline = json.load(open(args.baseline_json))["summary"] if args.baseline_json else None
        print(table(out["summary"], baseline))
        print("absent structures (voxels returned):", {f"{a['case']}:{a['name']}": a["voxels"] for a in absent})
    with open(args.json, "w") as handle:
        json.dump(out, handle, indent=1)


if __name__ == "__main__":
    main()
