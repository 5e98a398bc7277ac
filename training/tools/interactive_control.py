"""The random-initialisation control for the interactive model: the same decoder, the same cases, the
same training budget, on the features of the pretrained CT encoder and of the same encoder randomly
initialised (seed fixed), both scored with the same simulated clicks on the held-out patients
(``medfound bench click``'s learned arm), joined on the same (case, structure) pairs.

Run one arm per core, side by side, then join:

    . training/ct_sets.sh
    FEW="$D/totalsegmentator/ts_ct_full_img.nii.gz $(ls $D/openkbp/train_pt_*_img.nii.gz | sort -V | head -10)"
    for arm in pretrained random; do OMP_NUM_THREADS=1 python training/tools/interactive_control.py --arm $arm \\
        --train $FEW --heldout $HELD --structures $CLICK_S --steps 1500 --minutes 600 --json runs/click-control-$arm.json & done; wait
    python training/tools/interactive_control.py --join runs/click-control-pretrained.json runs/click-control-random.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from medfoundcore.bench.click import format_quality, quality_report, summarize
from medfoundcore.data.datasets import find_cases
from medfoundcore.train.ct_features import cache_cases
from medfoundcore.train.interactive import InteractiveTrainConfig, ship_interactive, train_interactive


def run_arm(args: argparse.Namespace) -> dict:
    pretrained = args.arm == "pretrained"
    cases = cache_cases(find_cases(args.train), Path(args.cache_root) / args.arm, pretrained=pretrained)
    cfg = InteractiveTrainConfig(steps=args.steps, max_minutes=args.minutes, lr=args.lr, checkpoint_every=250)
    name = f"click-control-{args.arm}"
    net, history = train_interactive(cases, Path(args.work_root) / name, cfg)
    model_dir = Path(args.work_root) / f"{name}-model"
    ship_interactive(net, history, name, model_dir, training_data={"cases": history["cases"]}, overwrite=True, encoder_pretrained=pretrained)
    report = quality_report(find_cases(args.heldout), str(model_dir), arms=("learned",), clicks=args.clicks, min_ml=args.min_ml,
                            structures=args.structures)
    report["training"] = {"steps": history["steps_done"], "train_minutes": history["train_minutes"], "cases": history["cases"], "arm": args.arm}
    return report


def join(pretrained: dict, random: dict) -> str:
    """Both arms on the (case, structure) pairs both scored, as one table per arm."""
    shared = {(r["case"], r["name"]) for r in pretrained["rows"]} & {(r["case"], r["name"]) for r in random["rows"]}
    out = []
    for label, report in (("pretrained encoder", pretrained), ("random encoder", random)):
        rows = [r for r in report["rows"] if (r["case"], r["name"]) in shared]
        t = report["training"]
        out.append(f"### {label}: {t['steps']} steps, {t['train_minutes']} min\n")
        out.append(format_quality({"summary": summarize(rows, report["clicks"])}))
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arm", choices=["pretrained", "random"])
    parser.add_argument("--train", nargs="+")
    parser.add_argument("--heldout", nargs="+")
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--clicks", type=int, default=5)
    parser.add_argument("--min-ml", type=float, default=1.0)
    parser.add_argument("--structures", nargs="+", help="vocabulary keys scored (default: every labelled structure)")
    parser.add_argument("--cache-root", default="runs/ct-cache")
    parser.add_argument("--work-root", default="runs")
    parser.add_argument("--json", help="where an arm writes its report")
    parser.add_argument("--join", nargs=2, metavar=("PRETRAINED_JSON", "RANDOM_JSON"))
    args = parser.parse_args()
    if args.join:
        print(join(*(json.loads(Path(p).read_text()) for p in args.join)))
        return
    if not (args.arm and args.train and args.heldout and args.json):
        parser.error("an arm needs --arm, --train, --heldout and --json")
    Path(args.json).write_text(json.dumps(run_arm(args), indent=1))


if __name__ == "__main__":
    main()
