"""``medfound segment IMAGE -p PROMPT [-p ...] -o OUT``: text-prompted segmentation of a 3D volume.

Label i of OUT is the i-th distinct structure (prompts naming one structure share its label). The
output and the JSON report are checked for writability before inference and appear together, only when
the whole run succeeded; on an error or a cancellation nothing is written. Existing files, even ones
another process creates meanwhile, are never replaced without ``--overwrite``, and the input image never.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..device import DEVICE_CHOICES
from ..errors import InputError
from ..io import WRITE_SUFFIXES, atomic_outputs, check_writable, load_volume, refuse_label_map, write_volume
from ..progress import CancelToken, cli_progress, json_progress


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("segment", help="segment structures named by text prompts", description=__doc__)
    parser.add_argument("image", help="3D image: NIfTI, NRRD, MHA or a DICOM series folder")
    parser.add_argument("-p", "--prompt", action="append", dest="prompts", required=True, metavar="PROMPT", help="structure to segment, e.g. 'liver' or 'left kidney in CT' (repeatable)")
    parser.add_argument("-o", "--output", required=True, help="output label map (.nii.gz, .nrrd, .mha)")
    parser.add_argument("--json", dest="json_out", help="write a per-prompt report (structure, volume ml, slices, mean ω) here")
    parser.add_argument("--model", default="default", help="model name or path (default: ct-v1 for a CT, mri-v1 for any other image, each when installed; else the slice model starter-v2)")
    parser.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
    parser.add_argument("--batch-size", type=int, default=None, help="slices per forward pass (default: 8 on CPU, 32 on GPU)")
    parser.add_argument(
        "--no-region-check", action="store_true",
        help="keep a structure on axial slices where the model sees a distant body region (e.g. liver beside the brain)",
    )
    parser.add_argument("--keep-islands", action="store_true", help="keep what the model returned for one-piece organs: small separate pieces, and a result on one slice only")
    parser.add_argument("--series", help="DICOM folder with several series: the SeriesInstanceUID or index (as listed) to read")
    parser.add_argument("--best-effort", action="store_true", help="also segment structures the model was not trained on (an untrained guess; an empty result proves nothing)")
    parser.add_argument("--force", action="store_true", help="segment an image even if it looks like a label map")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT / the JSON report if they exist")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--progress-json", action="store_true", help="progress as JSON lines on stdout, for a calling program (Slicer)")
    parser.set_defaults(func=run)


def _check_outputs(args: argparse.Namespace) -> list[Path]:
    image = Path(args.image).resolve()
    outputs = [Path(p) for p in (args.output, args.json_out) if p]
    for out in outputs:
        if out.resolve() == image:
            raise InputError(f"{out}: is the input image; choose another output path")
        check_writable(out, overwrite=args.overwrite)
    if not any(outputs[0].name.lower().endswith(s) for s in WRITE_SUFFIXES):
        raise InputError(f"{outputs[0]}: cannot write this format; use one of {', '.join(WRITE_SUFFIXES)}")
    if len(outputs) == 2 and outputs[0].resolve() == outputs[1].resolve():
        raise InputError(f"{outputs[1]}: is also the output label map; choose another path for --json")
    if args.batch_size is not None and args.batch_size < 1:
        raise InputError(f"--batch-size must be ≥ 1, got {args.batch_size}")
    return outputs


def run(args: argparse.Namespace, cancel: CancelToken | None = None) -> int:
    """Handler of ``medfound segment``; ``cancel`` lets tests and embedding code stop it."""
    from ..inference.prompts import plan_prompts
    from ..inference.segment import segment
    from ..vocabulary import load_vocabulary

    _check_outputs(args)
    plan_prompts(args.prompts, load_vocabulary(), None)  # fail on a bad prompt before reading a large image
    volume = load_volume(args.image, series=args.series)
    refuse_label_map(volume, args.force)
    bar = json_progress() if args.progress_json else cli_progress(disable=args.quiet)
    try:
        result = segment(
            volume, args.prompts, model=args.model, device=args.device, batch_size=args.batch_size,
            region_check=not args.no_region_check, keep_islands=args.keep_islands, best_effort=args.best_effort,
            force=args.force, progress=bar, cancel=cancel,
        )
    finally:
        bar.close()
    for warning in result.warnings:
        print(f"medfound: warning: {warning}", file=sys.stderr)
    _write_outputs(args, result, volume.meta.get("dicom_series"))
    for r in result.reports:
        state = f"{r.volume_ml:.1f} ml in {r.slices_present} slices (mean ω {r.mean_presence:.2f})" if r.found else r.status
        print(f"{r.label}: {r.structure_name} <- {', '.join(repr(p) for p in r.prompts)}: {state}")
    return 0


def _write_outputs(args: argparse.Namespace, result, series: dict | None) -> None:
    """The label map and the JSON report, published together (neither if one fails)."""
    paths = [Path(args.output), *([Path(args.json_out)] if args.json_out else [])]
    with atomic_outputs(paths, overwrite=args.overwrite) as temps:
        write_volume(result.labels, temps[0], paths[0])
        if args.json_out:
            report = {"image": str(args.image), "output": str(args.output), **({"dicom_series": series} if series else {}), **result.to_dict()}
            temps[1].write_text(json.dumps(report, indent=1))
