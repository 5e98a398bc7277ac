"""One-click zero-shot Dice on the labelled real volumes of ../shared/data (the table in docs/pretraining.md).

For each (case, label) the click is placed where a user would click "in the middle of the organ":
the voxel deepest inside the reference mask (``deep``), and the mask's centre of mass when that lies
inside it (``centre``). ``--set tuning`` are the cases the click settings were chosen on; ``--set unseen``
were only looked at afterwards. Each click is run with the shipped encoder's features and without them
(``--model none``, intensity only), and Dice against the reference label is printed as Markdown.

    OMP_NUM_THREADS=1 python training/tools/click_eval.py [--model encoder-v1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from medfoundcore.data.paths import shared_data_dir
from medfoundcore.inference.click import click_segment
from medfoundcore.io import load_volume
from medfoundcore.metrics import dice

TUNING = [
    ("totalsegmentator/ts_ct_sm", 1, "spleen"),
    ("totalsegmentator/ts_ct_full", 1, "spleen"),
    ("totalsegmentator/ts_ct_dicom20", 1, "spleen"),
    ("totalsegmentator/ts_ct_sm", 5, "liver"),
    ("totalsegmentator/ts_ct_sm", 3, "kidney_left"),
    ("totalsegmentator/ts_mr_sm", 1, "spleen"),
    ("totalsegmentator/ts_mr_sm", 5, "liver"),
    ("totalsegmentator/ts_mr_sm", 2, "kidney_right"),
]
# Cases never looked at while choosing the click settings (ClickSettings defaults were set on TUNING).
UNSEEN = [
    ("totalsegmentator/ts_ct_full", 5, "liver"),
    ("totalsegmentator/ts_ct_full", 2, "kidney_right"),
    ("totalsegmentator/ts_aorta_crop", 1, "aorta"),
    ("spinegeneric_ivadomed/unf01_T2w", 1, "spinal_cord"),
    ("brats2013/brats_2013_pat0001_1_FLAIR", 2, "edema"),
    ("msd_hippocampus/hippocampus_001", 1, "hippocampus_anterior"),
    ("colin27_mricron/colin27_ch2", 1, "Precentral_L"),
]


def clicks(image, mask: np.ndarray) -> dict[str, np.ndarray]:
    depth = ndi.distance_transform_edt(mask, sampling=image.spacing[::-1])
    points = {"deep": np.array(np.unravel_index(depth.argmax(), depth.shape))}
    centre = np.rint(ndi.center_of_mass(mask)).astype(int)
    if mask[tuple(centre)]:
        points["centre"] = centre
    return {k: image.index_to_ras(v[::-1][None])[0] for k, v in points.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="encoder-v1")
    parser.add_argument("--json", help="also write the rows here")
    parser.add_argument("--set", choices=("tuning", "unseen"), default="tuning", help="which cases (default %(default)s)")
    parser.add_argument("--negative", action="store_true",
                        help="second click: a negative point at the deepest leaked voxel of the first result (intensity only)")
    args = parser.parse_args()
    data = shared_data_dir()
    if args.negative:
        return negative_clicks(data, TUNING if args.set == "tuning" else UNSEEN)
    rows = []
    print("| case | structure | click | Dice (encoder features) | Dice (intensity only) | seconds (features) |")
    print("|---|---|---|---|---|---|")
    for case, label, name in TUNING if args.set == "tuning" else UNSEEN:
        image = load_volume(data / f"{case}_img.nii.gz")
        reference = load_volume(data / f"{case}_lab.nii.gz", label=True).array == label
        for kind, ras in clicks(image, reference).items():
            start = time.perf_counter()
            with_features = click_segment(image, [ras], model=args.model, device="cpu")
            seconds = time.perf_counter() - start
            plain = click_segment(image, [ras], model=None)
            row = {"case": case, "structure": name, "click": kind, "ras": [round(float(v), 1) for v in ras],
                   "dice_features": dice(with_features.mask.array > 0, reference),
                   "dice_intensity": dice(plain.mask.array > 0, reference), "seconds": seconds}
            rows.append(row)
            print(f"| {Path(case).name} | {name} | {kind} | {row['dice_features']:.3f} | {row['dice_intensity']:.3f} | {seconds:.1f} |")
    for key in ("dice_features", "dice_intensity"):
        print(f"mean {key}: {np.mean([r[key] for r in rows]):.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


def negative_clicks(data: Path, cases: list) -> int:
    """Dice after one positive click, then after adding one negative click in the leaked tissue."""
    print("| case | structure | click | leak depth (mm) | Dice 1 click | Dice + 1 negative |")
    print("|---|---|---|---|---|---|")
    for case, label, name in cases:
        image = load_volume(data / f"{case}_img.nii.gz")
        reference = load_volume(data / f"{case}_lab.nii.gz", label=True).array == label
        for kind, ras in clicks(image, reference).items():
            first = click_segment(image, [ras], model=None).mask.array > 0
            depth = ndi.distance_transform_edt(first & ~reference, sampling=image.spacing[::-1])
            if depth.max() < 6.0:  # no leak worth a second click
                continue
            kji = np.array(np.unravel_index(depth.argmax(), depth.shape))
            negative = image.index_to_ras(kji[::-1][None])[0]
            second = click_segment(image, [ras], [negative], model=None).mask.array > 0
            print(f"| {Path(case).name} | {name} | {kind} | {depth.max():.1f} | {dice(first, reference):.3f} | {dice(second, reference):.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
