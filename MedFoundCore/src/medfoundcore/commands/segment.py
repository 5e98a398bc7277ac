"""``medfound segment IMAGE -p PROMPT [-p ...] -o OUT``: text-prompted segmentation of a 3D volume.

Label i of OUT is the i-th prompt. The output (and the JSON report) appear only when the whole run
succeeded; on an error or a cancellation nothing is written. Existing files are never replaced without
``--overwrite``, and the input image never.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..device import DEVICE_CHOICES
from ..errors import InputError
from ..io import atomic_path, load_volume, save_volume
from ..progress import CancelToken, cli_progress


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("segment", help="segment structures named by text prompts", description=__doc__)
    parser.add_argument("image", help="3D image: NIfTI, NRRD, MHA or a DICOM series folder")
    parser.add_argument("-p", "--prompt", action="append", dest="prompts", required=True, metavar="PROMPT", help="structure to segment, e.g. 'liver' or 'left kidney in CT' (repeatable)")
    parser.add_argument("-o", "--output", required=True, help="output label map (.nii.gz, .nrrd, .mha)")
    parser.add_argument("--json", dest="json_out", help="write a per-prompt report (structure, volume ml, slices, mean ω) here")
    parser.add_argument("--model", default="default", help="model name or path (default: the shipped starter model)")
    parser.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
    parser.add_argument("--batch-size", type=int, default=None, help="slices per forward pass (default: 8 on CPU, 32 on GPU)")
    parser.add_argument(
        "--no-region-check", action="store_true",
        help="keep a structure on axial slices where the model sees a distant body region (e.g. liver beside the brain)",
    )
    parser.add_argument("--keep-islands", action="store_true", help="keep what the model returned for one-piece organs: small separate pieces, and a result on one slice only")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT / the JSON report if they exist")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def _check_outputs(args: argparse.Namespace) -> list[Path]:
    image = Path(args.image).resolve()
    outputs = [Path(p) for p in (args.output, args.json_out) if p]
    for out in outputs:
        if out.resolve() == image:
            raise InputError(f"{out}: is the input image; choose another output path")
        if out.exists() and not args.overwrite:
            raise InputError(f"{out}: already exists; choose another path or pass --overwrite")
    if args.batch_size is not None and args.batch_size < 1:
        raise InputError(f"--batch-size must be ≥ 1, got {args.batch_size}")
    return outputs


def run(args: argparse.Namespace, cancel: CancelToken | None = None) -> int:
    """Handler of ``medfound segment``; ``cancel`` lets tests and embedding code stop it."""
    from ..inference.segment import segment

    from ..vocabulary import load_vocabulary

    _check_outputs(args)
    for prompt in args.prompts:  # fail on a bad prompt before reading a large image
        load_vocabulary().normalize_prompt(prompt)
    volume = load_volume(args.image)
    bar = cli_progress(disable=args.quiet)
    try:
        result = segment(
            volume, args.prompts, model=args.model, device=args.device, batch_size=args.batch_size,
            region_check=not args.no_region_check, keep_islands=args.keep_islands, progress=bar, cancel=cancel,
        )
    finally:
        bar.close()
    for warning in result.warnings:
        print(f"medfound: warning: {warning}", file=sys.stderr)
    save_volume(result.labels, args.output)
    if args.json_out:
        with atomic_path(args.json_out) as tmp:
            tmp.write_text(json.dumps({"image": str(args.image), "output": str(args.output), **result.to_dict()}, indent=1))
    for r in result.reports:
        state = f"{r.volume_ml:.1f} ml in {r.slices_present} slices (mean ω {r.mean_presence:.2f})" if r.found else "not found"
        print(f"{r.label}: {r.structure_name} <- {r.prompt!r}: {state}")
    return 0
