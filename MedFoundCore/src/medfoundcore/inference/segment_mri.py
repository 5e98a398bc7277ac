"""Whole-MRI text-prompted segmentation with ``mri-v1`` (``models.mri_segmenter``).

Flow: any MRI (any size, orientation, spacing) → axis-aligned RAS grid at 1 mm, intensities from the
0.5–99.5 percentiles onto [0, 1] (``preprocess.encoder_input``, as in training) → the box of the
image's content → MONAI Gaussian sliding windows of the training crop size; per window the trunk runs ONCE and every prompt is a dot
product per voxel, with the presence head's per-slice probability carried beside each prompt's mask →
a prompt is kept when some slice's blended presence reaches 0.5 (the ISD decision: an absent structure
comes back empty) → argmax across prompts (background where no probability reaches 0.5) → small islands
of one-piece structures removed → label map resampled (nearest neighbour) onto the input's own grid.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch
from monai.inferers import sliding_window_inference

from ..device import autocast
from ..errors import ModelError
from ..io import Volume
from ..models.mri_segmenter import MODEL_KIND
from ..preprocess import encoder_input, kji, resample_onto
from ..progress import CancelToken, ProgressCallback, check, report
from .postprocess import remove_islands

PRESENCE_THRESHOLD = 0.5
MASK_THRESHOLD = 0.5
OVERLAP = 0.25
CONTENT_LEVEL = 0.02  # on the [0, 1] scale: above a zero background


@functools.lru_cache(maxsize=2)
def load_mri_model(name: str, device: str):
    """The network (eval mode, on ``device``) and card of an ``mri-text-segmenter`` model."""
    from ..models.mri_segmenter import MRISegmenterConfig, build_mri_segmenter
    from ..registry import load_model

    state, card = load_model(name)
    if card.kind != MODEL_KIND:
        raise ModelError(f"model {name!r} is a {card.kind!r} model, not an MRI text-prompted segmenter")
    net = build_mri_segmenter(MRISegmenterConfig.from_dict(card.config["model"]))
    net.load_state_dict(state)
    return net.eval().to(device), card


def predict_probabilities(
    net, unit: np.ndarray, text: torch.Tensor, keys: Sequence[str | None], window: Sequence[int], device: torch.device,
    progress: ProgressCallback | None = None, cancel: CancelToken | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask and per-voxel presence probabilities ``[K, Z, X, Y]`` of every prompt over the ``(Z, X, Y)``
    image ``unit``, by Gaussian-blended sliding windows (the trunk runs once per window)."""
    k = len(keys)
    done = [0]
    total = max(1, int(np.prod([max(1, int(np.ceil((s - w) / (w * (1 - OVERLAP)))) + 1) for s, w in zip(unit.shape, window)])))

    def predictor(x: torch.Tensor) -> torch.Tensor:
        check(cancel)
        with autocast(device):
            pixel = net.pixel_features(x)
            logits = net.mask_logits(pixel, text, keys)
            presence = net.presence_logits(pixel, text, keys)  # B K Z
        done[0] += len(x)
        report(progress, "segmenting", min(done[0], total), total)
        slices = presence[..., None, None].expand_as(logits)
        return torch.cat([torch.sigmoid(logits.float()), torch.sigmoid(slices.float())], dim=1)

    image = torch.from_numpy(unit)[None, None].to(device)
    with torch.inference_mode():
        out = sliding_window_inference(image, tuple(window), 1, predictor, overlap=OVERLAP, mode="gaussian")[0].cpu()
    return out[:k], out[k:]


def content_box(unit: np.ndarray, level: float = CONTENT_LEVEL) -> tuple[slice, ...]:
    """Bounding box of the voxels above ``level`` (skull-stripped brains and cord crops sit in a zero
    background: windows outside it are skipped)."""
    inside = unit > level
    if not inside.any():
        return tuple(slice(0, n) for n in unit.shape)
    box = []
    for axis in range(3):
        idx = np.flatnonzero(inside.any(axis=tuple(a for a in range(3) if a != axis)))
        box.append(slice(int(idx[0]), int(idx[-1]) + 1))
    return tuple(box)


def prompt_probabilities(
    volume: Volume, structures: Sequence, model_name: str, device: torch.device, *,
    use_isd: bool = True, progress: ProgressCallback | None = None, cancel: CancelToken | None = None,
) -> tuple[torch.Tensor, Volume]:
    """Each prompt's probability ``[K, Z, X, Y]`` on the 1 mm working grid (zero for a prompt the
    presence head rules out of the whole image), and that grid."""
    from .segment import _text_encoder

    net, card = load_mri_model(model_name, str(device))
    keys = [s.key if s.key in net.key_index else None for s in structures]
    text = _text_encoder().encode([s.name for s in structures]).float().to(device)
    report(progress, "preprocessing", 0, 1)
    unit, _, grid = encoder_input(volume, None, "MRI", card.preprocessing["spacing_xyz_mm"])
    check(cancel)
    box = content_box(unit)
    prob = torch.zeros((len(structures), *unit.shape))
    inner, presence = predict_probabilities(net, np.ascontiguousarray(unit[box]), text, keys, card.preprocessing["window_zxy"], device, progress, cancel)
    check(cancel)
    if use_isd:
        present = presence.flatten(1).amax(dim=1) >= PRESENCE_THRESHOLD
        inner = inner * present[:, None, None, None]
    prob[(slice(None), *box)] = inner
    return prob, grid


def segment_mri(
    volume: Volume, structures: Sequence, model_name: str, device: torch.device, *,
    keep_islands: bool = False, use_isd: bool = True, progress: ProgressCallback | None = None, cancel: CancelToken | None = None,
) -> tuple[np.ndarray, dict]:
    """Label map on ``volume``'s grid (label i+1 = ``structures[i]``, argmax across prompts) and per-prompt statistics."""
    prob, grid = prompt_probabilities(volume, structures, model_name, device, use_isd=use_isd, progress=progress, cancel=cancel)
    report(progress, "writing the result", 0, 1)
    best, which = prob.max(dim=0)
    labels = torch.where(best >= MASK_THRESHOLD, which + 1, 0).to(torch.uint8).numpy()
    if not keep_islands:
        remove_islands(labels, structures)
    result = resample_onto(grid.with_array(kji(labels)), volume, label=True).array.astype(np.uint8)
    given = torch.from_numpy(labels.astype(np.int64))
    stats = {"presence": [round(float(prob[k][given == k + 1].mean()), 3) if (given == k + 1).any() else 0.0 for k in range(len(structures))]}
    return result, stats


def prompt_masks(
    volume: Volume, structures: Sequence, model_name: str, device: torch.device | str = "cpu", *, keep_islands: bool = False,
) -> list[np.ndarray]:
    """One boolean mask per prompt on ``volume``'s grid, each thresholded on its own: overlapping
    structures (a union and its parts, "liver" beside the brain) come from ONE pass of the trunk."""
    prob, grid = prompt_probabilities(volume, structures, model_name, torch.device(device))
    masks = []
    for k, structure in enumerate(structures):
        mask = (prob[k] >= MASK_THRESHOLD).to(torch.uint8).numpy()
        if not keep_islands:
            remove_islands(mask, [structure])
        masks.append(resample_onto(grid.with_array(kji(mask)), volume, label=True).array.astype(bool))
    return masks


def segment_mri_result(
    volume: Volume, prompts: Sequence[str], model: str, device: torch.device, *,
    keep_islands: bool = False, use_isd: bool = True, best_effort: bool = False, force: bool = False,
    progress: ProgressCallback | None = None, cancel: CancelToken | None = None,
):
    """:func:`segment_mri` with the bookkeeping every model family shares (``volumetric_result``)."""
    from .volumetric import volumetric_result

    card = load_mri_model(model, str(device))[1]

    def run(structures: Sequence, dev: torch.device) -> tuple[np.ndarray, dict]:
        return segment_mri(volume, structures, model, dev, keep_islands=keep_islands, use_isd=use_isd, progress=progress, cancel=cancel)

    return volumetric_result(volume, prompts, card, run, device, modality="MRI", best_effort=best_effort, force=force)
