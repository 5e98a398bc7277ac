"""Simulated interaction, as a user would give it: the first click in the middle of the structure,
corrective clicks in the largest error, a box around it, a stroke through it.

Used to train the interactive model and to evaluate it (and its baselines) with the same rules.
Masks are ``(Z, X, Y)`` bool arrays on a grid of ``spacing`` mm; points are voxel indices.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi


def _bbox(mask: np.ndarray, margin: int = 1) -> tuple[slice, ...]:
    where = np.nonzero(mask)
    return tuple(slice(max(0, int(w.min()) - margin), min(n, int(w.max()) + 1 + margin)) for w, n in zip(where, mask.shape))


def _edt(mask: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Distance (mm) to the outside, where the array's own edge counts as outside: a structure cut by
    the image (or a training crop) has its middle inside, not on the cut. (Without the padding the
    "deepest" voxel of a liver cut by the top slice was on that slice.)"""
    inner = tuple(slice(1, -1) for _ in range(mask.ndim))
    return ndi.distance_transform_edt(np.pad(mask, 1), sampling=spacing)[inner]


def depth_map(mask: np.ndarray, spacing: Sequence[float]) -> tuple[np.ndarray, tuple[slice, ...]]:
    """Distance (mm) of each voxel of ``mask`` to its outside, on the mask's bounding box."""
    box = _bbox(mask)
    return _edt(mask[box], spacing), box


def centre_point(mask: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """The voxel deepest inside ``mask`` (distance-transform maximum): where a user clicks first."""
    depth, box = depth_map(mask, spacing)
    local = np.unravel_index(int(np.argmax(depth)), depth.shape)
    return np.array([b.start + i for b, i in zip(box, local)], dtype=np.float64)


def interior_point(mask: np.ndarray, spacing: Sequence[float], rng: random.Random, centre_probability: float = 0.5) -> np.ndarray:
    """The centre (with ``centre_probability``) or a random voxel at least half as deep as the centre."""
    depth, box = depth_map(mask, spacing)
    if rng.random() < centre_probability:
        local = np.unravel_index(int(np.argmax(depth)), depth.shape)
    else:
        deep = np.flatnonzero(depth >= 0.5 * depth.max())
        local = np.unravel_index(int(deep[rng.randrange(deep.size)]), depth.shape)
    return np.array([b.start + i for b, i in zip(box, local)], dtype=np.float64)


def corrective_click(target: np.ndarray, predicted: np.ndarray, spacing: Sequence[float]) -> tuple[np.ndarray, bool] | None:
    """Where a user corrects next: the deepest voxel of the largest connected error (missed tissue →
    an include click, a leak → an exclude click). ``None`` when the prediction is exact."""
    best = None
    for include, error in ((True, target & ~predicted), (False, predicted & ~target)):
        if not error.any():
            continue
        components, n = ndi.label(error)
        sizes = np.bincount(components.ravel())[1:]
        largest = int(np.argmax(sizes))
        if best is None or sizes[largest] > best[0]:
            best = (int(sizes[largest]), components == largest + 1, include)
    if best is None:
        return None
    return centre_point(best[1], spacing), best[2]


def jittered_box(mask: np.ndarray, spacing: Sequence[float], rng: random.Random, jitter_mm: float = 5.0) -> np.ndarray:
    """The mask's bounding box with each face moved by up to ``jitter_mm`` (a box drawn by hand)."""
    where = np.nonzero(mask)
    lo = np.array([w.min() for w in where], dtype=np.float64)
    hi = np.array([w.max() for w in where], dtype=np.float64)
    for axis, mm in enumerate(spacing):
        lo[axis] += rng.uniform(-jitter_mm, jitter_mm) / mm
        hi[axis] += rng.uniform(-jitter_mm, jitter_mm) / mm
    upper = np.array(mask.shape, dtype=np.float64) - 1
    return np.stack([np.clip(np.minimum(lo, hi), 0, upper), np.clip(np.maximum(lo, hi), 0, upper)])


def stroke(mask: np.ndarray, spacing: Sequence[float], rng: random.Random) -> np.ndarray:
    """A stroke through the structure on one axial slice: polyline vertices ``(M, 3)`` from a deep
    point through the slice's centre to another deep point (what a user scribbles inside an organ)."""
    areas = mask.sum(axis=(1, 2)).astype(np.float64)
    z = rng.choices(range(len(areas)), weights=areas)[0]
    depth = _edt(mask[z], spacing[1:])
    centre = np.unravel_index(int(np.argmax(depth)), depth.shape)
    deep = np.flatnonzero(depth >= 0.5 * depth.max())
    ends = [np.unravel_index(int(deep[rng.randrange(deep.size)]), depth.shape) for _ in range(2)]
    return np.array([[z, *ends[0]], [z, *centre], [z, *ends[1]]], dtype=np.float64)

