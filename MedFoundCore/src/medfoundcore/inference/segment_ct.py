"""Whole-CT text-prompted segmentation with ``ct-v1`` (frozen CT foundation encoder + 3D decoder).

Flow: any CT (any size, orientation, spacing) → axis-aligned RAS grid at 1.5 × 1.5 × 3 mm, HU → [0, 1]
→ body box → sliding windows of the encoder's 160 × 224 × 224 input with Gaussian blending
(``windows.sliding_windows``; encoder + pixel features once per window, cached, shared by every prompt)
→ per prompt: coarse 6 mm logits, ISD-style presence gate (``presence_gate``: "window", the default,
empties a prompt in a window where no 6 mm slab is judged to hold it; "slab" empties each such slab;
"none" keeps raw masks), full-resolution refinement inside the prompt's box → argmax across prompts (background where no
prompt's probability reaches 0.5) → small islands of one-piece organs removed → label map resampled
(nearest neighbour) back onto the input's own grid and geometry.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InputError, ModelError
from ..io import Volume
from ..preprocess import CT_ENCODER_MULTIPLE_ZXY, body_box, detect_modality, encoder_input, kji, resample_onto
from ..progress import CancelToken, ProgressCallback, check, report
from .postprocess import remove_islands
from .windows import sliding_windows, window_features

MODEL_KIND = "ct-text-segmenter"
PRESENCE_THRESHOLD = 0.5
#: How the presence head gates a prompt: per window (shipped), per 6 mm slab (the first design, the
#: ablation of docs/ct.md), or not at all.
PRESENCE_GATES = ("window", "slab", "none")
MASK_THRESHOLD = 0.5
BOX_MARGIN = 1  # layer1 voxels (6 mm) around a prompt's coarse box, refined at full resolution
NEG = -20.0  # logit of "certainly not here"


@dataclass
class CTModel:
    """A loaded ``ct-v1``: the encoder (the shared pretrained one, or the model's own fine-tuned
    one), the decoder, and the card."""

    encoder: torch.nn.Module
    decoder: torch.nn.Module
    card: object
    device: torch.device


@functools.lru_cache(maxsize=1)
def load_ct_model(name: str, device: str) -> CTModel:
    """The model and its encoder: the process-wide shared pretrained encoder (``ct_weights.shared_encoder``)
    or, for a model whose encoder was fine-tuned with it (weights under ``ct_weights.ENCODER_PREFIX`` in
    the same sha256-checked file), that encoder. Window features are cached per model (name + sha256),
    so a fine-tuned encoder's features never mix with the pretrained one's."""
    from ..models.backbones.ct_weights import encoder_from_state, shared_encoder, split_encoder_state
    from ..models.ct_segmenter import CTSegmenterConfig, build_ct_segmenter
    from ..registry import load_model

    state, card = load_model(name)
    if card.kind != MODEL_KIND:
        raise ModelError(f"model {name!r} is a {card.kind!r} model, not a CT text-prompted segmenter")
    state, own_encoder = split_encoder_state(state)
    decoder = build_ct_segmenter(CTSegmenterConfig.from_dict(card.config["model"]))
    decoder.load_state_dict(state)
    dev = torch.device(device)
    init = str(card.config.get("encoder_init", "pretrained"))
    if init.startswith("fine-tuned"):
        if own_encoder is None:
            raise ModelError(f"model {name!r}: its card says the encoder was {init}, but its weights hold no encoder")
        encoder = encoder_from_state(own_encoder).to(dev)
    else:
        encoder = shared_encoder(str(dev), init == "pretrained")  # "random (seed 0)": the control
    return CTModel(encoder, decoder.eval().to(dev), card, dev)


def _coarse_box(prob: torch.Tensor) -> tuple[slice, ...] | None:
    """Bounding box (layer1 grid, with margin) of where a prompt's coarse probability is > 0.2."""
    where = torch.nonzero(prob > 0.2)
    if not len(where):
        return None
    lo = (where.min(0).values - BOX_MARGIN).clamp_min(0).tolist()
    hi = [min(int(h) + 1 + BOX_MARGIN, n) for h, n in zip(where.max(0).values.tolist(), prob.shape)]
    return tuple(slice(a, b) for a, b in zip(lo, hi))


def window_logits(
    model: CTModel, window: torch.Tensor, text: torch.Tensor, keys: Sequence[str], presence_gate: str = "window"
) -> torch.Tensor:
    """Full-resolution logits ``[1, K, Z, X, Y]`` of every prompt (MiniLM embedding ``text`` [K, D] of
    structure ``keys``) for one window ``[1, 1, Z, X, Y]``, gated by presence (:data:`PRESENCE_GATES`)."""
    pixel, image = window_features(model.encoder, model.decoder, window, model.card.name + model.card.sha256)
    net = model.decoder
    coarse = net.coarse_logits(pixel, text, keys)  # 1 K z x y
    if presence_gate != "none":
        # The gate is per window by default: a prompt is emptied where no slab of the window is judged
        # to hold it. Gating each 6 mm slab on its own cut the ends of present organs (mean Dice per
        # slab vs per window, first ct-v1: held-out 0.605 vs 0.647, validation 0.648 vs 0.662; absent
        # structures empty in both; docs/ct.md).
        slabs = torch.sigmoid(net.presence_logits(pixel, text, keys))  # 1 K z
        if presence_gate == "window":
            slabs = slabs.amax(dim=-1, keepdim=True).expand_as(slabs)
        present = slabs >= PRESENCE_THRESHOLD  # 1 K z
        coarse = torch.where(present[..., None, None], coarse, torch.full_like(coarse, NEG))
    up = net.upsample
    out = torch.full((1, coarse.shape[1], *window.shape[-3:]), NEG, device=window.device)
    for k in range(coarse.shape[1]):
        box = _coarse_box(torch.sigmoid(coarse[0, k]))
        if box is None:
            continue
        full = tuple(slice(b.start * u, b.stop * u) for b, u in zip(box, up))
        out[(0, k, *full)] = net.refine(image[(slice(None), slice(None), *full)], coarse[(slice(None), slice(k, k + 1), *box)])[0, 0]
    return out


def segment_ct(
    volume: Volume, structures: Sequence, model_name: str, device: torch.device, *,
    keep_islands: bool = False, presence_gate: str = "window",
    progress: ProgressCallback | None = None, cancel: CancelToken | None = None,
) -> tuple[np.ndarray, dict]:
    """Label map on ``volume``'s grid (label i+1 = ``structures[i]``) and per-prompt statistics."""
    from .segment import _text_encoder

    check_presence_gate(presence_gate)
    model = load_ct_model(model_name, str(device))
    text = _text_encoder().encode([s.name for s in structures]).float().to(model.device)
    keys = [s.key for s in structures]
    report(progress, "preprocessing", 0, 1)
    unit, _, grid = encoder_input(volume, None, detect_modality(volume))  # an MRI as in training: percentiles
    check(cancel)
    box = body_box(unit, None, limit=unit.shape)
    block = unit[box]

    def predict(window: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return window_logits(model, window, text, keys, presence_gate)

    logits = sliding_windows(block, predict, CT_ENCODER_MULTIPLE_ZXY, device=model.device, progress=progress, cancel=cancel)
    check(cancel)
    report(progress, "writing the result", 0, 1)
    best, which = logits.max(dim=0)
    labels_block = torch.where(best > torch.logit(torch.tensor(MASK_THRESHOLD)), which + 1, 0).to(torch.uint8).numpy()
    labels = np.zeros(unit.shape, dtype=np.uint8)
    labels[box] = labels_block
    if not keep_islands:
        remove_islands(labels, structures)  # (Z, X, Y): slices along axis 0, as it expects
    on_grid = grid.with_array(kji(labels))
    result = resample_onto(on_grid, volume, label=True).array.astype(np.uint8)
    stats = {"presence": _mean_presence(logits, labels_block)}
    return result, stats


def check_presence_gate(presence_gate: str) -> None:
    """An unknown gate is an InputError naming the known ones (before any model is loaded)."""
    if presence_gate not in PRESENCE_GATES:
        raise InputError(f"presence_gate must be one of {', '.join(PRESENCE_GATES)}, not {presence_gate!r}")


def _mean_presence(logits: torch.Tensor, labels: np.ndarray) -> list[float]:
    """Mean probability of each prompt over the voxels it was given (0 when it got none)."""
    out = []
    for k in range(logits.shape[0]):
        mask = torch.from_numpy(labels == k + 1)
        out.append(round(float(torch.sigmoid(logits[k][mask]).mean()), 3) if mask.any() else 0.0)
    return out


def segment_ct_result(
    volume: Volume, prompts: Sequence[str], model: str, device: torch.device, *,
    keep_islands: bool = False, use_isd: bool = True, presence_gate: str = "window", best_effort: bool = False,
    force: bool = False, progress: ProgressCallback | None = None, cancel: CancelToken | None = None,
):
    """:func:`segment_ct` wrapped as :func:`~medfoundcore.inference.segment.segment` returns it: the
    same prompt bookkeeping (duplicates merged, unknown structures refused), reports and warnings.
    ``use_isd=False`` is ``presence_gate="none"`` (the ablation switch every model family takes)."""
    from .volumetric import volumetric_result

    check_presence_gate(presence_gate)
    card = load_ct_model(model, str(device)).card
    gate = presence_gate if use_isd else "none"

    def run(structures: Sequence, dev: torch.device) -> tuple[np.ndarray, dict]:
        return segment_ct(volume, structures, model, dev, keep_islands=keep_islands, presence_gate=gate, progress=progress, cancel=cancel)

    return volumetric_result(volume, prompts, card, run, device, modality="CT", best_effort=best_effort, force=force)
