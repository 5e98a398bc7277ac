"""Training augmentation with MONAI: geometry (affine, elastic), intensity, resolution and noise.

Augmentation runs on the slab of slices *before* Fractal Volumetric Encoding: an in-plane warp of a
pixel-mixed FVE image would tear its "super pixels" apart, whereas warping the slab and encoding
afterwards keeps the encoding exact. The slab's slices are stacked as channels so that every slice and
every target mask receive the same warp.

Left-right flips teach a model that left is right; they are only allowed when no prompted structure
has a side (``allow_lr_flip``).
"""

from __future__ import annotations

import numpy as np
from monai.transforms import (
    Compose,
    Rand2DElasticd,
    RandAdjustContrastd,
    RandAffined,
    RandFlipd,
    RandGaussianNoised,
    RandScaleIntensityd,
    RandShiftIntensityd,
    RandSimulateLowResolutiond,
)

IMAGE, MASK = "image", "mask"
# MONAI's affine scale minus one, drawn per axis: +0.5 shows the anatomy at 1/1.5 of its size, so
# (-0.15, 0.15) varies it by about ±15 % and rows and columns independently (aspect ratio too).
DEFAULT_SCALE_RANGE = (-0.15, 0.15)


class SliceAugment:
    """Random augmentation of one training sample: a ``(N, H, W)`` slab in [0, 255] and ``(P, H, W)`` masks."""

    def __init__(self, image_size: int, *, strength: float = 1.0, scale_range: tuple[float, float] = DEFAULT_SCALE_RANGE) -> None:
        self._common = _build(image_size, strength, scale_range, flip=False)
        self._with_flip = _build(image_size, strength, scale_range, flip=True)

    def __call__(
        self, slab: np.ndarray, masks: np.ndarray, rng: np.random.Generator, *, allow_lr_flip: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        transform = self._with_flip if allow_lr_flip else self._common
        transform.set_random_state(seed=int(rng.integers(2**31)))
        out = transform({IMAGE: slab.astype(np.float32), MASK: masks.astype(np.float32)})
        image = np.clip(np.asarray(out[IMAGE], dtype=np.float32), 0.0, 255.0)
        return image, (np.asarray(out[MASK]) > 0.5).astype(np.float32)


def _build(size: int, strength: float, scale_range: tuple[float, float], flip: bool) -> Compose:
    both = [IMAGE, MASK]
    per_axis = tuple(v * strength for v in scale_range)
    transforms = [
        RandAffined(
            keys=both,
            prob=0.6 * strength,
            rotate_range=0.26 * strength,  # ~15 degrees
            scale_range=(per_axis, per_axis),
            translate_range=0.06 * size * strength,
            mode=("bilinear", "nearest"),
            padding_mode="zeros",
        ),
        Rand2DElasticd(
            keys=both,
            prob=0.15 * strength,
            spacing=(size // 4, size // 4),
            magnitude_range=(0.5, 1.5),
            mode=("bilinear", "nearest"),
            padding_mode="zeros",
        ),
        RandSimulateLowResolutiond(keys=[IMAGE], prob=0.2 * strength, zoom_range=(0.5, 1.0), upsample_mode="bilinear"),
        RandAdjustContrastd(keys=[IMAGE], prob=0.3 * strength, gamma=(0.7, 1.5)),
        RandScaleIntensityd(keys=[IMAGE], prob=0.3 * strength, factors=0.15),
        RandShiftIntensityd(keys=[IMAGE], prob=0.3 * strength, offsets=15.0),
        RandGaussianNoised(keys=[IMAGE], prob=0.3 * strength, std=6.0),
    ]
    if flip:
        transforms.append(RandFlipd(keys=both, prob=0.5, spatial_axis=1))
    return Compose(transforms)
