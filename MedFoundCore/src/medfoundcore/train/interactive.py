"""Train the interactive model with simulated interaction on cached frozen-encoder features.

One step: one crop of one cached case around one labelled structure (class-agnostic: the model
never learns the name). The first interaction is a click in the middle of the structure, a box
around it or a stroke through it; then 0–3 rounds (no gradient) of the model's own prediction, a
corrective click in its largest error and that prediction fed back as the current mask, as a user
works; the last round is trained. Losses: BCE + soft Dice on the 6 mm logits and on the
full-resolution refinement of a sub-box on the structure.

Whole structure classes are held out of training (:data:`HELD_OUT`), so that the evaluation
measures structures the model has never seen. Checkpoints, resume and the learning-rate schedule
work as in :mod:`.ct_segment`.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..data import interaction
from ..errors import InputError
from ..models.backbones import ct_weights
from ..models.interactive_segmenter import InteractiveConfig, InteractiveSegmenter, build_interactive_segmenter
from ..models.prompt_encoder import VOXEL_MM_ZXY, Prompts, stroke_points
from ..progress import CancelToken, ProgressCallback, check, report
from ..registry import ModelCard, save_model
from ..vocabulary import Vocabulary, ancestors, load_vocabulary
from .ct_features import CachedCase
from .ct_segment import _lr, case_weights, crop_case, crop_start, dice_loss
from .loop import load_base_model, log_loss, optimiser_step, resume, save_loop_checkpoint, start_run

MODEL_KIND = "ct-interactive-segmenter"
#: Structure classes never trained on (with their sides): what the evaluation calls unseen. Each is
#: labelled on held-out patients (spleen: ts_ct_dicom20, spleen_8; parotids: OpenKBP test patients;
#: autochthon muscles: ts_ct_dicom20), so unseen classes are measured on unseen patients.
HELD_OUT = ("spleen", "parotid_gland", "autochthon")


@dataclass
class InteractiveTrainConfig:
    steps: int = 6000
    max_minutes: float | None = None
    lr: float = 1e-3
    weight_decay: float = 1e-4
    crop_zxy: tuple[int, int, int] = (16, 40, 40)  # 6 mm voxels: 96 × 240 × 240 mm (inference regions are larger)
    refine_zxy: tuple[int, int, int] = (8, 16, 16)
    max_corrections: int = 3  # simulated rounds before the trained one: 0..max
    first: tuple[float, float, float] = (0.6, 0.25, 0.15)  # probability of a click, a box, a stroke first
    exclude_first: float = 0.15  # probability of also starting with an exclude click just outside
    drop_previous: float = 0.1  # probability of not feeding the current mask back (a client without it)
    checkpoint_every: int = 250
    seed: int = 0
    held_out: tuple[str, ...] = HELD_OUT
    structures: list[str] | None = None  # train only on these targets (default: every labelled structure)
    model: InteractiveConfig = field(default_factory=InteractiveConfig)

    def to_dict(self) -> dict:
        return {**asdict(self), "model": self.model.to_dict()}


def is_held_out(key: str, vocab: Vocabulary, held_out: Sequence[str]) -> bool:
    return key in held_out or any(a in held_out for a in ancestors(key, vocab))


def interactive_targets(case: CachedCase, vocab: Vocabulary, held_out: Sequence[str] = HELD_OUT) -> dict[str, list[int]]:
    """Target name → the case's label values it is made of, for every structure a user could click:
    each labelled structure as labelled (several labels named alike, such as three vertebrae, stay
    three targets), except a lung's thirds (cut by planes, not anatomy), which are merged into the
    lung. Held-out classes are left out."""
    out: dict[str, list[int]] = {}
    for value, key in case.meta["label_keys"].items():
        if key not in vocab or is_held_out(key, vocab, held_out):
            continue
        if "_third" in key:
            out.setdefault(ancestors(key, vocab)[0], []).append(int(value))
        else:
            out[key if key not in out else f"{key}#{value}"] = [int(value)]
    return out


def key_statistics(cases: Sequence[CachedCase], voxels_per_case: int = 4096, seed: int = 0) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Per-channel mean and std of the similarity levels' encoder features over the training bodies
    (a fixed random sample of body voxels per case): what similarity standardises with."""
    from ..models.backbones.ct_foundation import FEATURE_STRIDES
    from ..models.prompt_encoder import SIMILARITY_LEVELS
    from ..preprocess import BODY_LEVEL

    rng = np.random.default_rng(seed)
    stats = {}
    for level in SIMILARITY_LEVELS:
        stride = FEATURE_STRIDES[level - 1]
        samples = []
        for case in cases:
            feature = case.array(f"f{level}")
            body = np.asarray(case.array("image")[:: stride[0], :: stride[1], :: stride[2]])[: feature.shape[1], : feature.shape[2], : feature.shape[3]] > BODY_LEVEL
            where = np.flatnonzero(body)
            if where.size:
                pick = np.sort(rng.choice(where, min(voxels_per_case, where.size), replace=False))
                samples.append(np.asarray(feature, dtype=np.float32).reshape(feature.shape[0], -1)[:, pick])
        values = torch.from_numpy(np.concatenate(samples, axis=1))
        stats[level] = (values.mean(1), values.std(1))
    return stats


@dataclass
class InteractiveSample:
    features: list[torch.Tensor]
    image: torch.Tensor  # Z X Y, [0, 1]
    mask: np.ndarray  # Z X Y bool, the structure
    key: str


def target_weights(case: CachedCase, targets: dict[str, list[int]]) -> dict[str, float]:
    """How often each structure of a case is drawn: ∝ √(its voxels). Drawn uniformly, the many small
    structures (ribs, vessels, muscles) taught a prior of small masks: after 1 500 steps one click in
    a held-out liver gave a 2 % mask (Dice 0.01) while humeri and muscles reached 0.6–0.8."""
    counts = np.bincount(np.asarray(case.array("labels")).ravel())
    return {k: float(np.sqrt(sum(counts[v] for v in values if v < len(counts)))) for k, values in targets.items()}


def sample_target(
    case: CachedCase, targets: dict[str, list[int]], cfg: InteractiveTrainConfig, rng: random.Random,
    weights: dict[str, float] | None = None,
) -> InteractiveSample | None:
    """A crop of ``case`` around one of its structures (``None`` if the crop misses it); structures are
    drawn by ``weights`` (default: equally)."""
    keys = sorted(targets)
    key = rng.choices(keys, [weights[k] for k in keys] if weights else None)[0]
    labels = case.array("labels")
    coarse = labels[::2, ::4, ::4]
    where = np.flatnonzero(np.isin(coarse, targets[key]))
    if not where.size:
        return None
    centre = np.unravel_index(int(where[rng.randrange(where.size)]), coarse.shape)
    shape = case.array("f1").shape[1:]
    crop = [min(c, n) for c, n in zip(cfg.crop_zxy, shape)]
    start = crop_start(shape, crop, centre, rng)
    features, image, crop_labels = crop_case(case, start, crop)
    mask = np.isin(crop_labels, targets[key])
    if mask.sum() < 8:
        return None
    return InteractiveSample(features, image, mask, key)


def first_prompts(mask: np.ndarray, cfg: InteractiveTrainConfig, rng: random.Random) -> Prompts:
    """The first interaction: a click inside, a box around, or a stroke through the structure."""
    kind = rng.choices(("click", "box", "stroke"), weights=cfg.first)[0]
    prompts = Prompts()
    if kind == "click":
        prompts = prompts.added(interaction.interior_point(mask, VOXEL_MM_ZXY, rng), True)
    elif kind == "box":
        prompts = Prompts(box=interaction.jittered_box(mask, VOXEL_MM_ZXY, rng))
    else:
        points = stroke_points(interaction.stroke(mask, VOXEL_MM_ZXY, rng))
        inside = mask[tuple(np.rint(points).astype(int).T)]
        prompts = prompts.added(points[inside] if inside.any() else points[:1], True)
    if rng.random() < cfg.exclude_first:
        outside = _point_just_outside(mask, rng)
        if outside is not None:
            prompts = prompts.added(outside, False)
    return prompts


def _point_just_outside(mask: np.ndarray, rng: random.Random, reach: int = 4) -> np.ndarray | None:
    """A voxel outside the structure within ``reach`` voxels of it (an exclude click on a neighbour)."""
    from scipy import ndimage as ndi

    ring = ndi.binary_dilation(mask, iterations=reach) & ~mask
    where = np.flatnonzero(ring)
    if not where.size:
        return None
    return np.array(np.unravel_index(int(where[rng.randrange(where.size)]), mask.shape), dtype=np.float64)


def upsample_mask(coarse: torch.Tensor, up: Sequence[int]) -> np.ndarray:
    """A 6 mm mask ``[z, x, y]`` bool → full resolution by repetition."""
    out = coarse.cpu().numpy()
    for axis, u in enumerate(up):
        out = np.repeat(out, u, axis=axis)
    return out


def prompt_input(net: InteractiveSegmenter, pixel: torch.Tensor, keys: list[torch.Tensor], prompts: Prompts,
                 previous: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt maps and similarity maps of a training crop."""
    shape = pixel.shape[-3:]
    return net.prompt_maps(prompts, shape, previous, pixel.device), net.similarity(keys, prompts, shape, previous)


def simulate(
    net: InteractiveSegmenter, pixel: torch.Tensor, keys: list[torch.Tensor], mask: np.ndarray, prompts: Prompts, rounds: int
) -> tuple[Prompts, torch.Tensor | None]:
    """``rounds`` rounds of prediction (no gradient) and a corrective click in the largest error;
    returns the prompts so far and the last prediction as the current mask (fraction per 6 mm voxel)."""
    previous = None
    for _ in range(rounds):
        with torch.no_grad():
            coarse = net.coarse_logits(pixel, *prompt_input(net, pixel, keys, prompts, previous))[0, 0] > 0
        click = interaction.corrective_click(mask, upsample_mask(coarse, net.upsample), VOXEL_MM_ZXY)
        previous = coarse.float()
        if click is None:
            break
        prompts = prompts.added(click[0], click[1])
    return prompts, previous


def _refine_box(mask: np.ndarray, coarse_shape: Sequence[int], size: Sequence[int], up: Sequence[int], rng: random.Random):
    """A sub-box (full-resolution slices, 6 mm slices) centred on a random voxel of the structure."""
    where = np.argwhere(mask)
    centre = where[rng.randrange(len(where))]
    full, coarse = [], []
    for axis, (n, s, u) in enumerate(zip(coarse_shape, size, up)):
        s = min(s, n)
        c = int(np.clip(centre[axis] // u - s // 2, 0, n - s))
        coarse.append(slice(c, c + s))
        full.append(slice(c * u, (c + s) * u))
    return tuple(full), tuple(coarse)


def sample_loss(
    net: InteractiveSegmenter, sample: InteractiveSample, cfg: InteractiveTrainConfig, rng: random.Random
) -> tuple[torch.Tensor, dict[str, float]]:
    features = [f[None] for f in sample.features]
    pixel = net.pixel_features(features)
    keys = net.similarity_keys(features)
    prompts = first_prompts(sample.mask, cfg, rng)
    rounds = rng.randint(0, cfg.max_corrections)
    prompts, previous = simulate(net, pixel.detach(), keys, sample.mask, prompts, rounds)
    if rng.random() < cfg.drop_previous:
        previous = None
    maps, sim = prompt_input(net, pixel, keys, prompts, previous)
    coarse = net.coarse_logits(pixel, maps, sim)
    target = torch.from_numpy(sample.mask.astype(np.float32))[None, None]
    frac = F.avg_pool3d(target, kernel_size=net.upsample)
    coarse_loss = F.binary_cross_entropy_with_logits(coarse, frac) + dice_loss(coarse, frac)
    full, box = _refine_box(sample.mask, coarse.shape[-3:], cfg.refine_zxy, net.upsample, rng)
    image = net.image_features(sample.image[full][None, None])
    fine = net.refine(image, coarse[(slice(None), slice(None), *box)], maps[(slice(None), slice(None), *box)])
    sub = target[(slice(None), slice(None), *full)]
    fine_loss = F.binary_cross_entropy_with_logits(fine, sub) + dice_loss(fine, sub)
    return coarse_loss + fine_loss, {"coarse": coarse_loss.item(), "fine": fine_loss.item(), "rounds": float(rounds)}


def train_interactive(
    cases: Sequence[CachedCase], workdir: str | Path, cfg: InteractiveTrainConfig, *,
    init: dict[str, torch.Tensor] | None = None,
    progress: ProgressCallback | None = None, cancel: CancelToken | None = None,
) -> tuple[InteractiveSegmenter, dict]:
    """Train (or resume) the interactive decoder; ``init`` fine-tunes from a model's weights."""
    started = time.monotonic()
    vocab = load_vocabulary()
    targets = [interactive_targets(c, vocab, cfg.held_out) for c in cases]
    if cfg.structures is not None:
        targets = [{k: v for k, v in t.items() if k.split("#")[0] in cfg.structures} for t in targets]
    usable = [i for i, t in enumerate(targets) if t]
    if not usable:
        raise InputError("none of the cached CT cases has a labelled structure to train the interactive model on")
    cases, targets = [cases[i] for i in usable], [targets[i] for i in usable]
    workdir, rng = start_run(workdir, cfg.seed)
    net = build_interactive_segmenter(cfg.model)
    if init is not None:
        net.load_state_dict(init)
    else:
        net.set_key_statistics(key_statistics(cases))
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    weights = case_weights(cases, targets)
    sizes = [target_weights(c, t) for c, t in zip(cases, targets)]
    history: dict = {"loss": [], "cases": [c.case_id for c in cases], "structures": sorted({k for t in targets for k in t})}
    step, history, state = resume(workdir, net, opt, rng, history)
    if state is not None:
        torch.set_rng_state(state["torch_rng"])
    trained_before = float(history.get("train_minutes", 0.0))
    net.train()
    smooth = None
    loop_start = time.monotonic()
    minutes = lambda: trained_before + (time.monotonic() - loop_start) / 60  # noqa: E731
    while step < cfg.steps:
        check(cancel)
        if cfg.max_minutes is not None and minutes() > cfg.max_minutes:
            break
        i = rng.choices(range(len(cases)), weights)[0]
        sample = sample_target(cases[i], targets[i], cfg, rng, sizes[i])
        if sample is None:
            continue
        for group in opt.param_groups:
            group["lr"] = _lr(step, cfg, minutes())
        loss, parts = sample_loss(net, sample, cfg, rng)
        optimiser_step(net, opt, loss)
        step += 1
        smooth = log_loss(history, step, smooth, loss.item(), parts)
        if step % cfg.checkpoint_every == 0:
            history["train_minutes"] = round(minutes(), 3)
            save_loop_checkpoint(workdir, step, net, opt, history, rng, torch_rng=torch.get_rng_state())
        report(progress, "training the interactive model", step, cfg.steps, f"loss {smooth:.3f}")
    history["steps_done"] = step
    history["train_minutes"] = round(minutes(), 3)
    history["minutes"] = round((time.monotonic() - started) / 60, 2)
    return net.eval(), history


def ship_interactive(
    net: InteractiveSegmenter, history: dict, name: str, directory: str | Path | None, *, training_data: dict,
    metrics: dict | None = None, overwrite: bool = False, encoder_pretrained: bool = True,
) -> Path:
    """Save the trained decoder as a model (safetensors + card) named ``name``."""
    card = ModelCard(
        name=name, kind=MODEL_KIND,
        config={
            "model": net.cfg.to_dict(), "encoder": ct_weights.NAME, "encoder_sha256": ct_weights.JOINED_SHA256,
            "encoder_init": "pretrained" if encoder_pretrained else f"random (seed {ct_weights.RANDOM_INIT_SEED})",
        },
        description=(
            "Interactive (class-agnostic) 3D segmentation from include/exclude points, strokes, a box and the "
            "current mask: a decoder trained with simulated clicks on the frozen CT foundation encoder. "
            + ct_weights.CREDIT
        ),
        structures=[], prompts=[],
        preprocessing={"orientation": "RAS", "spacing_xyz_mm": [1.5, 1.5, 3.0], "hu_range": [-1000, 1000]},
        training_data=training_data, metrics=metrics or {},
        extra={"history": {k: v for k, v in history.items() if k != "loss"}, "loss": history.get("loss", [])[-8:],
               "license": "Apache-2.0 (decoder); encoder MIT (Astra / Merlin)"},
    )
    return save_model(net.state_dict(), card, directory, overwrite=overwrite)


def train_interactive_from_cases(
    refs: Sequence, cfg: InteractiveTrainConfig, name: str, workdir: str | Path, *, feature_cache: str | Path | None = None,
    output_dir: str | Path | None = None, base_model: str | None = None, device: str = "cpu",
    progress: ProgressCallback | None = None, cancel: CancelToken | None = None,
) -> Path:
    """What ``medfound train-seg --model interactive`` does: cache the frozen encoder's features of
    every CT case (resumable, shared with ``--model ct``), train the decoder with simulated
    interaction (from ``base_model``'s weights when fine-tuning), ship it."""
    from .ct_features import cache_cases

    started = time.monotonic()
    ct = [r for r in refs if r.modality == "CT"]
    if not ct:
        raise InputError("--model interactive trains on CT cases only, and none of the given cases is a CT")
    cache_root = Path(feature_cache) if feature_cache else Path(workdir) / "features"
    cases = cache_cases(ct, cache_root, device=device, progress=progress, cancel=cancel)
    init = None
    if base_model:
        init, base = load_base_model(base_model, MODEL_KIND, "interactive", "an interactive model such as interactive-v1")
        cfg.model = InteractiveConfig.from_dict(base.config["model"])
    if cfg.max_minutes is not None:
        cfg.max_minutes = max(0.0, cfg.max_minutes - (time.monotonic() - started) / 60)
    net, history = train_interactive(cases, workdir, cfg, init=init, progress=progress, cancel=cancel)
    history["minutes_with_caching"] = round((time.monotonic() - started) / 60, 2)
    data = {"cases": [c.case_id for c in cases], "subjects": sorted({c.meta["subject"] for c in cases}), "base_model": base_model,
            "held_out_classes": list(cfg.held_out), "config": cfg.to_dict()}
    return ship_interactive(net, history, name, output_dir, training_data=data, overwrite=output_dir is not None)
