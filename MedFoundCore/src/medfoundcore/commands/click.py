"""``medfound click IMAGE --point R,A,S [--point ...] [--negative R,A,S] -o OUT``: zero-shot point segmentation.

Points are RAS millimetres exactly as 3D Slicer displays them (markup coordinates); use the
``--point=R,A,S`` form when the first coordinate is negative (``--point=-12.5,30,84``). The structure
under the positive points is segmented with no task labels, from the pretrained 3D encoder's
features and the clicked tissue's intensity; negative points stop the region. OUT is a 0/1 label map
on the input grid; it is written only on success and never replaces an existing file without
``--overwrite`` (the input image never).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..device import DEVICE_CHOICES
from ..errors import InputError
from ..progress import cli_progress, json_progress


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("click", help="segment the structure under RAS point clicks (zero-shot)", description=__doc__)
    parser.add_argument("image", help="NIfTI/NRRD/MHA file or DICOM folder")
    parser.add_argument("--point", action="append", required=True, metavar="R,A,S", help="positive click in RAS mm (repeatable); write --point=-12,30,5 when R is negative")
    parser.add_argument("--negative", action="append", default=[], metavar="R,A,S", help="negative click in RAS mm (repeatable), e.g. --negative=-40,2,10")
    parser.add_argument("-o", "--output", required=True, help="output label map (.nii.gz, .nrrd, .mha)")
    parser.add_argument("--model", default="encoder-v1", help="pretrained 3D encoder (name or folder); 'none' = intensity only")
    parser.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--progress-json", action="store_true", help="progress as JSON lines on stdout, for a calling program (Slicer)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..inference.click import click_segment, parse_point
    from ..io import load_volume, save_volume

    output = Path(args.output)
    if output.resolve() == Path(args.image).resolve():
        raise InputError(f"{output}: is the input image; choose another output path")
    if output.exists() and not args.overwrite:
        raise InputError(f"{output}: already exists; choose another path or pass --overwrite")
    positives = [parse_point(p) for p in args.point]
    negatives = [parse_point(p) for p in args.negative]
    volume = load_volume(args.image)
    model = None if str(args.model).lower() == "none" else args.model
    progress = json_progress() if args.progress_json else cli_progress(disable=args.quiet)
    try:
        result = click_segment(volume, positives, negatives, model, args.device, progress=progress)
    finally:
        progress.close()
    save_volume(result.mask, output)
    voxels = int(result.mask.array.sum())
    summary = {
        "output": str(output),
        "voxels": voxels,
        "volume_ml": round(voxels * result.mask.voxel_volume_ml, 2),
        "tolerance": result.tolerance,
        "opening_radius_mm": result.opening_radius_mm,
        "encoder_features": result.used_features,
    }
    print(json.dumps(summary))
    return 0
