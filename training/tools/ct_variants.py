"""Write simulated appearances of a labelled CT as extra training cases (`medfoundcore.data.ct_contrast`).

For `ct-v1`'s one abdominal training patient: contrast phases, thick slices and short slabs, each a
case in the shared layout whose notes say "same patient as <case>" (a split by subject keeps them
together) and whose region is the original's (`ct-v1`'s sampler draws them within the original's
group, so the abdomen is drawn as often as before, in more appearances). Deterministic per seed.

    python training/tools/ct_variants.py ../shared/data/totalsegmentator/ts_ct_full --out runs/ct-variants
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from medfoundcore.data.ct_contrast import simulate_contrast, slabs, thicken_slices
from medfoundcore.data.datasets import IMG_SUFFIX, LAB_SUFFIX, LABELS_SUFFIX, find_cases
from medfoundcore.io import Volume, save_volume

SLAB_MM = 45.0  # a short series such as ts_ct_dicom20 (40 mm)
SLABS_PER_SOURCE = 3
SLAB_ORGANS = ("liver", "spleen", "kidney_left", "kidney_right", "pancreas", "stomach")


def write_case(out: Path, case_id: str, image: Volume, labels: Volume, info: dict, how: str, source: str) -> None:
    meta = {**info, "note": f"{how}; same patient as {source} (simulated by training/tools/ct_variants.py)"}
    save_volume(image, out / f"{case_id}{IMG_SUFFIX}")
    save_volume(labels, out / f"{case_id}{LAB_SUFFIX}")
    (out / f"{case_id}{LABELS_SUFFIX}").write_text(json.dumps(meta, indent=1))
    print(case_id, how, image.shape, flush=True)


def evenly(items: list, count: int) -> list:
    if len(items) <= count:
        return items
    return [items[int(round(i))] for i in np.linspace(0, len(items) - 1, count)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("case", help="path prefix of a shared-layout case (without _img.nii.gz)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    prefix = Path(args.case)
    source = prefix.name
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (ref,) = find_cases([f"{prefix}{IMG_SUFFIX}"])
    case = ref.load()
    image, labels, names = case.image, case.labels, case.names
    info = json.loads(Path(f"{prefix}{LABELS_SUFFIX}").read_text())  # written as it is beside each variant
    slab_values = {v for v, n in names.items() if n in SLAB_ORGANS}
    rng = np.random.default_rng(args.seed)

    portal = [simulate_contrast(image, labels, names, "portal_venous", rng) for _ in range(3)]
    arterial = simulate_contrast(image, labels, names, "arterial", rng)
    variants = [
        ("pv1", portal[0], "portal venous contrast simulated from the labels"),
        ("pv2", portal[1], "portal venous contrast simulated from the labels"),
        ("art1", arterial, "arterial contrast simulated from the labels"),
        ("pv_thick", thicken_slices(portal[2], 7.5), "portal venous contrast, 7.5 mm slices simulated"),
        ("thick", thicken_slices(image, 5.0), "5 mm slices simulated"),
    ]
    for name, volume, how in variants:
        write_case(out, f"{source}_{name}", volume, labels, info, how, source)
    for tag, volume in (("slab", image), ("pv_slab", portal[1])):
        for i, (img, lab) in enumerate(evenly(slabs(volume, labels, SLAB_MM, slab_values), SLABS_PER_SOURCE)):
            write_case(out, f"{source}_{tag}{i}", img, lab, info, f"a {SLAB_MM:.0f} mm slab ({tag})", source)


if __name__ == "__main__":
    main()
