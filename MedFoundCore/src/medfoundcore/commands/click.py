"""``medfound click IMAGE --point R,A,S[:+|:-] ... [--box ...] [--scribble ...] [--previous MASK] -o OUT``:
interactive segmentation from points, a box and strokes, with no name for the structure.

Coordinates are RAS millimetres exactly as 3D Slicer shows them (markup coordinates); write
``--point=R,A,S`` when the first coordinate is negative. ``:+`` (default) marks an include point,
``:-`` an exclude point (``--negative R,A,S`` is the same as ``--point R,A,S:-``). ``--box`` takes two
opposite corners ``R1,A1,S1,R2,A2,S2``; ``--scribble`` a stroke ``"R,A,S;R,A,S;...[:+|:-]"``;
``--previous`` the current mask to refine. OUT is a 0/1 label map on the input grid, written only on
success and never over an existing file without ``--overwrite`` (the input image never). The default
model is the learned ``interactive-v1`` on a CT and the classical intensity engine (points only) on an
MRI, where it scores higher from the first click (docs/interactive.md); ``--model`` picks either anywhere.

``--serve`` keeps the image and the model loaded and answers one request per JSON line on stdin
(for 3D Slicer: the encoder runs once, every further interaction reruns the decoder only)::

    {"id": 1, "points": [[R, A, S, true], ...], "box": [[R, A, S], [R, A, S]] | null,
     "scribbles": [{"points": [[R, A, S], ...], "include": true}], "previous": "last" | null | PATH,
     "output": PATH}
    {"command": "quit"}

It prints ``{"ready": true, "model": NAME | "intensity", "shape": ...}`` once loaded, progress lines, and per request ``{"id", "output", "voxels",
"volume_ml", "seconds"}`` or ``{"id", "error"}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ..device import DEVICE_CHOICES
from ..errors import InputError, MedFoundError
from ..progress import cli_progress, json_progress


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("click", help="segment the structure under points, a box or strokes (interactive, no name needed)", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image", help="NIfTI/NRRD/MHA file or DICOM folder")
    parser.add_argument("--point", action="append", default=[], metavar="R,A,S[:+|:-]", help="point in RAS mm, include (:+, default) or exclude (:-); repeatable")
    parser.add_argument("--negative", action="append", default=[], metavar="R,A,S", help="exclude point in RAS mm (repeatable), e.g. --negative=-40,2,10")
    parser.add_argument("--box", metavar="R1,A1,S1,R2,A2,S2", help="a box given by two opposite corners in RAS mm")
    parser.add_argument("--scribble", action="append", default=[], metavar="R,A,S;R,A,S;...[:+|:-]", help="a stroke through the structure (or, with :-, beside it); repeatable")
    parser.add_argument("--previous", metavar="MASK", help="the current mask (label map on the image's grid) to refine")
    parser.add_argument("-o", "--output", help="output label map (.nii.gz, .nrrd, .mha); not with --serve")
    parser.add_argument("--model", default="default",
                        help="'default' = the learned interactive model on a CT, the intensity engine on an MRI; 'intensity' = the classical intensity engine (points only); or a model name")
    parser.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
    parser.add_argument("--serve", action="store_true", help="answer JSON-line requests on stdin (see above) until 'quit' or end of input")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--progress-json", action="store_true", help="progress as JSON lines on stdout, for a calling program (Slicer)")
    parser.set_defaults(func=run)


def _split_sign(text: str) -> tuple[str, bool]:
    """``"...:+"`` / ``"...:-"`` → (text without the mark, include?); no mark means include."""
    body = text.strip()
    if body[-2:] in (":+", ":-"):
        return body[:-2], body[-1] == "+"
    return body, True


def parse_signed_point(text: str) -> tuple[tuple[float, float, float], bool]:
    """``"R,A,S"``, ``"R,A,S:+"`` or ``"R,A,S:-"`` → (point, include)."""
    from ..inference.click import parse_point

    body, include = _split_sign(text)
    return parse_point(body), include


def parse_box(text: str) -> list[tuple[float, float, float]]:
    values = [v for v in text.replace(";", ",").split(",") if v.strip()]
    try:
        numbers = [float(v) for v in values]
    except ValueError:
        numbers = []
    if len(numbers) != 6:
        raise InputError(f"box {text!r}: expected six numbers R1,A1,S1,R2,A2,S2 (two opposite corners in mm)")
    return [tuple(numbers[:3]), tuple(numbers[3:])]


def parse_scribble(text: str) -> tuple[list[tuple[float, float, float]], bool]:
    """``"R,A,S;R,A,S;...[:+|:-]"`` → (vertices, include)."""
    from ..inference.click import parse_point

    body, include = _split_sign(text)
    vertices = [parse_point(p) for p in body.split(";") if p.strip()]
    if not vertices:
        raise InputError(f"scribble {text!r}: expected points R,A,S separated by ';'")
    return vertices, include


def run(args: argparse.Namespace) -> int:
    from ..io import load_volume

    if args.serve:
        return serve(args, load_volume(args.image))
    if not args.output:
        raise InputError("give the output label map with -o OUT (or use --serve)")
    output = Path(args.output)
    if output.resolve() == Path(args.image).resolve():
        raise InputError(f"{output}: is the input image; choose another output path")
    if output.exists() and not args.overwrite:
        raise InputError(f"{output}: already exists; choose another path or pass --overwrite")
    points = [(*p, inc) for p, inc in map(parse_signed_point, args.point)]
    points += [(*p, False) for p, _ in map(parse_signed_point, args.negative)]
    box = parse_box(args.box) if args.box else None
    scribbles = [parse_scribble(s) for s in args.scribble]
    if not points and box is None and not scribbles:
        raise InputError("give at least one --point, --box or --scribble")
    volume = load_volume(args.image)
    previous = load_volume(args.previous, label=True) if args.previous else None
    progress = json_progress() if args.progress_json else cli_progress(disable=args.quiet)
    started = time.perf_counter()
    try:
        mask = _segment(volume, points, box, scribbles, previous, args.model, args.device, progress)
    finally:
        progress.close()
    print(json.dumps(_summary(mask, output, started)))
    return 0


def _segment(volume, points, box, scribbles, previous, model, device, progress):
    from ..inference.interactive import click

    return click(volume, points, box=box, scribbles=scribbles, previous=previous, model=model, device=device, progress=progress)


def _summary(mask, output: Path, started: float) -> dict:
    from ..io import save_volume

    save_volume(mask, output)
    voxels = int((mask.array > 0).sum())
    return {"output": str(output), "voxels": voxels, "volume_ml": round(voxels * mask.voxel_volume_ml, 2),
            "seconds": round(time.perf_counter() - started, 3)}


def serve(args: argparse.Namespace, volume) -> int:
    """The request loop of ``--serve``: one session, one JSON line per request and per answer."""
    from ..inference.interactive import IntensitySession, open_session

    progress = json_progress()
    session = open_session(volume, args.model, args.device)
    name = "intensity" if isinstance(session, IntensitySession) else session.model.card.name
    _answer({"ready": True, "model": name, "shape": list(volume.shape)})
    for line in sys.stdin:
        if not line.strip():
            continue
        request: dict = {}
        try:
            request = json.loads(line)
            if request.get("command") == "quit":
                break
            _answer({"id": request.get("id"), **_serve_one(session, request, progress)})
        except (MedFoundError, ValueError, KeyError, TypeError) as error:  # the request's own fault
            _answer({"id": request.get("id") if isinstance(request, dict) else None, "error": str(error)})
        except Exception as error:  # noqa: BLE001 - anything else: say so, keep serving the next request
            _answer({"id": request.get("id") if isinstance(request, dict) else None, "error": f"internal error ({type(error).__name__}: {error})"})
    return 0


def _serve_one(session, request: dict, progress) -> dict:
    from ..inference.interactive import Interaction
    from ..io import load_volume

    output = Path(request["output"])
    points = [p for p in request.get("points", [])]
    scribbles = request.get("scribbles", [])
    interaction = Interaction(
        [p[:3] for p in points], [bool(p[3]) if len(p) > 3 else True for p in points], request.get("box"),
        [s["points"] for s in scribbles], [bool(s.get("include", True)) for s in scribbles],
    )
    previous = request.get("previous")
    if previous not in (None, "last"):
        previous = load_volume(previous, label=True)
    started = time.perf_counter()
    mask = session.segment(interaction, previous, progress=progress)
    return _summary(mask, output, started)


def _answer(message: dict) -> None:
    print(json.dumps(message), flush=True)
