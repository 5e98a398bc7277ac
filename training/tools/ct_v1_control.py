"""The random-initialisation control for ct-v1: the same decoder, the same cases, the same training
budget, on the features of the pretrained CT encoder and of the same encoder randomly initialised
(seed fixed), both scored on the held-out patients and joined on the same (case, structure) pairs.

Run one arm per core, side by side, then join:

    . training/ct_sets.sh
    FEW="$D/totalsegmentator/ts_ct_full_img.nii.gz $(ls $D/openkbp/train_pt_*_img.nii.gz | sort -V | head -10)"
    for arm in pretrained random; do OMP_NUM_THREADS=1 python training/tools/ct_v1_control.py --arm $arm \\
        --train $FEW --heldout $HELD --structures $S --keys $K --minutes 12 --json runs/control-$arm.json & done; wait
    python training/tools/ct_v1_control.py --join runs/control-pretrained.json runs/control-random.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from medfoundcore.bench.segment import compare, format_quality, heldout_report
from medfoundcore.data.datasets import find_cases
from medfoundcore.train.ct_features import cache_cases
from medfoundcore.train.ct_segment import CTTrainConfig, ship, train_ct_segmenter


def train_and_score(cases, name: str, work_root: str | Path, heldout, structures: list[str], cfg: CTTrainConfig,
                    *, encoder_pretrained: bool = True) -> dict:
    """Train a ct-v1 decoder on cached ``cases`` (checkpoints in WORK_ROOT/NAME), ship it to
    WORK_ROOT/NAME-model and score it on the held-out cases; the report says how it was trained."""
    net, history = train_ct_segmenter(cases, Path(work_root) / name, cfg)
    model_dir = Path(work_root) / f"{name}-model"
    ship(net, history, name, model_dir, training_data={"cases": history["cases"]}, overwrite=True, encoder_pretrained=encoder_pretrained)
    report = heldout_report(heldout, str(model_dir), structures, device="cpu")
    report["training"] = {"steps": history["steps_done"], "train_minutes": history["train_minutes"], "cases": history["cases"]}
    return report


def run_arm(args: argparse.Namespace) -> dict:
    pretrained = args.arm == "pretrained"
    cases = cache_cases(find_cases(args.train), Path(args.cache_root) / args.arm, pretrained=pretrained)
    cfg = CTTrainConfig(steps=args.steps, max_minutes=args.minutes, lr=args.lr, structures=args.keys, checkpoint_every=250)
    return train_and_score(cases, f"control-{args.arm}", args.work_root, find_cases(args.heldout), args.structures, cfg,
                           encoder_pretrained=pretrained)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arm", choices=["pretrained", "random"])
    parser.add_argument("--train", nargs="+")
    parser.add_argument("--heldout", nargs="+")
    parser.add_argument("--structures", nargs="+", help="vocabulary keys scored on the held-out cases")
    parser.add_argument("--keys", nargs="+", help="vocabulary keys the decoder learns")
    parser.add_argument("--minutes", type=float, default=12.0)
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--cache-root", default="runs/ct-cache")
    parser.add_argument("--work-root", default="runs")
    parser.add_argument("--json", help="where an arm writes its report")
    parser.add_argument("--join", nargs=2, metavar=("PRETRAINED_JSON", "RANDOM_JSON"))
    args = parser.parse_args()
    if args.join:
        model, baseline = (json.loads(Path(p).read_text()) for p in args.join)
        print(format_quality({"model": model, "baseline": baseline, "comparison": compare(model["rows"], baseline["rows"])}))
        return
    if not (args.arm and args.train and args.heldout and args.structures and args.json):
        parser.error("an arm needs --arm, --train, --heldout, --structures and --json")
    Path(args.json).write_text(json.dumps(run_arm(args), indent=1))


if __name__ == "__main__":
    main()
