"""``medfound convert IN OUT``: read any supported volume (incl. a DICOM folder) and write NIfTI/NRRD/MHA.

Optionally resamples to an isotropic or per-axis spacing; the output file appears only when complete.
"""

from __future__ import annotations

import argparse
import sys

from ..io import load_volume, save_volume
from ..preprocess import resample_to_spacing


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("convert", help="convert / resample a volume (NIfTI, NRRD, MHA, DICOM folder)", description=__doc__)
    parser.add_argument("input", help="volume file or DICOM series folder")
    parser.add_argument("output", help="output file (.nii.gz, .nii, .nrrd, .mha)")
    parser.add_argument("--label", action="store_true", help="the input is a label map (integer values, nearest-neighbour resampling)")
    parser.add_argument("--series", help="DICOM folder with several series: the SeriesInstanceUID or index (as listed) to read")
    parser.add_argument("--spacing", help="resample to this spacing in mm: one value or SX,SY,SZ")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    volume = load_volume(args.input, label=args.label, series=args.series)
    for warning in volume.meta.get("warnings", []):
        print(f"medfound: warning: {warning}", file=sys.stderr)
    if args.spacing:
        values = [float(v) for v in args.spacing.split(",")]
        volume = resample_to_spacing(volume, values[0] if len(values) == 1 else tuple(values), label=args.label)
    save_volume(volume, args.output)
    print(f"wrote {args.output}: {volume.shape[::-1]} voxels (i,j,k), spacing {tuple(round(s, 4) for s in volume.spacing)} mm")
    return 0
