"""Simulated appearances of a labelled CT: contrast phases, thick slices, thin slabs.

Why: `ct-v1`'s encoder features are cached once per case, so intensity augmentation cannot happen
while the decoder trains; it has to happen before caching, as extra cached cases. Its one abdominal
training patient (`ts_ct_full`) is a non-contrast CT (liver 46 HU, spleen 35, aorta 41, median),
while most abdominal CTs a clinician segments are contrast-enhanced (held-out `ts_ct_dicom20`: liver
93, spleen 80, aorta 151), thick-sliced (`spleen_8`: 7.5 mm) or short (`ts_ct_dicom20`: 40 mm).

Contrast is simulated from the case's own organ labels: each labelled organ is brightened by a typical
enhancement of the phase (radiology textbook values, HU above the unenhanced value), scaled by one
random factor per variant and jittered per organ, and the offset map is smoothed so that an organ's
edge is not a step no scanner makes. Gas (below -200 HU) is left alone: an enhanced bowel wall does
not brighten the air inside it.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy.ndimage import gaussian_filter, gaussian_filter1d

from ..errors import InputError
from ..io import Volume

PHASES = ("portal_venous", "arterial")
# Enhancement above the unenhanced value in HU, (portal venous, arterial), matched against the label
# name in order: the first pattern contained in the name wins.
ENHANCEMENT_HU: tuple[tuple[str, tuple[float, float]], ...] = (
    ("portal_vein", (120.0, 60.0)),
    ("aorta", (120.0, 250.0)),
    ("artery", (120.0, 250.0)),
    ("trunk", (120.0, 250.0)),
    ("vena", (70.0, 15.0)),
    ("vein", (90.0, 30.0)),
    ("heart", (110.0, 180.0)),
    ("kidney", (130.0, 150.0)),
    ("spleen", (70.0, 60.0)),
    ("liver", (50.0, 15.0)),
    ("pancreas", (50.0, 70.0)),
    ("adrenal", (30.0, 40.0)),
    ("stomach", (30.0, 20.0)),
    ("duodenum", (30.0, 20.0)),
    ("small_bowel", (30.0, 20.0)),
    ("colon", (20.0, 10.0)),
    ("gluteus", (10.0, 5.0)),
    ("autochthon", (10.0, 5.0)),
    ("iliopsoas", (10.0, 5.0)),
)
GAS_HU = -200.0


def enhancement_hu(name: str, phase: str) -> float:
    """Typical enhancement (HU) of the structure called ``name`` in ``phase``; 0 for what does not
    enhance (bone, fat, lungs, urine and bile before the delayed phase)."""
    if phase not in PHASES:
        raise InputError(f"unknown contrast phase {phase!r}; choose one of {', '.join(PHASES)}")
    column = PHASES.index(phase)
    for pattern, values in ENHANCEMENT_HU:
        if pattern in name:
            return values[column]
    return 0.0


def simulate_contrast(
    image: Volume,
    labels: Volume,
    names: Mapping[int, str],
    phase: str,
    rng: np.random.Generator,
    strength: tuple[float, float] = (0.7, 1.3),
    organ_jitter: float = 0.15,
    edge_sigma_mm: float = 2.0,
) -> Volume:
    """``image`` (HU) as if scanned in ``phase``: each labelled structure brightened by its
    :func:`enhancement_hu` × one factor drawn from ``strength`` for the whole variant × (1 ± ``organ_jitter``)."""
    if labels.shape != image.shape:
        raise InputError(f"labels {labels.shape} and image {image.shape} are not on one grid")
    scale = rng.uniform(*strength)
    offset = np.zeros(image.shape, dtype=np.float32)
    for value, name in sorted(names.items()):
        enhancement = enhancement_hu(name, phase)
        if enhancement:
            offset[labels.array == value] = enhancement * scale * rng.uniform(1 - organ_jitter, 1 + organ_jitter)
    sigma = [edge_sigma_mm / s for s in image.spacing[::-1]]  # array axes are (k, j, i)
    offset = gaussian_filter(offset, sigma)
    hu = image.array.astype(np.float32)
    return image.with_array(np.where(hu > GAS_HU, hu + offset, hu), contrast_phase=phase)


def thicken_slices(image: Volume, thickness_mm: float) -> Volume:
    """``image`` as reconstructed with slices ``thickness_mm`` thick on its own slice positions: a
    Gaussian slice profile whose full width at half maximum is the thickness, along the slice axis."""
    spacing = image.spacing[2]
    if thickness_mm <= spacing:
        raise InputError(f"a slice thickness of {thickness_mm} mm is not thicker than the {spacing} mm slices")
    sigma = thickness_mm / (2.0 * np.sqrt(2.0 * np.log(2.0))) / spacing
    return image.with_array(gaussian_filter1d(image.array.astype(np.float32), sigma, axis=0), slice_thickness_mm=thickness_mm)


def slabs(image: Volume, labels: Volume, length_mm: float, wanted: set[int]) -> list[tuple[Volume, Volume]]:
    """Consecutive, non-overlapping slabs of ``length_mm`` along the slice axis (image and labels
    cropped alike, geometry kept) that hold at least one voxel of a label value in ``wanted``."""
    count = max(1, int(round(length_mm / image.spacing[2])))
    pieces = []
    for start in range(0, image.shape[0] - count + 1, count):
        box = (slice(start, start + count), slice(None), slice(None))
        lab = labels.crop(box)
        if np.isin(lab.array, list(wanted)).any():
            pieces.append((image.crop(box), lab))
    return pieces
