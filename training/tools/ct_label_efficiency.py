"""Label efficiency of ct-v1 against the MONAI 3D UNet: both trained on the first N OpenKBP training
patients for the same wall-clock budget (one core each), both scored on the same held-out OpenKBP
test patients. The foundation claim is that the decoder on pretrained features wins most where labels
are few. One (N, arm) per process; run two side by side, then print the table:

    . training/ct_sets.sh
    H="$(ls $D/openkbp/test_pt_*_img.nii.gz | sort -V | head -10)"; HN="brainstem spinal_cord parotid_gland_left parotid_gland_right mandible esophagus larynx"
    for n in 1 3 10; do for arm in ct-v1 unet; do
      OMP_NUM_THREADS=1 python training/tools/ct_label_efficiency.py --n $n --arm $arm --heldout $H --structures $HN --minutes 6 --json runs/eff-$arm-$n.json &
    done; wait; done
    python training/tools/ct_label_efficiency.py --table runs/eff-*.json

ct-v1's features come from the cache of training/train_ct_v1.sh (``runs/ct-cache/pretrained``); the
caching time is not counted in its budget (7 s per patient on 2 threads, the UNet reads raw volumes).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from ct_v1_control import train_and_score  # the same train → ship → score steps as the encoder control

from medfoundcore.bench.segment import baseline_report
from medfoundcore.data.datasets import find_cases
from medfoundcore.data.paths import shared_data_dir
from medfoundcore.train.ct_features import cache_cases
from medfoundcore.train.ct_segment import CTTrainConfig


def training_patients(n: int) -> list:
    """The first ``n`` OpenKBP training patients by number (the same ones ct-v1 was trained on)."""
    paths = sorted((shared_data_dir() / "openkbp").glob("train_pt_*_img.nii.gz"), key=lambda p: int(p.name.split("_")[2]))
    return find_cases(paths[:n])


def run(args: argparse.Namespace) -> dict:
    train, held = training_patients(args.n), find_cases(args.heldout)
    if args.arm == "unet":
        report = baseline_report(train, held, args.structures, args.minutes)
    else:
        cases = cache_cases(train, args.cache)
        cfg = CTTrainConfig(steps=args.steps, max_minutes=args.minutes, lr=2e-3, structures=args.structures, checkpoint_every=10**6)
        report = train_and_score(cases, f"eff-ct-{args.n}", args.work, held, args.structures, cfg)
        report["steps"] = report["training"]["steps"]
    return {"n": args.n, "arm": args.arm, "minutes": args.minutes, "threads": os.environ.get("OMP_NUM_THREADS"), **report}


def table(paths: list[str]) -> str:
    reports = [json.loads(Path(p).read_text()) for p in paths]
    by = {(r["n"], r["arm"]): r for r in reports}
    lines = ["| training patients | ct-v1 mean Dice | UNet mean Dice | ct-v1 steps | UNet steps |", "|---|---|---|---|---|"]
    for n in sorted({r["n"] for r in reports}):
        ct, unet = by.get((n, "ct-v1"), {}), by.get((n, "unet"), {})
        cell = lambda r: f"{r['summary']['mean_dice']:.3f}" if r else "—"  # noqa: E731
        lines.append(f"| {n} | {cell(ct)} | {cell(unet)} | {ct.get('steps', '—')} | {unet.get('steps', '—')} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int)
    parser.add_argument("--arm", choices=["ct-v1", "unet"])
    parser.add_argument("--heldout", nargs="+")
    parser.add_argument("--structures", nargs="+")
    parser.add_argument("--minutes", type=float, default=6.0)
    parser.add_argument("--steps", type=int, default=100_000, help="ct-v1's step cap (the clock normally ends it)")
    parser.add_argument("--cache", default="runs/ct-cache/pretrained")
    parser.add_argument("--work", default="runs")
    parser.add_argument("--json")
    parser.add_argument("--table", nargs="+", help="print the table of these reports")
    args = parser.parse_args()
    if args.table:
        print(table(args.table))
        return
    if not (args.n and args.arm and args.heldout and args.structures and args.json):
        parser.error("a run needs --n, --arm, --heldout, --structures and --json")
    Path(args.json).write_text(json.dumps(run(args), indent=1))


if __name__ == "__main__":
    main()
