"""3D clean-up of a label map that a 2D model assembled slice by slice.

Both steps decide per connected 3D piece (26-neighbourhood), not per slice.

**Vetoed pieces.** The anatomical veto (``region_veto``) gives per-slice evidence that a prompt cannot
be on a slice. A piece is removed when most of its slices are vetoed: the liver-shaped blobs on a brain
MRI go, while a hippocampus that a hallucinated witness vetoes on a few of its slices stays whole
(dropping those slices alone would cut it in two).

**Islands.**
Each slice is decided on its own, so a one-piece organ (``Structure.connected``: the liver, one kidney,
the brainstem) can come back as its main body plus islands on slices where the model was fooled —
a "liver" in the neck of a head-and-neck CT, 20 cm from the real one, which is what drives HD95 up.
Islands smaller than ``MIN_ISLAND_FRACTION`` of the structure's largest piece are removed (relative,
so that a both-sides prompt such as "kidney" keeps both kidneys, and a structure cut in two by the
field of view keeps both parts). Structures that may have many pieces (vertebrae, tumours, bowel) are
left alone.

**One-slice results.** On axial slices, a one-piece organ whose whole result lies on a single slice,
with both neighbouring slices in the volume and empty, is thinner than two slice spacings along the
body axis. Every one-piece structure in the vocabulary is longer than ``MIN_ORGAN_EXTENT_MM``, so the
result is a one-slice hallucination (the liver on one 6.5 mm slice of a brain MRI) and is removed. A
structure seen on several slices stays, even in separate pieces: a weak model's ISD may skip slices of
a true organ, and removing each one-slice piece cost the held-out liver 0.04 Dice.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

#: Pieces below this fraction of the largest piece of a one-piece structure are removed.
MIN_ISLAND_FRACTION = 0.1
#: Every ``Structure.connected`` organ is at least this long head to feet (hippocampal head ~15-20 mm,
#: adrenal gland ~40 mm, liver ~150 mm); with a shorter slice spacing it cannot fit on one slice.
MIN_ORGAN_EXTENT_MM = 15.0
#: A piece goes when more than this fraction of its slices are vetoed.
VETOED_MAJORITY = 0.5
#: Pieces are found on slices pooled to about this size: the model sees 128 px, so two pieces closer
#: than one of its pixels are one piece, and a 512² CT is labelled 16× faster.
POOLED_SIZE = 128
_FULL_CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)  # 26-neighbourhood: diagonal slices still touch


class _Pieces:
    """The connected pieces of one label value inside its bounding box, labelled on in-plane blocks of
    ``factor × factor`` voxels (a block belongs to the label if any of its voxels does)."""

    def __init__(self, labels: np.ndarray, value: int, box: tuple[slice, ...], factor: int) -> None:
        self.crop, self.value, self.factor = labels[box], value, factor
        self.z0 = box[0].start
        counts = _block_sum(self.crop == value, factor)  # label voxels per block
        self.ids, self.count = ndimage.label(counts > 0, structure=_FULL_CONNECTIVITY)
        self.sizes = np.bincount(self.ids.ravel(), weights=counts.ravel(), minlength=self.count + 1)[1:]

    def spans(self) -> list[slice]:
        """Slice range of each piece, in the whole volume (a connected piece covers every slice of it)."""
        return [slice(self.z0 + e[0].start, self.z0 + e[0].stop) for e in ndimage.find_objects(self.ids)]

    def remove(self, pieces: np.ndarray) -> None:
        """Set to 0 the voxels of the label that lie in ``pieces`` (1-based piece numbers)."""
        doomed = np.zeros(self.count + 1, dtype=bool)
        doomed[pieces] = True
        blocks = doomed[self.ids]
        native = blocks.repeat(self.factor, axis=1).repeat(self.factor, axis=2)[:, : self.crop.shape[1], : self.crop.shape[2]]
        self.crop[native & (self.crop == self.value)] = 0


def _block_sum(mask: np.ndarray, factor: int) -> np.ndarray:
    """``mask`` [Z, H, W] summed over in-plane blocks of ``factor × factor`` (edge blocks padded);
    uint8 for factor ≤ 15 (a block holds at most 225 voxels), summed rows first, then columns."""
    dtype = np.uint8 if factor <= 15 else np.int32
    if factor == 1:
        return mask.astype(dtype)
    z, h, w = mask.shape
    hp, wp = -(-h // factor) * factor, -(-w // factor) * factor
    if (hp, wp) != (h, w):
        padded = np.zeros((z, hp, wp), dtype=bool)
        padded[:, :h, :w] = mask
        mask = padded
    rows = mask.reshape(z, hp // factor, factor, wp).sum(axis=2, dtype=dtype)
    return rows.reshape(z, hp // factor, wp // factor, factor).sum(axis=3, dtype=dtype)


def _label_boxes(labels: np.ndarray, n_labels: int) -> list[tuple[slice, ...] | None]:
    """Bounding box of each label value 1..n_labels (None when absent), in one pass over the volume."""
    return ndimage.find_objects(labels, max_label=n_labels)


def _pieces(labels: np.ndarray, value: int, box: tuple[slice, ...] | None) -> _Pieces | None:
    if box is None:
        return None
    return _Pieces(labels, value, box, max(1, min(labels.shape[1:]) // POOLED_SIZE))


def remove_islands(
    labels: np.ndarray,
    structures: Sequence,
    min_fraction: float = MIN_ISLAND_FRACTION,
    *,
    axial_spacing_mm: float | None = None,
) -> dict[int, int]:
    """Set to 0 the small islands of every one-piece structure in ``labels`` (label i+1 = ``structures[i]``).

    ``labels`` is ``[N, H, W]`` with slices along axis 0, changed in place. When the slices are axial,
    ``axial_spacing_mm`` (their spacing) also removes a structure found on one inner slice only; the
    result maps each label value removed that way to its slice, so that the caller can say so. Only the
    bounding box of each label is examined, so memory stays proportional to the structure.
    """
    one_slice: dict[int, int] = {}
    if not any(s.connected for s in structures):
        return one_slice
    boxes = _label_boxes(labels, len(structures))
    too_thin = axial_spacing_mm is not None and 2 * axial_spacing_mm < MIN_ORGAN_EXTENT_MM
    for value, structure in enumerate(structures, start=1):
        box = boxes[value - 1] if structure.connected else None
        if box is None:
            continue
        if too_thin and _on_one_inner_slice(box, labels.shape[0]):
            crop = labels[box]
            crop[crop == value] = 0
            one_slice[value] = box[0].start
            continue
        pieces = _pieces(labels, value, box)
        small = np.flatnonzero(pieces.sizes < min_fraction * pieces.sizes.max()) + 1
        if small.size:
            pieces.remove(small)
    return one_slice


def _on_one_inner_slice(box: tuple[slice, ...], n_slices: int) -> bool:
    """The whole result lies on one slice that is neither the first nor the last of the volume."""
    return box[0].stop - box[0].start == 1 and 0 < box[0].start < n_slices - 1


def drop_vetoed_pieces(labels: np.ndarray, vetoed: np.ndarray, majority: float = VETOED_MAJORITY) -> np.ndarray:
    """Remove every piece of prompt i (label i+1) most of whose slices are vetoed (``vetoed[z, i]``).

    ``labels`` is ``[N, H, W]`` with slices along axis 0, changed in place. Returns ``[N, P]`` bool:
    the slices on which a piece of each prompt was removed.
    """
    dropped = np.zeros_like(vetoed, dtype=bool)
    boxes = _label_boxes(labels, vetoed.shape[1]) if vetoed.any() else []
    for i in np.flatnonzero(vetoed.any(axis=0)):
        pieces = _pieces(labels, i + 1, boxes[i])
        if pieces is None:
            continue
        spans = pieces.spans()
        doomed = [n for n, span in enumerate(spans, start=1) if vetoed[span, i].mean() > majority]
        if doomed:
            pieces.remove(np.array(doomed))
            for n in doomed:
                dropped[spans[n - 1], i] = True
    return dropped


__all__ = ["drop_vetoed_pieces", "remove_islands", "MIN_ISLAND_FRACTION", "MIN_ORGAN_EXTENT_MM", "VETOED_MAJORITY", "POOLED_SIZE"]
