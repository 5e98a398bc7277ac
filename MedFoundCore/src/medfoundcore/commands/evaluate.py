"""``medfound evaluate PRED GT``: per-label Dice / HD95 / surface Dice table, optionally as JSON."""

from __future__ import annotations

import argparse
import json

from ..io import atomic_path, load_volume
from ..metrics import DEFAULT_TOLERANCE_MM, evaluate, format_table, read_label_names


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("evaluate", help="compare a predicted label map with a reference", description=__doc__)
    parser.add_argument("pred", help="predicted label map (NIfTI/NRRD/MHA)")
    parser.add_argument("gt", help="reference label map on the same grid")
    parser.add_argument("--labels", help="JSON mapping label values to names ({'1': 'liver'} or a *_labels.json)")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE_MM, help="surface Dice tolerance in mm (default %(default)s)")
    parser.add_argument("--json", dest="json_out", help="also write the table as JSON to this file")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    labels = read_label_names(args.labels) if args.labels else None
    pred = load_volume(args.pred, label=True)
    gt = load_volume(args.gt, label=True)
    rows = evaluate(pred, gt, labels, tolerance_mm=args.tolerance)
    print(format_table(rows))
    if args.json_out:
        with atomic_path(args.json_out) as tmp:
            tmp.write_text(json.dumps({"pred": args.pred, "gt": args.gt, "tolerance_mm": args.tolerance, "labels": rows}, indent=1))
    return 0
