"""Label-conditioned synthetic images (SynthSeg-style) to stretch scarce labelled data.

Every tissue class gets a random mean intensity and texture, then the image is blurred, multiplied by
a smooth bias field, given a random resolution and noise. The model thus sees the same anatomy
(shapes from the real label map) under contrasts it has never been shown, which pushes it to rely on
shape and context rather than on one scanner's intensities.

Our label maps cover only a few structures, so the unlabelled part of the image would otherwise be a
single flat "background" class; it is split into intensity tissue classes by quantiles of the real
image (fat / soft tissue / bone-like) so that the synthetic image keeps plausible surroundings.
"""

from __future__ import annotations

import numpy as np
from monai.transforms import GaussianSmooth, RandBiasField, RandGaussianNoise, RandSimulateLowResolution


def tissue_map(image: np.ndarray, labels: np.ndarray, background_classes: int = 4) -> np.ndarray:
    """Integer tissue classes: labelled voxels keep one class per label value, the rest are split by
    intensity quantiles of ``image`` into ``background_classes`` classes."""
    tissue = np.zeros(labels.shape, dtype=np.int32)
    unlabelled = labels == 0
    if unlabelled.any() and background_classes > 1:
        edges = np.quantile(image[unlabelled], np.linspace(0, 1, background_classes + 1)[1:-1])
        tissue[unlabelled] = np.digitize(image[unlabelled], edges)
    values = np.unique(labels[~unlabelled])
    lookup = {int(v): background_classes + i for i, v in enumerate(values)}
    for v, cls in lookup.items():
        tissue[labels == v] = cls
    return tissue


def _rescale(image: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(image, (0.5, 99.5))
    return (np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.float32)


def synthesize(
    image: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    *,
    background_classes: int = 4,
) -> np.ndarray:
    """A synthetic image in [0, 255] with the anatomy of ``labels`` (+ ``image``'s background tissue).

    ``image`` and ``labels`` are (K, J, I) on the same grid; the output has the same shape, float32.
    """
    tissue = tissue_map(image, labels, background_classes)
    n = int(tissue.max()) + 1
    means = rng.uniform(0, 255, size=n).astype(np.float32)
    stds = rng.uniform(0, 20, size=n).astype(np.float32)
    synth = means[tissue] + stds[tissue] * rng.standard_normal(tissue.shape, dtype=np.float32)
    volume = synth[None]  # MONAI wants channel-first
    sigma = float(rng.uniform(0.0, 1.0))
    if sigma > 0.1:
        volume = GaussianSmooth(sigma=sigma)(volume)
    seed = int(rng.integers(2**31))
    volume = _monai(RandBiasField(prob=1.0, coeff_range=(0.1, 0.4), degree=3), volume, seed)
    volume = _monai(RandSimulateLowResolution(prob=0.5, zoom_range=(0.5, 1.0)), volume, seed + 1)
    volume = _monai(RandGaussianNoise(prob=1.0, std=float(rng.uniform(0.0, 8.0))), volume, seed + 2)
    return _rescale(np.asarray(volume)[0])


def _monai(transform, volume, seed: int):
    transform.set_random_state(seed=seed)
    out = transform(np.asarray(volume, dtype=np.float32))
    return np.asarray(out, dtype=np.float32)
