"""How a model's Dice depends on the in-plane field of view it is shown (a scale-sensitivity probe).

The pipeline resizes every slice to the model's size whatever its millimetres per pixel, so a model
trained on one scanner's field of view sees another's anatomy larger or smaller. This tool crops each
case in-plane to fields of view given in millimetres (centred on the body, padded nowhere), segments
the crop with the labelled structures prompted at once, and reports Dice on the crop against the
cropped reference. ``full`` is the uncropped case.

    python training/tools/fov_probe.py CASE_img.nii.gz ... --fov full 303x366 [--structures KEY ...] [--model M]

A field of view is ``ROWSxCOLS`` in mm along the array's rows (J) and columns (I) of an axial slice.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from medfoundcore.bench.segment import evaluated_keys, reference_map
from medfoundcore.data.datasets import find_cases
from medfoundcore.inference.segment import segment
from medfoundcore.io import Volume
from medfoundcore.metrics import dice
from medfoundcore.registry import load_model

BODY_HU = -300.0  # CT voxels above this are body (or table): the crop is centred on their box (a CT tool)


def crop_window(image: Volume, fov_mm: tuple[float, float]) -> tuple[slice, slice, slice]:
    """In-plane window of ``fov_mm`` (rows, cols) centred on the body's bounding box, clipped to the image."""
    body = (image.array > BODY_HU).any(axis=0)
    rows, cols = np.nonzero(body)
    window = [slice(None)]
    for centre_px, size_mm, spacing, extent in (
        ((rows.min() + rows.max()) // 2, fov_mm[0], image.spacing[1], image.shape[1]),
        ((cols.min() + cols.max()) // 2, fov_mm[1], image.spacing[0], image.shape[2]),
    ):
        half = int(round(size_mm / spacing / 2))
        window.append(slice(max(0, centre_px - half), min(extent, centre_px + half)))
    return tuple(window)


def probe(ref, keys: list[str], fovs: list[str], model: str) -> list[dict]:
    case = ref.load()
    truth, present = reference_map(case, keys)
    rows = []
    for fov in fovs:
        window = (slice(None),) * 3 if fov == "full" else crop_window(case.image, tuple(float(v) for v in fov.split("x")))
        image, reference = case.image.crop(window), truth.array[window]
        labels = segment(image, present, model=model, device="cpu").labels.array
        for i, key in enumerate(present):
            rows.append({"case": case.case_id, "fov": fov, "shape": list(image.shape), "structure": key,
                         "dice": round(dice(labels == i + 1, reference == i + 1), 3)})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("cases", nargs="+")
    parser.add_argument("--fov", nargs="+", default=["full"], help="'full' or ROWSxCOLS in mm")
    parser.add_argument("--model", default="default")
    parser.add_argument("--structures", nargs="+", default=None, help="structure keys (default: all the model knows)")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()
    _, card = load_model(args.model)
    keys = evaluated_keys(card, args.structures)
    rows = [row for ref in find_cases(args.cases) for row in probe(ref, keys, args.fov, args.model)]
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
