"""How the anatomical veto's witness bar trades true slices for false ones, on a validation split.

Segments each labelled case as the held-out evaluation does (its labelled structures prompted at
once, then every structure of a distant body region prompted alone) and, for every slice on which a
prompt passes the ISD with a mask, records the prompt's ω, the best ω of a rival present on that slice
and whether the structure is truly there. Prints how many true and false slices each witness bar
would drop (``inference/region_veto.py`` ships ω ≥ 0.9).

    python training/tools/veto_validation.py CASE_img.nii.gz ... [--structures KEY ...] [--json rows.json]
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from medfoundcore.bench.segment import distant_keys, evaluated_keys, reference_map
from medfoundcore.data.datasets import find_cases
from medfoundcore.inference.segment import segment
from medfoundcore.preprocess import select_view
from medfoundcore.registry import load_model

BARS = (0.0, 0.85, 0.9, 0.95)


def slice_rows(case_id: str, result, truth: np.ndarray) -> list[dict]:
    """One row per (prompt, slice) that passed the ISD with a mask; ``truth`` is [slice, prompt] bool."""
    s = result.scores
    rows = []
    for i, report in enumerate(result.reports):
        for z in np.flatnonzero(s.seen[:, i]):
            rows.append({"case": case_id, "prompt": report.structure_key, "slice": int(z), "omega": float(s.omega[z, i]),
                         "rival": float(s.rival[z, i]), "true": bool(truth[z, i])})
    return rows


def case_rows(ref, keys: list[str], model: str) -> list[dict]:
    case = ref.load()
    axis = select_view(case.image.shape)
    gt, present = reference_map(case, keys)
    rows = []
    if present:
        labels = np.moveaxis(gt.array, axis, 0).reshape(gt.shape[axis], -1)
        truth = np.stack([(labels == i + 1).any(axis=1) for i in range(len(present))], axis=1)
        rows += slice_rows(case.case_id, segment(case.image, present, model=model, device="cpu"), truth)
    distant = distant_keys(case)
    for key in (k for k in keys if k in distant and k not in present):
        result = segment(case.image, [key], model=model, device="cpu")
        rows += slice_rows(case.case_id, result, np.zeros((case.image.shape[axis], 1), bool))
    return rows


def table(rows: list[dict]) -> str:
    true = [r for r in rows if r["true"]]
    false = [r for r in rows if not r["true"]]
    lines = [f"| witness bar | true slices dropped (of {len(true)}) | false slices dropped (of {len(false)}) |", "|---|---|---|"]
    for bar in BARS:
        def dropped(group):
            return sum(r["rival"] >= bar and r["rival"] > r["omega"] for r in group)
        label = "any higher ω" if bar == 0 else f"ω ≥ {bar}"
        lines.append(f"| {label} | {dropped(true)} ({dropped(true) / max(1, len(true)):.1%}) | "
                     f"{dropped(false)} ({dropped(false) / max(1, len(false)):.1%}) |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("cases", nargs="+")
    parser.add_argument("--json", help="write the per-slice rows here")
    parser.add_argument("--model", default="default")
    parser.add_argument("--structures", nargs="+", default=None, help="structure keys (default: the held-out evaluation's)")
    args = parser.parse_args()
    _, card = load_model(args.model)
    keys = evaluated_keys(card, args.structures)
    rows = [row for ref in find_cases(args.cases) for row in case_rows(ref, keys, args.model)]
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f)
    print(table(rows))


if __name__ == "__main__":
    main()
