"""Same-run baseline for ct-v1: the MONAI 3D UNet of ``medfound evaluate --baseline`` trained for
``--minutes`` on ct-v1's training cases and scored on the held-out cases, written as JSON.

It is ``medfound evaluate --heldout HELD --baseline TRAIN --minutes M`` split in two so that the
baseline can train at the same time as ct-v1 itself (one core each) and be compared afterwards with
``--model`` (``compare`` in bench.segment joins the two on the same (case, structure) pairs):

    python training/tools/ct_v1_baseline.py --train $TRAIN --heldout $HELD --structures $S --minutes 56 --json unet.json
    python training/tools/ct_v1_baseline.py --model ct-v1 --heldout $HELD --structures $S --baseline-json unet.json --json ct-v1-eval.json
"""

from __future__ import annotations

import argparse
import json

from medfoundcore.bench.segment import baseline_report, compare, format_quality, heldout_report
from medfoundcore.data.datasets import find_cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--heldout", nargs="+", required=True)
    parser.add_argument("--structures", nargs="+", required=True)
    parser.add_argument("--train", nargs="+", help="train and score the UNet baseline on these cases")
    parser.add_argument("--minutes", type=float, default=56.0)
    parser.add_argument("--model", help="score this model and join it with --baseline-json")
    parser.add_argument("--baseline-json", help="a report written by the --train form")
    parser.add_argument("--json", required=True)
    args = parser.parse_args()
    held = find_cases(args.heldout)
    if args.train:
        out = baseline_report(find_cases(args.train), held, args.structures, args.minutes)
    else:
        model = heldout_report(held, args.model, args.structures, device="cpu")
        baseline = json.loads(open(args.baseline_json).read())
        out = {"model": model, "baseline": baseline, "comparison": compare(model["rows"], baseline["rows"])}
        print(format_quality(out))
    with open(args.json, "w") as handle:
        json.dump(out, handle, indent=1)


if __name__ == "__main__":
    main()
