"""Zero-shot point-prompt ("click") segmentation and out-of-vocabulary text prompts.

A click names a structure without any task labels. The structure is grown from the clicks on a
working grid by a *leak-controlled tolerance sweep*: voxels whose combined distance to the clicked
tissue — intensity z-score and, when a pretrained 3D encoder is available, feature dissimilarity of
the encoder's token features — is below a tolerance ``k`` form candidates; a morphological opening
(radius in mm) cuts thin bridges to neighbouring organs; the connected component under the clicks is
the region. ``k`` rises until the region suddenly swallows a neighbour (its volume jumps at almost
constant ``k``); the region just before that leak is kept. Negative clicks inside the region cut it
with a random walker between positive and negative seeds. The mask is then refined at the input
resolution in a thin band around its surface and returned on the input grid.

Points are RAS millimetres, as 3D Slicer shows them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage as ndi

from ..device import autocast, resolve_device
from ..errors import InputError
from ..io import Volume
from ..preprocess import detect_modality, normalize_intensity, resample_like, resample_to_spacing
from ..progress import CancelToken, ProgressCallback, check, report

STAGE = "click"


@dataclass(frozen=True)
class ClickSettings:
    """Tunable parameters of :func:`click`; the defaults were chosen on real CT/MRI (docs/pretraining.md)."""

    working_spacing_mm: float = 2.0
    tolerances: tuple[float, ...] = tuple(np.round(np.arange(0.5, 5.01, 0.25), 2))
    opening_radii_mm: tuple[float, ...] = (6.0, 3.0, 0.0)
    leak_ratio: float = 1.6
    leak_elasticity: float = 3.0
    default_tolerance: float = 2.5
    seed_radius_mm: float = 6.0
    feature_weight: float = 1.0
    feature_margin_mm: float = 96.0


@dataclass
class ClickResult:
    """The mask plus what the sweep decided, for logs and the Slicer status line."""

    mask: Volume
    tolerance: float
    opening_radius_mm: float
    used_features: bool
    volumes_ml: list[float] = field(default_factory=list)


# ------------------------------------------------------------------------------------ public API


def click(
    volume: Volume,
    positive_ras: Sequence[Sequence[float]],
    negative_ras: Sequence[Sequence[float]] = (),
    model: str | Path | None = "encoder-v1",
    device: str = "auto",
    *,
    settings: ClickSettings | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> Volume:
    """Segment the structure under the positive clicks; returns a 0/1 label map on ``volume``'s grid.

    ``model`` names the pretrained 3D encoder whose features sharpen the region (``None``: intensity only).
    Clicks outside the image raise :class:`InputError` naming the point and the image extent.
    """
    return click_segment(volume, positive_ras, negative_ras, model, device, settings=settings, progress=progress, cancel=cancel).mask


def click_segment(
    volume: Volume,
    positive_ras: Sequence[Sequence[float]],
    negative_ras: Sequence[Sequence[float]] = (),
    model: str | Path | None = "encoder-v1",
    device: str = "auto",
    *,
    settings: ClickSettings | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> ClickResult:
    """:func:`click` returning the chosen tolerance and sweep volumes as well."""
    settings = settings or ClickSettings()
    positives = _validated_points(volume, positive_ras, "positive")
    negatives = _validated_points(volume, negative_ras, "negative") if len(negative_ras) else np.zeros((0, 3))
    if len(positives) == 0:
        raise InputError("click: at least one positive point (R,A,S in mm) is needed")
    report(progress, STAGE, 0, 4, "resampling")
    work = _working_volume(volume, settings.working_spacing_mm)
    image = ndi.gaussian_filter(work.array.astype(np.float32), 0.7)
    pos_kji, neg_kji = _grid_points(work, positives), _grid_points(work, negatives)
    mu, sd = _seed_statistics(work.array, pos_kji, work.spacing, settings.seed_radius_mm)
    distance = np.abs(image - mu) / sd
    check(cancel)
    used_features = False
    if model is not None and settings.feature_weight > 0:
        report(progress, STAGE, 1, 4, "encoder features")
        feature_distance = _feature_distance(volume, work, positives, model, device, settings, cancel)
        distance = np.sqrt(distance**2 + (settings.feature_weight * feature_distance) ** 2)
        used_features = True
    check(cancel)
    report(progress, STAGE, 2, 4, "growing")
    region, tolerance, radius_mm, volumes = _sweep(distance, pos_kji, work.spacing, settings, cancel)
    region = _split_off_negatives(region, distance, pos_kji, neg_kji, work.spacing)
    report(progress, STAGE, 3, 4, "refining")
    mask = _refine_full_resolution(volume, work, region, mu, sd, tolerance, positives, negatives)
    report(progress, STAGE, 4, 4, "done")
    voxel_ml = float(np.prod(work.spacing)) / 1000.0
    label = volume.with_array(mask.astype(np.uint8), kind="label", click_tolerance=tolerance)
    return ClickResult(label, tolerance, radius_mm, used_features, [v * voxel_ml for v in volumes])


# ---------------------------------------------------------------------------------------- points


def parse_point(text: str) -> tuple[float, float, float]:
    """``"R,A,S"`` (mm) → a float triple, with a clear error for anything else."""
    parts = [p for p in text.replace(";", ",").split(",") if p.strip()]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 3 or not all(np.isfinite(values)):
        raise InputError(f"point {text!r}: expected three numbers R,A,S in millimetres, e.g. --point 12.5,-30,84")
    return values  # type: ignore[return-value]


def _validated_points(volume: Volume, points: Sequence[Sequence[float]], kind: str) -> np.ndarray:
    """RAS points as ``(N, 3)``; every point must fall inside the image (nearest voxel)."""
    ras = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    if not np.all(np.isfinite(ras)):
        raise InputError(f"{kind} click contains NaN/Inf coordinates: {ras.tolist()}")
    inside = volume.contains_index(volume.ras_to_index(ras)) if len(ras) else np.zeros(0, bool)
    for point, ok in zip(ras, inside):
        if not ok:
            raise InputError(
                f"{kind} click at R,A,S = {_fmt(point)} mm lies outside the image "
                f"{volume.meta.get('source', '')!s} (its RAS extent is {_extent_text(volume)}); "
                "click on a voxel of the image"
            )
    return ras


def _extent_text(volume: Volume) -> str:
    corners = np.array([[i, j, k] for i in (0, volume.shape[2] - 1) for j in (0, volume.shape[1] - 1) for k in (0, volume.shape[0] - 1)])
    ras = volume.index_to_ras(corners)
    low, high = ras.min(axis=0), ras.max(axis=0)
    return ", ".join(f"{axis} {lo:.1f}..{hi:.1f}" for axis, lo, hi in zip("RAS", low, high))


def _fmt(point: np.ndarray) -> str:
    return ",".join(f"{v:.1f}" for v in point)


def _grid_points(volume: Volume, ras: np.ndarray) -> np.ndarray:
    """RAS points → integer ``(N, 3)`` ``(k, j, i)`` indices of ``volume``, clipped to the grid."""
    if len(ras) == 0:
        return np.zeros((0, 3), dtype=int)
    ijk = np.rint(volume.ras_to_index(ras)).astype(int)
    ijk = np.clip(ijk, 0, np.array(volume.shape[::-1]) - 1)
    return ijk[:, ::-1]


# --------------------------------------------------------------------------------------- working


def _working_volume(volume: Volume, minimum_spacing_mm: float) -> Volume:
    """The image on an isotropic grid no finer than ``minimum_spacing_mm`` (fast, and morphology is isotropic)."""
    spacing = max(minimum_spacing_mm, min(volume.spacing))
    as_float = volume.with_array(volume.array.astype(np.float32))
    return resample_to_spacing(as_float, spacing)


def _seed_statistics(image: np.ndarray, seeds_kji: np.ndarray, spacing: tuple[float, ...], radius_mm: float) -> tuple[float, float]:
    """Robust intensity centre and spread of the clicked tissue (median, scaled MAD with a floor)."""
    values = []
    for seed in seeds_kji:
        half = [max(1, int(round(radius_mm / s))) for s in spacing[::-1]]
        box = tuple(slice(max(0, c - h), c + h + 1) for c, h in zip(seed, half))
        values.append(image[box].ravel())
    pooled = np.concatenate(values)
    centre = float(np.median(pooled))
    mad = 1.4826 * float(np.median(np.abs(pooled - centre)))
    low, high = np.percentile(image[:: max(1, image.shape[0] // 16)], [1, 99])
    floor = max(1e-3, 0.005 * float(high - low))
    return centre, max(mad, floor)


# ------------------------------------------------------------------------------------- the sweep


def _opened_component(candidates: np.ndarray, seeds: np.ndarray, spacing: tuple[float, ...], radius_mm: float) -> np.ndarray:
    """Connected component(s) under the seeds after an opening of ``radius_mm`` (via distance maps)."""
    sampling = spacing[::-1]
    if radius_mm > 0:
        core = ndi.distance_transform_edt(candidates, sampling=sampling) > radius_mm
        opened = ndi.distance_transform_edt(~core, sampling=sampling) <= radius_mm
        candidates = candidates & opened
    labels, _ = ndi.label(candidates)
    ids = {int(labels[tuple(s)]) for s in seeds} - {0}
    if not ids:
        return np.zeros_like(candidates)
    return np.isin(labels, list(ids))


def _sweep(
    distance: np.ndarray,
    seeds: np.ndarray,
    spacing: tuple[float, ...],
    settings: ClickSettings,
    cancel: CancelToken | None,
) -> tuple[np.ndarray, float, float, list[int]]:
    """Raise the tolerance until the region leaks; try smaller openings when the seed gets opened away."""
    for radius_mm in settings.opening_radii_mm:
        region, tolerance, volumes = _sweep_one_radius(distance, seeds, spacing, radius_mm, settings, cancel)
        if region.any():
            return region, tolerance, radius_mm, volumes
    fallback = np.zeros(distance.shape, bool)
    fallback[tuple(seeds.T)] = True
    return fallback, settings.tolerances[0], 0.0, []


def _sweep_one_radius(
    distance: np.ndarray,
    seeds: np.ndarray,
    spacing: tuple[float, ...],
    radius_mm: float,
    settings: ClickSettings,
    cancel: CancelToken | None,
) -> tuple[np.ndarray, float, list[int]]:
    """Regions for rising tolerances; keep the one before the largest leak (relative volume jump).

    A leak is a step whose volume ratio exceeds ``leak_ratio`` and whose elasticity (d log V / d log k)
    exceeds ``leak_elasticity``; without one, the region at ``default_tolerance`` is kept.
    """
    regions: list[tuple[float, np.ndarray]] = []
    volumes: list[int] = []
    for k in settings.tolerances:
        check(cancel)
        region = _opened_component(distance < k, seeds, spacing, radius_mm)
        volumes.append(int(region.sum()))
        if not region.any():
            continue
        regions.append((k, region))
        if region.mean() > 0.25:  # a quarter of the image: far past any leak
            break
    if not regions:
        return np.zeros(distance.shape, bool), settings.tolerances[0], volumes
    sizes = np.array([r.sum() for _, r in regions], dtype=float)
    ks = np.array([k for k, _ in regions])
    ratios = sizes[1:] / sizes[:-1]
    # Growth per relative tolerance step: a region still filling its organ grows steadily with k
    # (elasticity ~1-2.5); a leak into a neighbour is a jump at almost constant k (elasticity >> 3).
    elasticity = np.log(ratios) / np.log(ks[1:] / ks[:-1])
    leaks = (ratios > settings.leak_ratio) & (elasticity > settings.leak_elasticity)
    leaks &= sizes[:-1] >= _minimum_region_voxels(spacing, radius_mm)  # tiny regions always grow fast
    if leaks.any():
        k, region = regions[int(np.argmax(np.where(leaks, ratios, 0.0)))]
        return region, k, volumes
    below = [(k, r) for k, r in regions if k <= settings.default_tolerance]
    k, region = below[-1] if below else regions[0]
    return region, k, volumes


def _split_off_negatives(
    region: np.ndarray, distance: np.ndarray, positives: np.ndarray, negatives: np.ndarray, spacing: tuple[float, ...]
) -> np.ndarray:
    """Cut the region between positive and negative clicks with a random walker (scikit-image).

    A negative click inside the region marks tissue that leaked in; the walker, restricted to the
    region, assigns every voxel to the click side it reaches most easily across the distance map, so
    the cut falls on the narrowest / highest-contrast connection between them.
    """
    inside = [n for n in negatives if region[tuple(n)]]
    if not inside:
        return region
    from skimage.segmentation import random_walker

    box = _bounding_box(region, margin=2)
    labels = np.where(region[box], 0, -1).astype(np.int32)
    offset = np.array([b.start for b in box])
    for point, value in [(p, 1) for p in positives] + [(n, 2) for n in inside]:
        local = tuple(np.asarray(point) - offset)
        if all(0 <= c < s for c, s in zip(local, labels.shape)):
            labels[local] = value
    if not (labels == 1).any():
        return region
    walked = random_walker(np.minimum(distance[box], 10.0), labels, beta=130.0, mode="cg_j", spacing=spacing[::-1])
    kept = np.zeros_like(region)
    kept[box] = walked == 1
    components, _ = ndi.label(kept)
    ids = {int(components[tuple(p)]) for p in positives} - {0}
    return np.isin(components, list(ids)) if ids else kept


def _bounding_box(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    where = np.argwhere(mask)
    low = np.maximum(where.min(axis=0) - margin, 0)
    high = np.minimum(where.max(axis=0) + margin + 1, mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(low, high))


def _minimum_region_voxels(spacing: tuple[float, ...], radius_mm: float) -> float:
    """Regions smaller than a few opening balls (or 1 ml) are still settling, not leaking."""
    ball_mm3 = 4.0 / 3.0 * np.pi * radius_mm**3
    return max(4.0 * ball_mm3, 1000.0) / float(np.prod(spacing))


# ---------------------------------------------------------------------------------- refinement


def _refine_full_resolution(
    volume: Volume,
    work: Volume,
    region: np.ndarray,
    mu: float,
    sd: float,
    tolerance: float,
    positives_ras: np.ndarray,
    negatives_ras: np.ndarray,
) -> np.ndarray:
    """Back to the input grid; voxels within one working voxel of the surface are re-decided by intensity."""
    soft = resample_like(work.with_array(region.astype(np.float32)), volume)
    mask = soft.array > 0.5
    sampling = volume.spacing[::-1]
    band_mm = max(work.spacing)
    inside_depth = ndi.distance_transform_edt(mask, sampling=sampling)
    outside_depth = ndi.distance_transform_edt(~mask, sampling=sampling)
    band = (inside_depth > 0) & (inside_depth <= band_mm) | (outside_depth > 0) & (outside_depth <= band_mm)
    smoothed = ndi.gaussian_filter(volume.array.astype(np.float32), 0.5)
    mask = np.where(band, np.abs(smoothed - mu) / sd < tolerance, mask)
    seeds = _grid_points(volume, positives_ras)
    mask[tuple(seeds.T)] = True
    if len(negatives_ras):
        mask[tuple(_grid_points(volume, negatives_ras).T)] = False
    labels, _ = ndi.label(mask)
    ids = {int(labels[tuple(s)]) for s in seeds} - {0}
    mask = ndi.binary_fill_holes(np.isin(labels, list(ids)))
    if len(negatives_ras):
        mask[tuple(_grid_points(volume, negatives_ras).T)] = False
    return mask


# ------------------------------------------------------------------------------------ features


def _feature_distance(
    volume: Volume,
    work: Volume,
    positives_ras: np.ndarray,
    model: str | Path,
    device: str,
    settings: ClickSettings,
    cancel: CancelToken | None,
) -> np.ndarray:
    """Per working voxel, how unlike the clicked tissue the encoder's features are (0 = identical).

    Cosine dissimilarity to the mean click feature, divided by its median over the image box so that
    it is unit-free like the intensity z-score; voxels outside the feature box get 0 (no evidence).
    """
    encoder, card = _encoder(model)
    torch_device = resolve_device(device)
    spacing = float(card.preprocessing.get("spacing_mm", 1.0))
    box = _feature_box(volume, positives_ras, settings.feature_margin_mm, spacing)
    features = _encode(box, encoder, torch_device, cancel)  # (C, d, h, w) on the token grid
    token_grid = _token_grid_volume(box, features.shape[1:], encoder.cfg.patch_size)
    seeds = np.clip(_grid_points(token_grid, positives_ras), 0, np.array(features.shape[1:]) - 1)
    reference = torch.nn.functional.normalize(features[:, seeds[:, 0], seeds[:, 1], seeds[:, 2]].mean(dim=1), dim=0)
    cosine = torch.einsum("c,cdhw->dhw", reference, torch.nn.functional.normalize(features, dim=0)).numpy()
    dissimilarity = 1.0 - cosine
    scale = max(float(np.median(dissimilarity)), 1e-3)
    sim_volume = token_grid.with_array((dissimilarity / scale).astype(np.float32))
    return resample_like(sim_volume, work).array


_ENCODERS: dict[str, tuple[torch.nn.Module, Any]] = {}


def _encoder(model: str | Path) -> tuple[torch.nn.Module, Any]:
    """The pretrained encoder and its card, kept after the first click (Slicer clicks many times)."""
    from ..registry import resolve_model_dir
    from ..models.backbones.encoder3d import load_encoder  # local: the model stack is only needed with features

    key = str(resolve_model_dir(model).resolve())
    if key not in _ENCODERS:
        _ENCODERS.clear()  # one encoder at a time: they are small, but there is no reason to hoard them
        _ENCODERS[key] = load_encoder(key)
    return _ENCODERS[key]


def _feature_box(volume: Volume, positives_ras: np.ndarray, margin_mm: float, spacing_mm: float) -> Volume:
    """The input, normalised as in pretraining, cropped to ``margin_mm`` around the clicks at the encoder's spacing."""
    index = volume.ras_to_index(positives_ras)
    margin = margin_mm / np.array(volume.spacing)
    low = np.maximum(0, np.floor(index.min(axis=0) - margin)).astype(int)
    high = np.minimum(np.array(volume.shape[::-1]), np.ceil(index.max(axis=0) + margin) + 1).astype(int)
    box = volume.crop((slice(low[2], high[2]), slice(low[1], high[1]), slice(low[0], high[0])))
    normalised = normalize_intensity(box.array, detect_modality(volume)) / 255.0
    return resample_to_spacing(box.with_array(normalised.astype(np.float32)), spacing_mm)


def _token_grid_volume(box: Volume, grid: tuple[int, ...], patch: int) -> Volume:
    """Geometry of the token grid: one token per ``patch``³ voxels, centred on its patch."""
    offset = box.direction @ (np.array(box.spacing) * (patch - 1) / 2.0)
    spacing = tuple(s * patch for s in box.spacing)
    return Volume(np.zeros(grid, np.float32), spacing, tuple(np.array(box.origin) + offset), box.direction.copy(), {})


def _encode(box: Volume, encoder: torch.nn.Module, device: torch.device, cancel: CancelToken | None) -> torch.Tensor:
    """Token features of the whole box by sliding windows of the encoder's input size, ``(C, d, h, w)``."""
    from monai.inferers import sliding_window_inference

    size = encoder.cfg.img_size
    patch = encoder.cfg.patch_size
    array = box.array
    padded_shape = [max(size, int(np.ceil(s / patch) * patch)) for s in array.shape]
    pad = [(0, p - s) for s, p in zip(array.shape, padded_shape)]
    x = torch.from_numpy(np.pad(array, pad, mode="edge"))[None, None].to(device)
    encoder = encoder.to(device).eval()

    def predictor(window: torch.Tensor) -> torch.Tensor:
        check(cancel)
        with autocast(device):
            out = encoder(window)
        tokens = out.tokens.float()
        grid = out.grid
        return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *grid)

    with torch.inference_mode():
        features = sliding_window_inference(x, size, 1, predictor, overlap=0.5, mode="gaussian")
    token_shape = [int(np.ceil(s / patch)) for s in array.shape]
    return features[0, :, : token_shape[0], : token_shape[1], : token_shape[2]].float().cpu()


# ------------------------------------------------------------------------------- text prompts


@dataclass(frozen=True)
class TextMatch:
    """An out-of-vocabulary prompt mapped to a known structure, with the cosine similarity behind it."""

    prompt: str
    structure: str
    confidence: float
    matched_text: str
    exact: bool


def match_text_prompt(text: str, threshold: float = 0.7, *, text_encoder: Any = None) -> TextMatch:
    """Map a free-text prompt to a known structure: exact vocabulary match first, else by embedding.

    The embedding match reports the nearest structure and its cosine similarity (the confidence);
    below ``threshold`` it refuses with an :class:`InputError` that names the nearest candidate and
    its confidence instead of guessing.
    """
    from ..text import default_text_encoder
    from ..vocabulary import load_vocabulary

    if not text or not text.strip():
        raise InputError("empty text prompt; name a structure, e.g. 'spleen'")
    vocabulary = load_vocabulary()
    known = vocabulary.try_normalize(text)
    if known is not None:
        return TextMatch(text, known.name, 1.0, text, True)
    encoder = text_encoder or default_text_encoder()
    nearest = vocabulary.embedding_match(text, encoder, threshold=-1.0)
    assert nearest is not None  # threshold -1 always returns the best candidate
    if nearest.similarity < threshold:
        raise InputError(
            f"prompt {text!r} is not a known structure; the closest is {nearest.structure.name!r} "
            f"(via {nearest.matched_text!r}) with confidence {nearest.similarity:.2f} < {threshold:.2f}; "
            "refusing to guess: rephrase it or use a name from the vocabulary"
        )
    return TextMatch(text, nearest.structure.name, nearest.similarity, nearest.matched_text, False)
