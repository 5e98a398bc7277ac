"""Intensity normalisation, resampling and view selection as in BiomedParse-V §5.2.

Images become float32 in [0, 255]: CT through a window (width/level in HU), anything else through
0.5–99.5 percentile clipping, and images already in [0, 255] are left as they are.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from . import fve
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


# ------------------------------------------------------------------ the CT foundation encoder's grid
#: ITK (LPS) direction of an axis-aligned RAS grid: i → Right, j → Anterior, k → Superior.
RAS_DIRECTION_LPS = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
AIR_HU = -1024.0


def ras_grid(volume: Volume, spacing_xyz: tuple[float, float, float]) -> Volume:
    """An empty axis-aligned RAS grid of ``spacing_xyz`` (mm) covering ``volume``'s physical extent.

    Any input orientation (oblique included) maps onto it; the corners of the input's voxel box are
    transformed exactly, so nothing of the image is cut.
    """
    size = np.array(volume.shape[::-1], dtype=np.float64)
    corners = np.array([[i, j, k] for i in (-0.5, size[0] - 0.5) for j in (-0.5, size[1] - 0.5) for k in (-0.5, size[2] - 0.5)])
    ras = volume.index_to_ras(corners)
    step = np.asarray(spacing_xyz, dtype=np.float64)
    low, high = ras.min(axis=0), ras.max(axis=0)
    shape_xyz = np.maximum(1, np.ceil((high - low) / step).astype(int))
    origin_ras = low + step / 2  # centre of the first voxel
    origin_lps = (-origin_ras[0], -origin_ras[1], origin_ras[2])
    grid = sitk.Image([int(s) for s in shape_xyz], sitk.sitkUInt8)
    grid.SetSpacing(tuple(float(s) for s in step))
    grid.SetOrigin(tuple(float(o) for o in origin_lps))
    grid.SetDirection(RAS_DIRECTION_LPS)
    return Volume.from_sitk(grid)


def resample_onto(volume: Volume, grid: Volume, *, label: bool = False, default: float = 0.0) -> Volume:
    """``volume`` resampled onto ``grid`` (linear for images, nearest neighbour for label maps)."""
    image = volume.to_sitk()
    if not label and image.GetPixelID() != sitk.sitkFloat32:
        image = sitk.Cast(image, sitk.sitkFloat32)
    out = sitk.Resample(image, grid.to_sitk(), sitk.Transform(), _interpolator(label), float(default), image.GetPixelID())
    return Volume.from_sitk(out, volume.meta)


def hu_to_unit(array: np.ndarray, hu_range: tuple[float, float] = (-1000.0, 1000.0)) -> np.ndarray:
    """HU clipped to ``hu_range`` and scaled to [0, 1] (Merlin's CT normalisation), float32."""
    low, high = hu_range
    return ((np.clip(array, low, high) - low) / (high - low)).astype(np.float32)


def zxy(array_kji: np.ndarray) -> np.ndarray:
    """A RAS-grid array from ``(k, j, i)`` (SimpleITK order) to the encoder's ``(Z, X, Y)`` order."""
    return np.ascontiguousarray(np.transpose(array_kji, (0, 2, 1)))


def kji(array_zxy: np.ndarray) -> np.ndarray:
    """Inverse of :func:`zxy` (works on any leading batch/channel axes)."""
    return np.ascontiguousarray(np.swapaxes(array_zxy, -1, -2))


#: The CT encoder's grid (X, Y, Z mm) and the stride every block must be a multiple of (Z, X, Y).
CT_ENCODER_SPACING_XYZ = (1.5, 1.5, 3.0)
CT_ENCODER_MULTIPLE_ZXY = (16, 32, 32)
#: Largest cached training block (Z, X, Y): 432 × 432 × 432 mm, one encoder pass of ~12 s on 2 cores.
MAX_ZXY = (144, 288, 288)
BODY_LEVEL = 0.25  # -500 HU on the [0, 1] scale: soft tissue and bone are above, air below


def encoder_input(
    image: Volume, labels: Volume | None = None, modality: Modality = "CT", spacing_xyz: Sequence[float] = CT_ENCODER_SPACING_XYZ
) -> tuple[np.ndarray, np.ndarray | None, Volume]:
    """Image (and label map) on a RAS grid of ``spacing_xyz`` (default: the CT encoder's) as ``(Z, X, Y)``
    arrays, plus the grid volume.

    A CT is scaled from HU (Merlin's convention); any other image from its 0.5–99.5 percentiles onto
    the same [0, 1] range (outside the image: its low percentile, as air is for a CT)."""
    grid = ras_grid(image, tuple(float(s) for s in spacing_xyz))
    if modality == "CT":
        unit = zxy(hu_to_unit(resample_onto(image, grid, default=AIR_HU).array))
    else:
        low, high = (float(v) for v in np.percentile(image.array, MRI_PERCENTILES))
        resampled = resample_onto(image, grid, default=low).array
        unit = zxy(np.clip((resampled - low) / max(high - low, 1e-6), 0.0, 1.0).astype(np.float32))
    lab = None if labels is None else zxy(resample_onto(labels, grid, label=True).array.astype(np.uint8))
    return unit, lab, grid


def _span(mask_1d: np.ndarray, length: int, limit: int, focus: np.ndarray | None) -> slice:
    """An interval of at most ``limit`` covering ``mask_1d`` (centred on ``focus`` when it does not fit)."""
    idx = np.flatnonzero(mask_1d)
    lo, hi = (int(idx[0]), int(idx[-1]) + 1) if idx.size else (0, length)
    if hi - lo > limit:
        f = np.flatnonzero(focus) if focus is not None and focus.any() else np.arange(lo, hi)
        centre = int((f[0] + f[-1] + 1) // 2)
        lo = int(np.clip(centre - limit // 2, lo, hi - limit))
        hi = lo + limit
    return slice(lo, hi)


def body_box(unit: np.ndarray, labels: np.ndarray | None, limit: Sequence[int] = MAX_ZXY) -> tuple[slice, ...]:
    """The body's bounding box (largest connected region above -500 HU), capped at ``limit`` voxels
    per axis around the labelled structures."""
    body = unit > BODY_LEVEL
    components, n = ndimage.label(body)
    if n > 1:
        sizes = np.bincount(components.ravel())[1:]
        body = components == (1 + int(np.argmax(sizes)))
    focus = None if labels is None else labels > 0
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        f = None if focus is None else focus.any(axis=other)
        box.append(_span(body.any(axis=other), unit.shape[axis], limit[axis], f))
    return tuple(box)


def pad_randomly(
    arrays: Sequence[np.ndarray], size: Sequence[int], draw: Callable[[int], int]
) -> tuple[list[np.ndarray], list[int]]:
    """Zero-pad arrays of one shape to at least ``size`` per axis, the padding of each axis split at
    ``draw(n)`` ∈ [0, n] voxels in front; returns the arrays and the front padding (to shift indices).

    Why: a training crop larger than its image (an MSD hippocampus crop in a 40-64 voxel window) padded
    only at the end always puts the image in the window's corner, at one phase of the network's
    strides, while inference meets it centred or anywhere in a larger image."""
    missing = [max(0, c - s) for s, c in zip(arrays[0].shape, size)]
    before = [draw(n) if n else 0 for n in missing]  # no draw where nothing is missing: seeded runs of larger images unchanged
    if not any(missing):
        return list(arrays), before
    pads = [(b, n - b) for b, n in zip(before, missing)]
    return [np.pad(a, pads) for a in arrays], before


def pad_to_stride(array: np.ndarray, multiple: Sequence[int] = CT_ENCODER_MULTIPLE_ZXY, value: float = 0.0) -> np.ndarray:
    """Pad the last three axes at their end up to a multiple of ``multiple`` (value = air)."""
    pads = [(0, 0)] * (array.ndim - 3) + [(0, (-s) % m) for s, m in zip(array.shape[-3:], multiple)]
    return np.pad(array, pads, constant_values=value)


# ------------------------------------------------------------------------------ 2D slice model input
#: Version of the slice preprocessing below; training caches and model cards record it.
SLICE_PREPROCESSING_VERSION = 1
_SLICE_CHUNK = 32  # slices normalised / resized at once (bounds temporary memory)


def model_slices(
    array_kji: np.ndarray,
    axis: int,
    modality: str | None,
    size: int,
    window: str = "soft_tissue",
    *,
    label: bool = False,
) -> np.ndarray:
    """Slices along ``axis`` normalised to [0, 255] and resized to ``size × size``: ``(N, size, size)``.

    Labels (``label=True``) are resized with nearest neighbour and keep their values. CT is windowed
    chunk by chunk (voxel-wise); MRI percentiles need the whole volume and are computed once.
    The same function prepares training and inference input of the 2D text-prompted model.
    """
    moved = np.moveaxis(array_kji, axis, 0)
    if not label and modality != "CT":
        moved = normalize_intensity(np.ascontiguousarray(moved), modality or "MRI")
    out = np.empty((moved.shape[0], size, size), dtype=np.uint16 if label else np.float32)
    for start in range(0, moved.shape[0], _SLICE_CHUNK):
        chunk = moved[start : start + _SLICE_CHUNK]
        if not label and modality == "CT":
            chunk = normalize_intensity(chunk, "CT", window)
        out[start : start + _SLICE_CHUNK] = _resize_slices(chunk, size, label)
    return out


def _resize_slices(chunk: np.ndarray, size: int, label: bool) -> np.ndarray:
    import torch  # local: the rest of this module needs no torch
    import torch.nn.functional as F

    tensor = torch.from_numpy(np.ascontiguousarray(chunk).astype(np.float32))[:, None]
    if label:
        resized = F.interpolate(tensor, size=(size, size), mode="nearest-exact")
        return resized[:, 0].round().numpy().astype(np.uint16)
    resized = F.interpolate(tensor, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return resized[:, 0].clamp_(0, 255).numpy()


def context_half(k: int) -> int:
    """Context slices per side: N(k) = 3k - 2, and 0 for k = 0 (no FVE, the ablation baseline)."""
    return 0 if k == 0 else fve.slices_per_side(k)


def fve_images(stack: np.ndarray, start: int, stop: int, k: int) -> np.ndarray:
    """FVE images ``(stop-start, 3, S, S)`` of focal slices [start, stop) of a ``(N, S, S)`` stack.

    Only their slab is encoded; beyond the volume the edge slice repeats (paper §3.2). ``k = 0`` puts
    the focal slice in all three channels (no volumetric context).
    """
    if k == 0:
        return np.repeat(stack[start:stop, None], 3, axis=1).astype(np.float32)
    half = fve.slices_per_side(k)
    idx = np.clip(np.arange(start - half, stop + half), 0, stack.shape[0] - 1)
    return fve.encode_volume(stack[idx], k)[half : half + stop - start]
