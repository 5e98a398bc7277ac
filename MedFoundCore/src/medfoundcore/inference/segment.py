"""Text-prompted segmentation of a whole volume (BiomedParse-V §3.5).

Flow: prompts -> vocabulary structures -> text embeddings (once); volume -> slicing view ->
intensity normalisation -> in-plane resize to the model's resolution -> FVE per focal slice ->
image encoder per slice batch (features computed ONCE and shared by every prompt) -> mask decoder for
all prompts of the batch -> ISD gating (ω > 0.5) -> masks confined to the image's content (no padding
or air) -> slice-level NMS at the model's resolution ->
argmax across prompts of the probabilities resized back to the slice's native size (each prompt only
inside its own box) -> 3D pieces removed (``postprocess``): those mostly on slices where the anatomical
veto (``region_veto``, axial slices only) saw a distant body region, small islands of one-piece
organs, and one-piece organs found on one inner axial slice only -> label map on the input grid.

Memory is bounded by processing the volume in slice batches: only the model-resolution stack
(K × S × S float32) and the uint8 output are whole-volume arrays.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .. import fve
from ..device import autocast, resolve_device
from ..errors import Cancelled, InputError
from ..io import Volume, refuse_label_map
from ..preprocess import content_mask, detect_modality, fve_images, model_slices, select_view
from ..progress import CancelToken, ProgressCallback, check, report
from ..registry import read_card, resolve_default
from ..vocabulary import prompt_text
from .prompts import PromptPlan, plan_prompts
from .segment_ct import MODEL_KIND as CT_MODEL_KIND
from .segment_ct import segment_ct_result
from .segment_mri import MODEL_KIND as MRI_MODEL_KIND
from .segment_mri import segment_mri_result
from .postprocess import drop_vetoed_pieces, remove_islands
from .region_veto import RegionVeto, rivals_seen, slices_are_axial, vetoed_slices

NMS_IOU = 0.5  # a lower-confidence mask overlapping a higher one by more than this is dropped


@dataclass
class PromptReport:
    """What was found for one structure (``prompts``: every prompt that named it; ``prompt``: the first);
    ``mean_presence`` is the mean ISD ω over the slices kept; ``slices_ruled_out`` counts slices on
    which a 3D piece of it was dropped by the anatomical veto. ``status`` keeps apart what an empty
    result means: "not present" (the model looked and saw none), "not known to this model" (a
    best-effort prompt the model was never trained on), "outvoted" (seen, but every voxel went to a
    more confident prompt) and "removed" (dropped by the anatomical veto or the one-slice rule)."""

    prompt: str
    structure_key: str
    structure_name: str
    color: tuple[int, int, int]
    label: int
    found: bool
    volume_ml: float
    slices_present: int
    mean_presence: float
    slices_ruled_out: int = 0
    prompts: list[str] = field(default_factory=list)
    known_to_model: bool = True
    status: str = "found"

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "color": list(self.color), "prompts": list(self.prompts)}


@dataclass
class SegmentationResult:
    """Label map on the input grid (label i = i-th prompt) with one report per prompt."""

    labels: Volume
    reports: list[PromptReport]
    warnings: list[str] = field(default_factory=list)
    model: str = ""
    scores: SliceScores | None = None  # per-slice ω and veto decisions, for analysis (not serialised)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "warnings": self.warnings, "prompts": [r.to_dict() for r in self.reports]}


# ------------------------------------------------------------------------------ model loading
@functools.lru_cache(maxsize=2)
def _load(model: str, device: str):
    from ..models.prompted_segmenter import SegmenterConfig, build_segmenter
    from ..registry import load_model

    state, card = load_model(model)
    if card.kind != "prompted-segmenter":
        raise InputError(f"model {model!r} is a {card.kind!r} model, not a text-prompted segmenter")
    cfg = SegmenterConfig.from_dict(card.config.get("model", card.config))
    net = build_segmenter(cfg)
    net.load_state_dict(state)
    net.eval().to(device)
    return net, cfg, card


@functools.lru_cache(maxsize=1)
def _text_encoder():
    from ..text import TextEncoder

    return TextEncoder()


# ------------------------------------------------------------------------------ public entry point
def segment(
    volume: Volume,
    prompts: Sequence[str],
    model: str = "default",
    device: str = "auto",
    *,
    batch_size: int | None = None,
    use_isd: bool = True,
    presence_gate: str = "window",
    region_check: bool = True,
    keep_islands: bool = False,
    best_effort: bool = False,
    force: bool = False,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> SegmentationResult:
    """Segment every prompted structure in ``volume``; label i of the result is the i-th distinct
    structure (``inference.prompts.plan_prompts``: duplicate prompts share one label, a structure with
    one of its parts is refused, and so is a structure the model was not trained on unless
    ``best_effort``). An image that looks like a label map is refused unless ``force``.

    Raises InputError for an empty/unknown prompt (listing the nearest known names) and Cancelled when
    ``cancel`` fires (nothing is returned or written). ``use_isd=False`` keeps raw masks (ablation).
    ``presence_gate`` (CT-family models such as ``ct-v1``, :data:`.segment_ct.PRESENCE_GATES`): "window"
    empties a prompt in a window where no 6 mm slab is judged to hold it, "slab" each such slab (the
    ablation of docs/ct.md), "none" = ``use_isd=False``; the slice model gates per slice and takes
    only the default.
    Masks are confined to where the image has content (``preprocess.content_mask``: not padding or air),
    and on axial slices a prompt is dropped where the model sees a structure of a distant body region
    (``region_veto``; ``region_check=False`` turns that off). Small islands of one-piece organs, and
    such organs found on a single inner axial slice only, are removed (``postprocess``;
    ``keep_islands=True`` keeps them).
    """
    from ..vocabulary import load_vocabulary

    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    dev = resolve_device(device)
    model = resolve_default(str(model), volume)
    fallback = None
    if model == "default-mri":
        model, fallback = _mri_or_slice_model(prompts)
    kind = read_card(model).kind
    if kind == CT_MODEL_KIND:
        return segment_ct_result(
            volume, prompts, model, dev, keep_islands=keep_islands, use_isd=use_isd, presence_gate=presence_gate,
            best_effort=best_effort, force=force, progress=progress, cancel=cancel,
        )
    if kind == MRI_MODEL_KIND:
        if presence_gate not in ("window", "none"):
            raise InputError(f"presence_gate={presence_gate!r}: model {model!r} gates per volume ('window', the default) or not at all ('none')")
        return segment_mri_result(
            volume, prompts, model, dev, keep_islands=keep_islands, use_isd=use_isd and presence_gate != "none",
            best_effort=best_effort, force=force, progress=progress, cancel=cancel,
        )
    if presence_gate != "window":
        raise InputError(f"presence_gate={presence_gate!r} applies to CT models such as ct-v1; model {model!r} gates per slice (use_isd)")
    net, cfg, card = _load(str(model), str(dev))
    vocab = load_vocabulary()
    plan = plan_prompts(prompts, vocab, _known(card), best_effort, f"model {card.name!r}")
    structures = plan.structures
    refuse_label_map(volume, force)
    modality = detect_modality(volume)
    warnings = [*volume.meta.get("warnings", []), *plan.warnings]
    warnings += [w for s in structures if (w := vocab.modality_mismatch(s, modality))]
    axis = select_view(volume.shape)
    axial = slices_are_axial(volume, axis)
    use_veto = region_check and axial
    veto = RegionVeto.build(structures, _known(card), vocab, modality) if use_veto else RegionVeto.none(len(structures))
    queries = [*structures, *veto.witnesses]
    text = _text_encoder().encode([prompt_text(s) for s in queries]).float().to(dev)

    window = card.preprocessing.get("ct_window", "soft_tissue")
    report(progress, "preprocessing", 0, 1)
    stack = model_slices(volume.array, axis, modality, cfg.image_size, window)
    check(cancel)
    native = tuple(n for a, n in enumerate(volume.shape) if a != axis)  # slice size in the view
    content = content_mask(stack)
    labels, scores = _run(net, cfg, stack, content, text, native, dev, batch_size, use_isd, veto, progress, cancel)
    scores.vetoed = vetoed_slices(scores.rival, scores.omega[:, : len(structures)], scores.candidate)
    scores.dropped = drop_vetoed_pieces(labels, scores.vetoed)
    spacing = volume.spacing[2 - axis]
    one_slice = {} if keep_islands else remove_islands(labels, structures, axial_spacing_mm=spacing if axial else None)
    counts = np.stack([np.bincount(plane.ravel(), minlength=len(structures) + 1) for plane in labels])
    labels = np.ascontiguousarray(np.moveaxis(labels, 0, axis))
    result = volume.with_array(labels)
    result.meta = {**volume.meta, "modality": "label", "prompts": [str(p) for p in prompts], "label_of_prompt": plan.label_of}
    reports = _reports(plan, counts, scores, volume, {structures[v - 1].key for v in one_slice})
    warnings += _veto_warnings(reports, veto, scores, [s.name for s in queries])
    warnings += _outvoted_warnings(reports)
    warnings += [
        f"'{structures[value - 1].name}' was found on one axial slice only (slice {z}; slices {spacing:g} mm apart) "
        "and removed: it is longer than two slices (pass keep_islands=True / --keep-islands to keep it)"
        for value, z in one_slice.items()
    ]
    if fallback:
        warnings.insert(0, fallback)
    return SegmentationResult(result, reports, warnings, card.name, scores)


def _mri_or_slice_model(prompts: Sequence[str]) -> tuple[str, str | None]:
    """The MRI model when it knows every prompted structure; otherwise the slice model, which knows
    more structures (abdominal MRI: liver, kidneys...), with a warning that says so."""
    from ..vocabulary import load_vocabulary

    vocab = load_vocabulary()
    card = read_card("default-mri")
    known = _known(card)
    unknown = [s.name for p in prompts if (s := vocab.try_normalize(p)) is not None and s.key not in known]
    if not unknown:
        return "default-mri", None
    names = ", ".join(f"'{n}'" for n in dict.fromkeys(unknown))
    return "default", f"{card.name}, the MRI model, does not know {names}: the slice model {read_card('default').name} segmented this image"


def _known(card) -> set[str]:
    return {s.get("key") for s in card.structures}


def _veto_warnings(reports, veto: RegionVeto, scores: SliceScores, names: list[str]) -> list[str]:
    return [
        f"'{r.structure_name}' was dropped from {r.slices_ruled_out} axial slice(s) that show "
        f"{', '.join(rivals_seen(veto, scores.omega, scores.seen, scores.vetoed & scores.dropped, i, names))}, "
        "a body region where it cannot be (pass region_check=False / --no-region-check to keep it)"
        for i, r in enumerate(reports)
        if r.slices_ruled_out
    ]


# ------------------------------------------------------------------------------ batched inference
@dataclass
class SliceScores:
    """Per slice (in the slicing view): ω and presence (ω > 0.5, non-empty mask) of every query
    (prompts, then the veto's witnesses); for the prompts whether they passed the ISD with a mask
    (``candidate``), whether they were kept after NMS, the highest ω of a rival present on the slice
    (0: none), and after the whole volume is done whether the veto ruled them out there and whether a
    3D piece of them was dropped there for it."""

    omega: np.ndarray  # [N, Q] float32
    seen: np.ndarray  # [N, Q] bool
    candidate: np.ndarray  # [N, P] bool
    kept: np.ndarray  # [N, P] bool
    rival: np.ndarray  # [N, P] float32
    vetoed: np.ndarray | None = None  # [N, P] bool
    dropped: np.ndarray | None = None  # [N, P] bool

    @classmethod
    def empty(cls, n: int, queries: int, prompts: int) -> SliceScores:
        return cls(
            np.zeros((n, queries), np.float32), np.zeros((n, queries), bool),
            np.zeros((n, prompts), bool), np.zeros((n, prompts), bool), np.zeros((n, prompts), np.float32),
        )

    def put(self, start: int, stop: int, other: SliceScores) -> None:
        for name in ("omega", "seen", "candidate", "kept", "rival"):
            getattr(self, name)[start:stop] = getattr(other, name)


def _run(net, cfg, stack, content, text, native, device, batch_size, use_isd, veto, progress, cancel):
    """Model over all slices in batches; halves the batch on out-of-memory and retries.

    ``content`` (bool, like ``stack``) is where masks may be: outside it nothing is kept, whatever ω says.
    """
    n = stack.shape[0]
    batch = batch_size or (32 if device.type == "cuda" else 8)
    labels = np.zeros((n, *native), dtype=np.uint8)
    scores = SliceScores.empty(n, text.shape[0], veto.n_prompts)
    padded, _ = fve.pad_to_multiple(stack, fve.required_multiple(max(1, cfg.fve_k)))
    start = 0
    report(progress, "segmenting", 0, n)
    while start < n:
        check(cancel)
        stop = min(n, start + batch)
        try:
            out = _batch(net, cfg, padded, start, stop, text, native, device, use_isd, veto, content[start:stop])
        except (torch.OutOfMemoryError, MemoryError, RuntimeError) as error:
            if isinstance(error, RuntimeError) and "out of memory" not in str(error).lower():
                raise
            if batch == 1:
                raise
            batch = max(1, batch // 2)
            if device.type == "cuda":
                torch.cuda.empty_cache()
            continue
        labels[start:stop] = out[0]
        scores.put(start, stop, out[1])
        start = stop
        report(progress, "segmenting", start, n)
    return labels, scores


@torch.inference_mode()
def _batch(net, cfg, padded, start, stop, text, native, device, use_isd, veto, content):
    images = fve_images(padded, start, stop, cfg.fve_k)[..., : cfg.image_size, : cfg.image_size]
    images = torch.from_numpy(np.ascontiguousarray(images)).to(device)
    b, p = images.shape[0], text.shape[0]
    with autocast(device):
        features = net.encode_image(images)  # once per slice, shared by all prompts
        output = net.decode(features, text[None].expand(b, p, -1))
    probs = torch.sigmoid(output.mask_logits.float()).cpu()  # [B, Q, S, S] at the model's resolution
    probs *= torch.from_numpy(content)[:, None]
    omega = torch.sigmoid(output.presence_logits.float()).cpu()
    positive = probs > 0.5
    seen = (omega > 0.5) & positive.flatten(2).any(-1)
    p = veto.n_prompts  # the queries after the prompts are witnesses: they vote, they are not drawn
    probs, positive, prompt_omega = probs[:, :p], positive[:, :p], omega[:, :p]
    gate = (prompt_omega > 0.5) if use_isd else torch.ones_like(prompt_omega, dtype=torch.bool)
    candidate = gate & positive.flatten(2).any(-1)  # what the veto may rule out (decided in 3D, later)
    gate &= _nms(positive & gate[..., None, None], prompt_omega)
    scores = SliceScores(omega.numpy(), seen.numpy(), candidate.numpy(), gate.numpy(), veto.best_rival(omega, seen).numpy())
    return label_map(probs, gate, native).numpy(), scores


@dataclass(frozen=True)
class _Bilinear:
    """Per-output-pixel source indices and weights of ``F.interpolate(mode="bilinear",
    align_corners=False)`` along one axis, so that any window of the resized image can be computed alone."""

    i0: np.ndarray
    i1: np.ndarray
    w0: torch.Tensor
    w1: torch.Tensor

    @classmethod
    def table(cls, source: int, target: int) -> _Bilinear:
        scale = np.float32(source / target)  # float32 arithmetic, as torch's CPU kernel
        real = np.maximum(scale * (np.arange(target, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5), np.float32(0))
        i0 = real.astype(np.int64)
        w1 = (real - i0.astype(np.float32)).astype(np.float32)
        return cls(i0, np.minimum(i0 + 1, source - 1), torch.from_numpy(1 - w1), torch.from_numpy(w1))

    def window(self, first: int, last: int) -> tuple[int, int] | None:
        """Output range whose value can depend on source rows ``first..last`` (None: none can)."""
        hit = np.flatnonzero((self.i0 >= first - 1) & (self.i0 <= last))
        return (int(hit[0]), int(hit[-1]) + 1) if hit.size else None


def label_map(probs: torch.Tensor, keep: torch.Tensor, native: tuple[int, int]) -> torch.Tensor:
    """Argmax over kept prompts of the probabilities resized to ``native`` (label j+1 where prompt j wins
    with p > 0.5, else 0): ``[B, P, S, S] -> [B, H, W]`` uint8.

    Same result as bilinearly resizing all P maps and taking the argmax, but each prompt is resized
    only inside the box around its mask and merged into a running maximum, so an extra prompt costs
    in proportion to the structure's size, not the slice's, and P full-size maps never exist.
    """
    b = probs.shape[0]
    rows, cols = _Bilinear.table(probs.shape[-2], native[0]), _Bilinear.table(probs.shape[-1], native[1])
    labels = torch.zeros((b, *native), dtype=torch.uint8)
    positive = probs > 0.5
    for i in range(b):
        best = torch.full(native, 0.5)
        for j in keep[i].nonzero()[:, 0].tolist():
            box = _box(positive[i, j], rows, cols)
            if box is None:
                continue
            (y0, y1), (x0, x1) = box
            region = _resize_window(probs[i, j], rows, cols, y0, y1, x0, x1)
            current, winner = best[y0:y1, x0:x1], labels[i, y0:y1, x0:x1]
            wins = region > current
            current.copy_(torch.where(wins, region, current))
            winner.masked_fill_(wins, j + 1)
    return labels


def _box(mask: torch.Tensor, rows: _Bilinear, cols: _Bilinear):
    """Output window that can exceed 0.5: pixels interpolating from at least one positive source pixel."""
    ys = mask.any(dim=1).nonzero()[:, 0]
    if ys.numel() == 0:
        return None
    xs = mask.any(dim=0).nonzero()[:, 0]
    y, x = rows.window(int(ys[0]), int(ys[-1])), cols.window(int(xs[0]), int(xs[-1]))
    return (y, x) if y and x else None


def _resize_window(prob: torch.Tensor, rows: _Bilinear, cols: _Bilinear, y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
    """``F.interpolate(prob, native, "bilinear")[y0:y1, x0:x1]`` (same operation order: columns, then rows)."""
    c0, c1 = cols.i0[x0:x1], cols.i1[x0:x1]
    cw0, cw1 = cols.w0[x0:x1], cols.w1[x0:x1]

    def along_columns(source_rows: np.ndarray) -> torch.Tensor:
        picked = prob[source_rows]
        return picked[:, c0] * cw0 + picked[:, c1] * cw1

    top, bottom = along_columns(rows.i0[y0:y1]), along_columns(rows.i1[y0:y1])
    return top * rows.w0[y0:y1, None] + bottom * rows.w1[y0:y1, None]


def _nms(masks: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """Slice-level NMS: per slice, drop a prompt whose mask overlaps a more confident one (IoU > NMS_IOU)."""
    b, p = scores.shape
    keep = torch.ones((b, p), dtype=torch.bool, device=scores.device)
    if p == 1:
        return keep
    flat = masks.flatten(2).float()
    inter = flat @ flat.transpose(1, 2)
    area = flat.sum(-1)
    iou = inter / (area[:, :, None] + area[:, None, :] - inter).clamp_min(1)
    order = scores.argsort(dim=1, descending=True)
    for s in range(b):
        for rank, i in enumerate(order[s].tolist()):
            if not keep[s, i]:
                continue
            for j in order[s, rank + 1 :].tolist():
                if iou[s, i, j] > NMS_IOU:
                    keep[s, j] = False
    return keep


# ------------------------------------------------------------------------------ reports
def _reports(plan: PromptPlan, counts, scores: SliceScores, volume, removed: set[str]) -> list[PromptReport]:
    """One report per distinct structure from ``counts`` [slice, label] (voxels of each label per slice)."""
    out = []
    for i, s in enumerate(plan.structures):
        count = int(counts[:, i + 1].sum())
        per_slice = counts[:, i + 1] > 0
        found_slices = scores.kept[:, i] & per_slice
        mean = float(scores.omega[found_slices, i].mean()) if found_slices.any() else 0.0
        ruled_out = int(scores.dropped[:, i].sum())
        known = s.key not in plan.untrained
        out.append(
            PromptReport(
                prompt=plan.prompts_of[i][0],
                structure_key=s.key,
                structure_name=s.name,
                color=tuple(int(c) for c in s.color),
                label=i + 1,
                found=count > 0,
                volume_ml=round(count * volume.voxel_volume_ml, 3),
                slices_present=int(per_slice.sum()),
                mean_presence=round(mean, 4),
                slices_ruled_out=ruled_out,
                prompts=list(plan.prompts_of[i]),
                known_to_model=known,
                status=_status(count, known, bool(ruled_out) or s.key in removed, bool(scores.candidate[:, i].any())),
            )
        )
    return out


def _status(count: int, known: bool, removed: bool, seen: bool) -> str:
    """Why a structure has the voxels it has (see :class:`PromptReport`)."""
    if count:
        return "found" if known else "found (best effort: not known to this model)"
    if not known:
        return "not known to this model"
    if removed:
        return "removed"
    return "outvoted" if seen else "not present"


def _outvoted_warnings(reports: list[PromptReport]) -> list[str]:
    return [
        f"'{r.structure_name}' was seen but lost every voxel to a more confident prompt: it is not absent; "
        "segment it in a run of its own"
        for r in reports
        if r.status == "outvoted"
    ]


__all__ = ["segment", "SegmentationResult", "PromptReport", "label_map", "Cancelled"]
