"""``medfound evaluate``: score segmentations.

``medfound evaluate PRED GT``: per-label Dice / HD95 / surface Dice of one predicted label map.
``medfound evaluate --heldout CASE... [--model NAME] [--baseline TRAIN... --minutes N]``: a text-prompted
model on held-out ``*_img.nii.gz`` cases with their labels — per (case, structure) Dice/HD95, and the
volume it returns for structures that cannot be in the image — and, with ``--baseline``, a MONAI 3D UNet
trained in the same run for ``--minutes`` on TRAIN, reported side by side.
"""

from __future__ import annotations

import argparse
import json

from ..bench.segment import add_heldout_arguments
from ..errors import InputError
from ..io import atomic_path, load_volume
from ..metrics import DEFAULT_TOLERANCE_MM, evaluate, format_table, read_label_names


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("evaluate", help="score label maps, or a model on held-out cases", description=__doc__)
    parser.add_argument("pred", nargs="?", help="predicted label map (NIfTI/NRRD/MHA)")
    parser.add_argument("gt", nargs="?", help="reference label map on the same grid")
    parser.add_argument("--labels", help="JSON mapping label values to names ({'1': 'liver'} or a *_labels.json)")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE_MM, help="surface Dice tolerance in mm (default %(default)s)")
    parser.add_argument("--json", dest="json_out", help="also write the result as JSON to this file")
    held = parser.add_argument_group("a model on held-out cases")
    held.add_argument("--model", default="default", help="text-prompted model (default: ct-v1 for a CT, mri-v1 for any other image)")
    held.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    add_heldout_arguments(held)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.heldout:
        return _heldout(args)
    if not (args.pred and args.gt):
        raise InputError("give PRED and GT label maps, or --heldout CASE... to score a model")
    labels = read_label_names(args.labels) if args.labels else None
    pred = load_volume(args.pred, label=True)
    gt = load_volume(args.gt, label=True)
    rows = evaluate(pred, gt, labels, tolerance_mm=args.tolerance)
    print(format_table(rows))
    _write(args.json_out, {"pred": args.pred, "gt": args.gt, "tolerance_mm": args.tolerance, "labels": rows})
    return 0


def _heldout(args: argparse.Namespace) -> int:
    from ..bench.segment import format_quality, quality_report

    if args.pred or args.gt:
        raise InputError("--heldout scores a model on cases: give no PRED/GT label maps with it")
    report = quality_report(args)
    print(format_quality(report))
    _write(args.json_out, report)
    return 0


def _write(path: str | None, data: dict) -> None:
    if path:
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(data, indent=1))
