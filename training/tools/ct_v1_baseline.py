"""Same-run baseline for ct-v1: the MONAI 3D UNet of ``medfound evaluate --baseline`` trained for
``--minutes`` on ct-v1's training cases and scored on the held-out cases, written as JSON.

It is ``medfound evaluate --heldout HELD --baseline TRAIN --minutes M`` split in two so that the
baseline can train at the same time as ct-v1 itself (one core each) and be compared afterwards with
``--model`` (``compare`` in bench.segment joins the two on the same (case, structure) pairs):

    python training/tools/ct_v1_baseline.py --train $TRAIN --heldout $HELD --structures $S --minutes 56 --json unet.json
    python training/tools/ct_v1_baseline.py --model ct-v1 --heldout $HELD --structures $S --baseline-json unet.json --json ct-v1-eval.json

(``--model`` without ``--baseline-json`` writes the model's report alone; ``--join MODEL_JSON
BASELINE_JSON --json OUT`` joins two such reports later.)
"""

from __future__ import annotations

import argparse
import json

from medfoundcore.bench.segment import baseline_report, compare, format_quality, heldout_report
from medfoundcore.data.datasets import find_cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--heldout", nargs="+")
    parser.add_argument("--structures", nargs="+")
    parser.add_argument("--train", nargs="+", help="train and score the UNet baseline on these cases")
    parser.add_argument("--minutes", type=float, default=56.0)
    parser.add_argument("--model", help="score this model and join it with --baseline-json")
    parser.add_argument("--baseline-json", help="a report written by the --train form")
    parser.add_argument("--no-isd", action="store_true", help="with --model: no presence gate (ISD ablation)")
    parser.add_argument("--presence-gate", choices=["window", "slab"], help="with --model: how the presence gate is applied (ablation; segment(presence_gate=...))")
    parser.add_argument("--join", nargs=2, metavar=("MODEL_JSON", "BASELINE_JSON"))
    parser.add_argument("--json", required=True)
    args = parser.parse_args()
    if args.join:
        model, baseline = (json.loads(open(path).read()) for path in args.join)
    else:
        if not (args.heldout and args.structures):
            parser.error("--heldout and --structures are needed unless --join")
        held = find_cases(args.heldout)
        if args.train:
            model, baseline = baseline_report(find_cases(args.train), held, args.structures, args.minutes), None
        else:
            switches = {"use_isd": False} if args.no_isd else {}
            if args.presence_gate:
                switches["presence_gate"] = args.presence_gate
            model = heldout_report(held, args.model, args.structures, device="cpu", **switches)
            baseline = json.loads(open(args.baseline_json).read()) if args.baseline_json else None
    out = model if baseline is None else {"model": model, "baseline": baseline, "comparison": compare(model["rows"], baseline["rows"])}
    if baseline is not None:
        print(format_quality(out))
    with open(args.json, "w") as handle:
        json.dump(out, handle, indent=1)


if __name__ == "__main__":
    main()
