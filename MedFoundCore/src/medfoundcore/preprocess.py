"""Intensity normalisation, resampling and view selection as in BiomedParse-V §5.2.

Images become float32 in [0, 255]: CT through a window (width/level in HU), anything else through
0.5–99.5 percentile clipping, and images already in [0, 255] are left as they are.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from .errors import InputError
from .io import Volume

Modality = Literal["CT", "MRI"]

#: CT windows from the paper, name -> (width, level) in Hounsfield units.
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "soft_tissue": (400.0, 40.0),
    "lung": (1500.0, -160.0),
    "brain": (80.0, 40.0),
    "bone": (1800.0, 400.0),
}
MRI_PERCENTILES = (0.5, 99.5)
#: What the model sees as "something": normalised intensity above this (of 255). CT padding and air
#: (and lung, in the soft-tissue window) are 0; so are an MRI's empty corners after percentile clipping.
CONTENT_LEVEL = 4.0
#: A slice is blank when less than this fraction of it is content (0.1 % = 16 pixels at 128²).
BLANK_FRACTION = 0.001
#: Predicted masks may reach this many model pixels beyond the (hole-filled) content.
CONTENT_MARGIN = 3
MODALITY_ALIASES = {"CT": "CT", "MR": "MRI", "MRI": "MRI", "PT": None}


def detect_modality(volume: Volume) -> Modality:
    """CT or MRI, from DICOM/metadata when known, else from intensities (CT is in HU with air near -1000)."""
    hint = str(volume.meta.get("modality", "")).upper()
    if MODALITY_ALIASES.get(hint):
        return MODALITY_ALIASES[hint]  # type: ignore[return-value]
    array = volume.array
    sample = array[:: max(1, array.shape[0] // 16)].ravel()[:: 7]
    low, high = np.percentile(sample, [1.0, 99.0])
    looks_like_hu = low < -500 and -1100 <= sample.min() and sample.max() <= 4100 and high > -200
    return "CT" if looks_like_hu else "MRI"


def parse_modality(name: str | None) -> Modality | None:
    """Normalise a user-given modality ("ct", "MR", "mri") or None for automatic detection."""
    if name is None or name.lower() == "auto":
        return None
    value = MODALITY_ALIASES.get(name.upper())
    if value is None:
        raise InputError(f"unknown modality {name!r}; use CT, MRI or auto")
    return value  # type: ignore[return-value]


def window_ct(array: np.ndarray, window: str = "soft_tissue") -> np.ndarray:
    """Clip HU to ``window`` (a name from :data:`CT_WINDOWS`) and rescale to [0, 255]."""
    if window not in CT_WINDOWS:
        raise InputError(f"unknown CT window {window!r}; choose one of {', '.join(CT_WINDOWS)}")
    width, level = CT_WINDOWS[window]
    low = level - width / 2
    scaled = (array.astype(np.float32) - low) * (255.0 / width)
    return np.clip(scaled, 0.0, 255.0, out=scaled)


def clip_percentiles(array: np.ndarray, percentiles: tuple[float, float] = MRI_PERCENTILES) -> np.ndarray:
    """Clip to the given percentiles and rescale to [0, 255]; a constant image maps to 0."""
    data = array.astype(np.float32)
    low, high = (float(v) for v in np.percentile(data, percentiles))
    if high <= low:
        return np.zeros_like(data)
    scaled = (data - np.float32(low)) * np.float32(255.0 / (high - low))
    return np.clip(scaled, 0.0, 255.0, out=scaled)


def normalize_intensity(array: np.ndarray, modality: Modality, window: str = "soft_tissue") -> np.ndarray:
    """The paper's normalisation to float32 [0, 255] for ``modality``."""
    if modality == "CT":
        return window_ct(array, window)
    if array.size and array.min() >= 0 and array.max() <= 255 and np.issubdtype(array.dtype, np.integer):
        return array.astype(np.float32)
    return clip_percentiles(array)


def content_mask(
    stack: np.ndarray, level: float = CONTENT_LEVEL, margin: int = CONTENT_MARGIN, blank: float = BLANK_FRACTION
) -> np.ndarray:
    """Where anatomy can be in a normalised ``(N, H, W)`` stack: ``bool (N, H, W)``.

    Content is intensity above ``level``; holes are filled (lungs and bowel gas inside the body) and the
    region grown by ``margin`` pixels; a slice with less than ``blank`` of its area as content has none.
    A 2D model still answers on padding and air with its prior (the starter model drew the same
    1 787-pixel "liver" on every empty slice above a head), but nothing a scan can show lies there.
    """
    out = np.zeros(stack.shape, dtype=bool)
    grow = ndimage.generate_binary_structure(2, 1)
    for i, plane in enumerate(stack):
        seen = plane > level
        if seen.mean() < blank:
            continue
        filled = ndimage.binary_fill_holes(seen)
        out[i] = ndimage.binary_dilation(filled, grow, iterations=margin) if margin else filled
    return out


def _interpolator(label: bool) -> int:
    return sitk.sitkNearestNeighbor if label else sitk.sitkLinear


def resample_to_spacing(volume: Volume, spacing: tuple[float, float, float] | float, *, label: bool = False) -> Volume:
    """Resample onto a grid of the given ``(sx, sy, sz)`` spacing covering the same physical extent.

    Linear interpolation for images, nearest neighbour for label maps; direction and origin are kept.
    """
    target = np.broadcast_to(np.asarray(spacing, dtype=np.float64), (3,))
    if np.any(target <= 0):
        raise InputError(f"target spacing must be positive, got {tuple(target)}")
    image = volume.to_sitk()
    size_ijk = np.array(image.GetSize())
    new_size = np.maximum(1, np.round(size_ijk * np.array(volume.spacing) / target)).astype(int)
    resampled = sitk.Resample(
        image,
        [int(s) for s in new_size],
        sitk.Transform(),
        _interpolator(label),
        image.GetOrigin(),
        tuple(float(s) for s in target),
        image.GetDirection(),
        0,
        image.GetPixelID(),
    )
    return Volume.from_sitk(resampled, volume.meta)


def resample_like(volume: Volume, reference: Volume, *, label: bool = False) -> Volume:
    """Resample ``volume`` onto ``reference``'s grid (shape, spacing, origin, direction)."""
    image = volume.to_sitk()
    resampled = sitk.Resample(image, reference.to_sitk(), sitk.Transform(), _interpolator(label), 0, image.GetPixelID())
    return Volume.from_sitk(resampled, volume.meta)


def view_ratios(shape_kji: tuple[int, int, int]) -> dict[int, float]:
    """For each slicing axis of a ``(K, J, I)`` array, the in-plane elongation 2|H−W|/(H+W)."""
    ratios = {}
    for axis in range(3):
        h, w = (shape_kji[a] for a in range(3) if a != axis)
        ratios[axis] = 2 * abs(h - w) / (h + w)
    return ratios


def select_view(shape_kji: tuple[int, int, int]) -> int:
    """The slicing axis: 0 (axial, the K axis) unless its slices are elongated (ratio ≥ 0.5), then the roundest."""
    ratios = view_ratios(shape_kji)
    if ratios[0] < 0.5:
        return 0
    return min(ratios, key=lambda axis: ratios[axis])


def training_views(shape_kji: tuple[int, int, int], spacing_ijk: tuple[float, float, float]) -> list[int]:
    """Slicing axes used for training: all views when every ratio < 0.5 and spacing varies < 10 %."""
    ratios = view_ratios(shape_kji)
    spacing = np.asarray(spacing_ijk)
    near_isotropic = (spacing.max() - spacing.min()) / spacing.min() < 0.10
    if near_isotropic and all(r < 0.5 for r in ratios.values()):
        return [0, 1, 2]
    return [select_view(shape_kji)]
