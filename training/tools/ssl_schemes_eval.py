"""Issue 17 item 4: the seeds' self-supervised schemes, each against random initialisation, on one
downstream head.

Each encoder (pretrained by ``training/ssl_schemes.sh`` with one masking scheme for the same CPU
budget, or the same architecture randomly initialised) gets the same UNet head
(``medfoundcore.train.finetune``) trained for the same number of steps on the MSD hippocampus cases of
benchmark fold 0's training part, frozen (S0) and fine-tuned (S10), and is scored on fold 0's 40
held-out cases (anterior = head, posterior = body + tail). Arms already in the JSON are skipped, so a
killed run continues where it stopped.

    python training/tools/ssl_schemes_eval.py --arm progressive=runs/ssl/progressive/encoder:frozen ... --json runs/ssl/eval.json
    python training/tools/ssl_schemes_eval.py --table runs/ssl/eval.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from hippocampus_fold import fold_split  # this folder's tool: the benchmark's fold
from medfoundcore.benchmark.cases import default_data_dir
from medfoundcore.data.datasets import CaseRef
from medfoundcore.io import load_volume
from medfoundcore.metrics import dice
from medfoundcore.models.backbones.encoder3d import load_encoder, save_random_encoder
from medfoundcore.train.finetune import FinetuneConfig, finetune, predict_segmentation

PARTS = {1: "anterior (head)", 2: "posterior (body + tail)"}
MODES = {"frozen": True, "finetuned": False}


def fold_cases(fold: int = 0) -> tuple[list[CaseRef], list[str]]:
    """(training cases, held-out case ids) of the benchmark's fold (seed 0, 5 folds)."""
    data = default_data_dir()
    split = fold_split(fold)
    train = [CaseRef(c, c, data / f"{c}_img.nii.gz", data / f"{c}_lab.nii.gz", dict(PARTS), "MRI") for c in split.train]
    return train, list(split.test)


def score(model_dir: Path, held: list[str]) -> dict:
    """Mean Dice per part on the held-out cases, and every case's pair (for paired comparisons)."""
    data = default_data_dir()
    rows = []
    for case_id in held:
        image, label = load_volume(data / f"{case_id}_img.nii.gz"), load_volume(data / f"{case_id}_lab.nii.gz", label=True).array
        pred = predict_segmentation(model_dir, image, device="cpu").array
        rows.append([round(dice(pred == value, label == value), 5) for value in PARTS])
    mean = np.mean(rows, axis=0)
    return {name: round(float(m), 4) for name, m in zip(PARTS.values(), mean)} | {"cases": len(rows), "per_case": rows}


def run_arm(name: str, encoder: str, mode: str, args: argparse.Namespace) -> dict:
    train, held = fold_cases()
    train = train[: args.train_cases] if args.train_cases else train
    work = Path(args.work) / f"{name}-{mode}"
    control = encoder.startswith("random:")
    if control:
        encoder = str(save_random_encoder(encoder.removeprefix("random:"), work / "encoder", args.seed))
    config = FinetuneConfig(
        epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, batch_size=4, crop_size=32, spacing_mm=1.0, lr=1e-3,
        encoder_lr_scale=0.1, freeze_encoder=MODES[mode], device="cpu", seed=args.seed,
    )
    started = time.perf_counter()
    model_dir = finetune(train, config, encoder, output_dir=work / "model")
    seconds = time.perf_counter() - started
    _, card = load_encoder(encoder)
    pretraining = card.extra.get("pretrain_config", {}) if card.extra else {}
    return {
        "arm": name, "mode": mode, "encoder": encoder, "control": control, "train_seconds": round(seconds, 1),
        "steps": args.epochs * args.steps_per_epoch, "train_cases": len(train), "seed": args.seed,
        "pretraining_steps": card.metrics.get("steps") if card.metrics else None,
        "masking": pretraining.get("masking"), "dice": score(model_dir, held),
    }


def paired_difference(rows: list, control_rows: list, resamples: int = 2000) -> tuple[float, float, float]:
    """Mean over cases of (arm − control) Dice, averaged over the two parts, with a 95 % bootstrap interval."""
    diff = np.asarray(rows).mean(axis=1) - np.asarray(control_rows).mean(axis=1)
    rng = np.random.default_rng(0)
    means = rng.choice(diff, size=(resamples, diff.size)).mean(axis=1)
    return float(diff.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def table(paths: list[Path]) -> str:
    """Markdown rows; each arm beside the random-init control of the same mode and number of cases."""
    results = [r for path in paths for r in json.loads(path.read_text())]
    controls = {(r["mode"], r["train_cases"], r.get("seed", 0)): r for r in results if r.get("control")}
    lines = ["| encoder | pretraining | cases | mode | seed | anterior | posterior | mean | vs random init (95 % CI) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(results, key=lambda r: (-r["train_cases"], r["mode"], r.get("seed", 0), not r.get("control"), r["arm"])):
        d, control = r["dice"], controls.get((r["mode"], r["train_cases"], r.get("seed", 0)))
        versus = "(control)" if r.get("control") else "—"
        if control is not None and not r.get("control"):
            mean, low, high = paired_difference(d["per_case"], control["dice"]["per_case"])
            versus = f"{mean:+.4f} ({low:+.4f} … {high:+.4f})"
        pretraining = f"{r['masking']}, {r['pretraining_steps']} steps" if r["pretraining_steps"] else "none"
        lines.append(f"| {r['arm']} | {pretraining} | {r['train_cases']} | {r['mode']} | {r.get('seed', 0)} | {d[PARTS[1]]:.3f} | {d[PARTS[2]]:.3f} | "
                     f"{(d[PARTS[1]] + d[PARTS[2]]) / 2:.3f} | {versus} |")
    return "\n".join(lines)


def rescore(path: Path, work: Path) -> None:
    """Add per-case Dice to results written before it was recorded (the models are in ``work``)."""
    results = json.loads(path.read_text())
    _, held = fold_cases()
    for r in results:
        r.setdefault("control", r["encoder"].startswith(str(work)) and r["arm"].startswith("random"))
        if "per_case" not in r["dice"]:
            r["dice"] = score(work / f"{r['arm']}-{r['mode']}" / "model", held)
    path.write_text(json.dumps(results, indent=1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arm", action="append", default=[], help="NAME=ENCODER:MODE (ENCODER a model dir/name or random:<reference>; MODE frozen|finetuned)")
    parser.add_argument("--json", type=Path, help="results file (arms already in it are skipped; one file per process)")
    parser.add_argument("--work", default="runs/ssl/eval")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--steps-per-epoch", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0, help="seed of the head (and of a random-init encoder)")
    parser.add_argument("--train-cases", type=int, help="train on only the first N cases of the fold's training part (few labels)")
    parser.add_argument("--table", type=Path, nargs="+", help="print the markdown table of results files and exit")
    parser.add_argument("--rescore", type=Path, help="add per-case Dice to an older results file and exit")
    args = parser.parse_args()
    if args.table:
        print(table(args.table))
        return 0
    if args.rescore:
        rescore(args.rescore, Path(args.work))
        return 0
    results = json.loads(args.json.read_text()) if args.json.exists() else []
    for spec in args.arm:
        name, rest = spec.split("=", 1)
        encoder, mode = rest.rsplit(":", 1)
        if any(r["arm"] == name and r["mode"] == mode for r in results):
            continue
        results.append(run_arm(name, encoder, mode, args))
        print(json.dumps(results[-1]), flush=True)
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
