"""Train ``ct-v1``'s decoder on cached frozen-encoder features (:mod:`.ct_features`).

One step = one crop of one cached case (layer1-grid crop aligned to the coarsest stride, so every
scale crops exactly) with up to :attr:`CTTrainConfig.prompts` prompts: every structure present in
the crop, structures the case annotates but the crop misses, and structures of body regions the case
cannot show (true negatives). Losses: BCE + soft Dice on the 6 mm coarse logits (targets = the
fraction of each coarse voxel the structure fills), BCE + Dice on the full-resolution refinement for
a few prompts, and BCE for per-slab presence (detached features: the ISD gradient cut-off).

Checkpoints are written atomically every ``checkpoint_every`` steps and a run resumes from the newest
one; training stops at ``max_minutes`` (of training, summed over resumed sessions) or ``steps``, and
the learning rate anneals over whichever of the two runs out first.

Backbone fine-tuning (``medfound train-seg --model ct --finetune-backbone``; on by default when the
training device is CUDA): the same crops, but the encoder runs on each crop's cached image with its
last stages trainable (:func:`finetune_encoder`, :func:`encoder_sample`), and the model then carries
that encoder's weights beside the decoder (:func:`ship`).
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError
from ..models.backbones import ct_weights
from ..models.backbones.ct_foundation import FEATURE_STRIDES, CTFoundationEncoder
from ..models.ct_segmenter import CTSegmenterConfig, CTTextSegmenter, build_ct_segmenter
from ..models.text_query import with_new_keys
from ..progress import CancelToken, ProgressCallback, check, report
from ..registry import PACKAGED_DIR, ModelCard, save_model
from ..vocabulary import Vocabulary, ancestors, load_vocabulary
from .checkpoint import latest_checkpoint, load_checkpoint
from .ct_features import CachedCase
from .loop import load_base_model, python_rng_state, save_loop_checkpoint, start_run

MODEL_KIND = "ct-text-segmenter"


@dataclass
class CTTrainConfig:
    steps: int = 4000
    max_minutes: float | None = None
    lr: float = 1e-3
    query_lr_scale: float = 10.0  # the learned per-structure queries move O(1) from a random start
    weight_decay: float = 1e-4
    crop_zxy: tuple[int, int, int] = (16, 32, 32)  # layer1 voxels: 96 × 192 × 192 mm
    prompts: int = 16  # an extra prompt costs one dot product per voxel: use every structure in the crop
    refine_prompts: int = 3
    refine_zxy: tuple[int, int, int] = (8, 16, 16)  # layer1 voxels of the full-resolution sub-box
    negatives: int = 4
    focus: float = 0.7  # fraction of crops centred on a labelled structure
    checkpoint_every: int = 250
    seed: int = 0
    structures: list[str] | None = None  # train only these vocabulary keys (default: every labelled one)
    # backbone fine-tuning (only when train_ct_segmenter is given an encoder; see finetune_encoder):
    encoder_lr_scale: float = 0.1  # pretrained weights move at a tenth of the decoder's rate
    encoder_train_from: int = 3  # layer3 and layer4 train; conv1..layer2 stay frozen
    model: CTSegmenterConfig = field(default_factory=CTSegmenterConfig)

    def to_dict(self) -> dict:
        return {**asdict(self), "model": self.model.to_dict()}


# ------------------------------------------------------------------------------------ targets
def structure_values(case: CachedCase, vocab: Vocabulary) -> dict[str, list[int]]:
    """Structure key → label values of the case that make it up, unions included (sides → both,
    levels → vertebrae, lung thirds → lung side → lung), so "kidney" trains on both kidneys."""
    out: dict[str, list[int]] = {}
    for value, key in case.meta["label_keys"].items():
        if key in vocab:
            for k in [key, *ancestors(key, vocab)]:
                out.setdefault(k, []).append(int(value))
    return out


def case_negatives(present: Sequence[str], vocab: Vocabulary, trained: set[str]) -> list[str]:
    """Trained structures that cannot be in this case: their body region is far from every region
    the case's own structures occupy (liver for a head-and-neck CT)."""
    regions = {r for k in present for r in vocab.get(k).regions}
    return sorted(s.key for s in vocab.distant_from(regions) if s.key in trained)


def case_weights(cases: Sequence[CachedCase], values: Sequence[dict[str, list[int]]]) -> list[float]:
    """Sampling weight per case: cases are grouped by their data set's region, each group is drawn
    in proportion to √(number of structures it teaches), each case of a group equally. Drawn
    uniformly, 60 head-and-neck CTs left the one abdominal patient ~1 crop in 64 (its organs were
    still unseen after 200 steps)."""
    groups: dict[str, list[int]] = {}
    for i, case in enumerate(cases):
        groups.setdefault(case.meta.get("region") or case.case_id, []).append(i)
    weights = [0.0] * len(cases)
    for members in groups.values():
        taught = {k for i in members for k in values[i]}
        for i in members:
            weights[i] = math.sqrt(max(1, len(taught))) / len(members)
    return weights


def crop_start(shape: Sequence[int], crop: Sequence[int], centre: Sequence[int] | None, rng: random.Random) -> list[int]:
    """A crop start per axis, a multiple of 8 layer1 voxels (one layer4 voxel) so every scale aligns."""
    starts = []
    for axis, (n, c) in enumerate(zip(shape, crop)):
        c = min(c, n)
        top = n - c
        jitter = rng.randint(-(c // 4), c // 4)
        want = rng.randint(0, top) if centre is None else int(np.clip(centre[axis] - c // 2 + jitter, 0, top))
        starts.append(min(top, int(round(want / 8)) * 8))
    return starts


def crop_case(case: CachedCase, start: Sequence[int], crop: Sequence[int]) -> tuple[list[torch.Tensor], torch.Tensor, np.ndarray]:
    """Feature maps (float32, every level), the [0, 1] image and the label map of one crop of a cached
    case; ``start`` and ``crop`` in layer1 voxels, ``start`` a multiple of 8 (see :func:`crop_start`)."""
    features = []
    for level in range(1, 5):
        scale = 2 ** (level - 1)
        box = tuple(slice(s // scale, (s + c) // scale) for s, c in zip(start, crop))
        features.append(torch.from_numpy(np.asarray(case.array(f"f{level}")[(slice(None), *box)], dtype=np.float32)))
    full = tuple(slice(s * u, (s + c) * u) for s, c, u in zip(start, crop, FEATURE_STRIDES[0]))
    image = torch.from_numpy(np.asarray(case.array("image")[full], dtype=np.float32))
    return features, image, np.asarray(case.array("labels")[full])


@dataclass
class Sample:
    features: list[torch.Tensor]
    image: torch.Tensor
    masks: torch.Tensor  # K Z X Y float (full resolution)
    keys: list[str]


def sample_crop(case: CachedCase, values: dict[str, list[int]], negatives: list[str], cfg: CTTrainConfig, rng: random.Random) -> Sample:
    """One training crop of ``case`` with its prompt list and full-resolution targets."""
    f1 = case.array("f1")
    shape = f1.shape[1:]
    crop = [min(c, n) for c, n in zip(cfg.crop_zxy, shape)]
    labels_full = case.array("labels")
    centre = None
    if values and rng.random() < cfg.focus:
        key = rng.choice(sorted(values))
        where = np.flatnonzero(np.isin(labels_full[:: 2, :: 4, :: 4], values[key]))
        if where.size:
            z, x, y = np.unravel_index(where[rng.randrange(where.size)], labels_full[::2, ::4, ::4].shape)
            centre = (z, x, y)
    start = crop_start(shape, crop, centre, rng)
    features, image, labels = crop_case(case, start, crop)
    present = [k for k, v in values.items() if np.isin(labels, v).any()]
    absent = [k for k in values if k not in present]
    rng.shuffle(present)
    keys = present[: max(1, cfg.prompts - cfg.negatives)]
    pool = absent + [k for k in negatives if k not in values]
    keys += rng.sample(pool, min(len(pool), cfg.prompts - len(keys)))
    masks = torch.from_numpy(np.stack([np.isin(labels, values.get(k, [])) for k in keys]).astype(np.float32)) if keys else torch.zeros(0, *labels.shape)
    return Sample(features, image, masks, keys)


def refine_box(
    masks: torch.Tensor, coarse_shape: Sequence[int], size: Sequence[int], up: Sequence[int], rng: random.Random
) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """A sub-box (full-resolution slices, layer1 slices) of the crop for the refinement loss, centred
    on the first prompt when it is present: boundaries are learnt where the structure is."""
    where = torch.nonzero(masks[0]) if len(masks) else torch.zeros(0, 3)
    centre = where[rng.randrange(len(where))].tolist() if len(where) else None
    full, coarse = [], []
    for axis, (n, s, u) in enumerate(zip(coarse_shape, size, up)):
        s = min(s, n)
        c = rng.randint(0, n - s) if centre is None else int(np.clip(centre[axis] // u - s // 2, 0, n - s))
        coarse.append(slice(c, c + s))
        full.append(slice(c * u, (c + s) * u))
    return tuple(full), tuple(coarse)


# ------------------------------------------------------------------------------------ losses
def dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Soft Dice averaged over the prompts whose target is not empty ([B, K, ...] tensors).

    Absent prompts are left to the BCE term: a Dice term on an empty target is ~1 for any non-zero
    probability mass, and with several absent prompts per crop it drove every mask to nothing
    (measured: all logits < -12 after 600 steps, even for the liver on its own training crop).
    """
    dims = tuple(range(2, logits.ndim))
    present = target.sum(dims) > 0
    if not present.any():
        return logits.sum() * 0.0
    prob = torch.sigmoid(logits)
    inter = (prob * target).sum(dims)
    dice = 1 - (2 * inter + eps) / (prob.sum(dims) + target.sum(dims) + eps)
    return dice[present].mean()


def sample_loss(
    net: CTTextSegmenter, sample: Sample, text: torch.Tensor, cfg: CTTrainConfig, rng: random.Random | None = None
) -> tuple[torch.Tensor, dict[str, float]]:
    feats = [f[None] for f in sample.features]
    pixel = net.pixel_features(feats)
    coarse = net.coarse_logits(pixel, text, sample.keys)  # 1 K z x y
    target = sample.masks[None]
    frac = F.avg_pool3d(target, kernel_size=net.upsample)
    coarse_loss = F.binary_cross_entropy_with_logits(coarse, frac) + dice_loss(coarse, frac)
    n_ref = min(cfg.refine_prompts, len(sample.keys))
    box, fbox = refine_box(sample.masks, coarse.shape[-3:], cfg.refine_zxy, net.upsample, rng or random.Random(0))
    image_feats = net.image_features(sample.image[box][None, None])
    fine = torch.cat([net.refine(image_feats, coarse[(slice(None), slice(k, k + 1), *fbox)]) for k in range(n_ref)], dim=1)
    sub = target[(slice(None), slice(0, n_ref), *box)]
    fine_loss = F.binary_cross_entropy_with_logits(fine, sub) + dice_loss(fine, sub)
    slab_target = (frac.amax(dim=(-1, -2)) > 0).float()  # 1 K z
    presence_loss = F.binary_cross_entropy_with_logits(net.presence_logits(pixel, text, sample.keys), slab_target)
    loss = coarse_loss + fine_loss + 0.5 * presence_loss
    return loss, {"coarse": coarse_loss.item(), "fine": fine_loss.item(), "presence": presence_loss.item()}


# ------------------------------------------------------------------------------------ backbone fine-tuning
FINETUNE_CHOICES = ("auto", "on", "off")


def finetune_backbone_on(choice: str, device: str | torch.device) -> bool:
    """Whether ``--finetune-backbone choice`` fine-tunes the encoder when training on ``device``:
    ``auto`` means on exactly when the device is CUDA. On a CPU a step through the encoder's last
    stages costs seconds against a fraction of one for the decoder on cached features (the path
    ``ct-v1`` shipped with), so nothing there may depend on a GPU being present."""
    if choice not in FINETUNE_CHOICES:
        raise InputError(f"--finetune-backbone must be one of {', '.join(FINETUNE_CHOICES)}, not {choice!r}")
    return choice == "on" or (choice == "auto" and torch.device(device).type == "cuda")


def _stage_prefixes(train_from: int) -> tuple[str, ...]:
    if not 1 <= train_from <= 4:
        raise InputError(f"encoder_train_from must be 1..4 (the first trained stage), not {train_from}")
    return tuple(f"layer{i}." for i in range(train_from, 5))


def finetune_encoder(base: dict[str, torch.Tensor] | None = None, train_from: int = 3) -> CTFoundationEncoder:
    """A private copy of the pretrained encoder to fine-tune (never ``ct_weights.shared_encoder``, which
    inference shares), or of ``base``: the fine-tuned encoder of a model being fine-tuned again.

    Stages ``layer{train_from}``.. require gradients; conv1, bn1 and the earlier stages are frozen.
    Why: the early stages run on the finest grids, so their activations are most of a backward
    pass's memory (per input voxel, the stem's and layer1..2's block outputs hold ~58 values, layer3..4's
    ~18: channels / stride volume), and a frozen stage keeps none (no input or weight of it needs a
    gradient, so autograd records nothing); they
    are generic low-level filters that transfer anyway, while layer3 and layer4 hold 112 of the
    117.5 M parameters. BatchNorm stays in eval mode (the pretrained running statistics are used and
    never updated): one small crop per step is far too few voxels, and too correlated, to estimate
    them, and train-mode statistics would make a crop's features depend on its field of view.
    """
    from ..models.backbones.ct_weights import build_pretrained_encoder, encoder_from_state

    encoder = build_pretrained_encoder(4) if base is None else encoder_from_state(base)
    trained = _stage_prefixes(train_from)
    for name, parameter in encoder.named_parameters():
        parameter.requires_grad_(name.startswith(trained))
    return encoder.eval()


def trained_encoder_state(encoder: CTFoundationEncoder, train_from: int) -> dict[str, torch.Tensor]:
    """The weights of the stages that train (all a checkpoint needs: the frozen rest is the start)."""
    trained = _stage_prefixes(train_from)
    return {k: v for k, v in encoder.state_dict().items() if k.startswith(trained)}


@contextlib.contextmanager
def _bf16(device: torch.device):
    """bf16 autocast on a CUDA device that supports it, else fp32. Not fp16: it would need loss
    scaling, and the published weights are bf16 already."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
            yield
    else:
        yield


def encoder_sample(encoder: CTFoundationEncoder, sample: Sample, device: torch.device) -> Sample:
    """``sample`` on ``device`` with its feature maps computed now, with gradients, by the encoder
    being fine-tuned, from the crop's image (the cache's ``image.npy`` on the encoder grid; crops
    start on the coarsest stride, so the maps fall on the cached maps' grid). bf16 autocast on CUDA,
    fp32 on a CPU; the decoder gets fp32 maps either way."""
    image = sample.image.to(device)
    with _bf16(device):
        features = encoder(image[None, None])
    return Sample([f[0].float() for f in features], image, sample.masks.to(device), sample.keys)


def _on_device(sample: Sample, device: torch.device) -> Sample:
    return Sample([f.to(device) for f in sample.features], sample.image.to(device), sample.masks.to(device), sample.keys)


# ------------------------------------------------------------------------------------ training
def trained_structures(cases: Sequence[CachedCase], vocab: Vocabulary) -> list[str]:
    keys: set[str] = set()
    for case in cases:
        keys.update(structure_values(case, vocab))
    return sorted(keys)


def text_table(keys: Sequence[str], vocab: Vocabulary) -> torch.Tensor:
    """MiniLM embeddings of the structures' canonical names (what inference encodes too)."""
    from ..text import TextEncoder

    return TextEncoder().encode([vocab.get(k).name for k in keys]).float()


def _lr(step: int, cfg: CTTrainConfig, minutes: float = 0.0) -> float:
    """Warm-up over the first 5 %, then cosine decay, of whichever budget runs out first (steps, or
    ``max_minutes`` of training time), so a run stopped by the clock has warmed up and annealed too."""
    done = (step + 1) / max(1, cfg.steps)
    if cfg.max_minutes:
        done = max(done, minutes / cfg.max_minutes)
    warm = 0.05
    if done < warm:
        return cfg.lr * done / warm
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, (done - warm) / (1 - warm))))


def train_ct_segmenter(
    cases: Sequence[CachedCase], workdir: str | Path, cfg: CTTrainConfig, *,
    init: dict[str, torch.Tensor] | None = None, encoder: CTFoundationEncoder | None = None, device: str = "cpu",
    progress: ProgressCallback | None = None, cancel: CancelToken | None = None,
) -> tuple[CTTextSegmenter, dict]:
    """Train (or resume) the decoder on ``device``; returns it and a history dict. ``init`` fine-tunes
    from a decoder's weights. With ``encoder`` (:func:`finetune_encoder`) the backbone is fine-tuned
    too, in place: each crop's features come from it (:func:`encoder_sample`), its stages from
    ``cfg.encoder_train_from`` on train at ``cfg.encoder_lr_scale`` times the decoder's learning rate,
    and checkpoints carry those stages (the two newest are kept: each is ~1.4 GB with Adam's state)."""
    started = time.monotonic()
    if not cases:
        raise InputError("no cached CT case to train on")
    workdir, rng = start_run(workdir, cfg.seed)
    dev = torch.device(device)
    vocab = load_vocabulary()
    keys = [k for k in trained_structures(cases, vocab) if cfg.structures is None or k in cfg.structures]
    if not keys:
        raise InputError(f"none of the cases has labels for {', '.join(cfg.structures or [])}")
    embeddings = dict(zip(keys, text_table(keys, vocab).to(dev)))
    values = [{k: v for k, v in structure_values(c, vocab).items() if k in embeddings} for c in cases]
    negatives = [case_negatives(list(v), vocab, set(keys)) for v in values]
    weights = case_weights(cases, values)
    base_keys = list(cfg.model.keys) if init is not None else []
    net = build_ct_segmenter(replace(cfg.model, keys=base_keys + [k for k in keys if k not in base_keys]))
    if init is not None:
        net.load_state_dict(with_new_keys(init, net))
    net.to(dev)
    opt, encoder_params = _optimizer(net, encoder, cfg, dev)
    history: dict = {"loss": [], "keys": keys, "cases": [c.case_id for c in cases]}
    if encoder is not None:
        history["encoder_trained_stages"] = [p.rstrip(".") for p in _stage_prefixes(cfg.encoder_train_from)]
    step = 0
    latest = latest_checkpoint(workdir)
    if latest is not None:
        state = load_checkpoint(latest)
        if state.get("cases") != history["cases"]:
            raise InputError(f"{workdir}: holds a checkpoint of a run on other cases; use a new work directory")
        stages = json.loads(state["history"]).get("encoder_trained_stages")
        if ("encoder" in state) != (encoder is not None) or stages != history.get("encoder_trained_stages"):
            done = f"with backbone fine-tuning of {', '.join(stages)}" if stages else "without backbone fine-tuning"
            raise InputError(f"{workdir}: holds a checkpoint of a run {done}; resume it the same way or use a new work directory")
        net.load_state_dict(state["model"])
        if encoder is not None:
            encoder.load_state_dict({**encoder.state_dict(), **state["encoder"]}, strict=True)
        opt.load_state_dict(state["optimizer"])
        step, history = int(state["step"]), json.loads(state["history"])
        rng.setstate(python_rng_state(state["rng"]))
    trained_before = float(history.get("train_minutes", 0.0))  # of earlier sessions of this run
    net.train()  # (the encoder stays in eval mode: see finetune_encoder)
    smooth = None
    loop_start = time.monotonic()
    minutes = lambda: trained_before + (time.monotonic() - loop_start) / 60  # noqa: E731
    while step < cfg.steps:
        check(cancel)
        if cfg.max_minutes is not None and minutes() > cfg.max_minutes:
            break
        i = rng.choices(range(len(cases)), weights)[0]
        sample = sample_crop(cases[i], values[i], negatives[i], cfg, rng)
        if not sample.keys:
            continue
        sample = _on_device(sample, dev) if encoder is None else encoder_sample(encoder, sample, dev)
        text = torch.stack([embeddings[k] for k in sample.keys])
        for group in opt.param_groups:
            group["lr"] = _lr(step, cfg, minutes()) * group["scale"]
        loss, parts = sample_loss(net, sample, text, cfg, rng)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        if encoder_params:  # clipped apart: the encoder's gradient norm must not shrink the decoder's steps
            torch.nn.utils.clip_grad_norm_(encoder_params, 1.0)
        opt.step()
        step += 1
        value = loss.item()
        smooth = value if smooth is None else 0.98 * smooth + 0.02 * value
        if step % 25 == 0:
            history["loss"].append([step, round(smooth, 4), {k: round(v, 4) for k, v in parts.items()}])
        if step % cfg.checkpoint_every == 0:
            history["train_minutes"] = round(minutes(), 3)
            _checkpoint(workdir, step, net, encoder, opt, history, rng, cfg)
        report(progress, "training ct-v1", step, cfg.steps, f"loss {smooth:.3f}")
    history["steps_done"] = step
    history["train_minutes"] = round(minutes(), 3)
    history["minutes"] = round((time.monotonic() - started) / 60, 2)
    return net.eval(), history


def _optimizer(
    net: CTTextSegmenter, encoder: CTFoundationEncoder | None, cfg: CTTrainConfig, device: torch.device
) -> tuple[torch.optim.Optimizer, list[torch.nn.Parameter]]:
    """AdamW with one group per learning rate (each ``scale`` × the schedule's): the decoder, its
    learned queries (no weight decay), and the fine-tuned encoder stages when there are any."""
    queries = [net.key_query]
    rest = [p for p in net.parameters() if p is not net.key_query]
    groups = [{"params": rest, "scale": 1.0}, {"params": queries, "scale": cfg.query_lr_scale, "weight_decay": 0.0}]
    encoder_params: list[torch.nn.Parameter] = []
    if encoder is not None:
        encoder.to(device).eval()
        encoder_params = [p for p in encoder.parameters() if p.requires_grad]
        groups.append({"params": encoder_params, "scale": cfg.encoder_lr_scale})
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay), encoder_params


def _checkpoint(workdir: Path, step: int, net, encoder, opt, history: dict, rng: random.Random, cfg: CTTrainConfig) -> None:
    """One atomic checkpoint; with backbone fine-tuning it also holds the trained encoder stages, and
    only the two newest are kept (the pruning follows the new file's rename, so one complete
    checkpoint always exists)."""
    extra = {"encoder": trained_encoder_state(encoder, cfg.encoder_train_from)} if encoder is not None else {}
    save_loop_checkpoint(workdir, step, net, opt, history, rng, keep=2 if encoder is not None else None, **extra)


def ship(
    net: CTTextSegmenter, history: dict, name: str, directory: str | Path | None, *, training_data: dict,
    metrics: dict | None = None, overwrite: bool = False, encoder_pretrained: bool = True,
    encoder: CTFoundationEncoder | None = None,
) -> Path:
    """Save the trained decoder as a model (safetensors + card) named ``name``; a decoder trained on a
    randomly initialised encoder's features (the control) says so, and inference rebuilds that encoder.

    With a fine-tuned ``encoder`` its full weights go into the same safetensors under
    ``ct_weights.ENCODER_PREFIX`` (one sha256 covers both; inference builds that encoder instead of the
    shared pretrained one), 16 bits each: what did not train (frozen stages, BatchNorm statistics) in
    bf16, as published, so it stays bit-identical (fp16 would turn the 1 % of the weights below 6.1e-5
    into subnormals); the trained parameters in fp16, whose 8× finer spacing keeps a fine-tuning update
    that bf16 would round away (bf16's spacing near 0.01 is 6e-5, more than a 0.1 × 3e-4 Adam update:
    after 3 steps at the CLI's 3e-4, 93 % of the trained weights differed from the pretrained ones
    in fp16, 69 % in bf16; measured). Such a model is ~235 MB: it belongs in a user's store, never in
    the package.
    """
    vocab = load_vocabulary()
    structures = [{"key": k, "name": vocab.get(k).name} for k in history["keys"]]
    config = {"model": net.cfg.to_dict(), "encoder": ct_weights.NAME, "encoder_sha256": ct_weights.JOINED_SHA256}
    if encoder is not None:
        refuse_packaged_dir(directory)
        config["encoder_init"] = f"fine-tuned from {ct_weights.JOINED_SHA256}"
        config["encoder_trained_stages"] = history.get("encoder_trained_stages", [])
        what = "a 3D decoder trained together with the CT foundation encoder's last stages (fine-tuned). "
    else:
        config["encoder_init"] = "pretrained" if encoder_pretrained else f"random (seed {ct_weights.RANDOM_INIT_SEED})"
        what = "a 3D decoder trained on the frozen CT foundation encoder. "
    card = ModelCard(
        name=name, kind=MODEL_KIND, config=config,
        description="Text-prompted whole-CT segmentation: " + what + ct_weights.CREDIT,
        structures=structures, prompts=[s["name"] for s in structures],
        preprocessing={"orientation": "RAS", "spacing_xyz_mm": [1.5, 1.5, 3.0], "hu_range": [-1000, 1000]},
        training_data=training_data, metrics=metrics or {},
        extra={"history": {k: v for k, v in history.items() if k != "keys"}, "license": "Apache-2.0 (decoder); encoder MIT (Astra / Merlin)"},
    )
    if encoder is None:
        return save_model(net.state_dict(), card, directory, overwrite=overwrite)
    tensors = {k: v.half() if v.is_floating_point() else v for k, v in net.state_dict().items()}
    trained = {k for k, p in encoder.named_parameters() if p.requires_grad}
    for k, v in encoder.state_dict().items():
        if v.is_floating_point():
            v = v.half() if k in trained else v.to(torch.bfloat16)
        tensors[ct_weights.ENCODER_PREFIX + k] = v
    return save_model(tensors, card, directory, fp16=False, overwrite=overwrite)


def refuse_packaged_dir(directory: str | Path | None) -> None:
    """A model with a fine-tuned encoder (~235 MB) may not be written into the package's ``weights/``
    folder (it would end up in the repository and every wheel); the user's store is its place."""
    if directory is not None and Path(directory).resolve().is_relative_to(PACKAGED_DIR.resolve()):
        raise InputError(
            f"{directory}: a model with a fine-tuned encoder is ~235 MB and goes to the user's model store "
            "(leave out --output-dir) or a folder outside the package, not into medfoundcore/weights"
        )


def train_ct_from_cases(
    refs: Sequence, cfg: CTTrainConfig, name: str, workdir: str | Path, *, feature_cache: str | Path | None = None,
    output_dir: str | Path | None = None, base_model: str | None = None, device: str = "cpu",
    finetune_backbone: str = "off", progress: ProgressCallback | None = None, cancel: CancelToken | None = None,
) -> Path:
    """What ``medfound train-seg --model ct`` does: cache the frozen encoder's features of every CT
    case (resumable), train the decoder on ``device`` (from ``base_model``'s weights when fine-tuning),
    ship it.

    ``finetune_backbone`` (``auto``: on exactly when ``device`` is CUDA, :func:`finetune_backbone_on`)
    trains the encoder's last stages too (:func:`finetune_encoder`), starting from ``base_model``'s
    fine-tuned encoder when it has one, and the model carries that encoder. Without it the decoder
    trains on the cache, i.e. on the pretrained encoder's features, so the model runs on the
    pretrained encoder even when ``base_model`` had a fine-tuned one (its decoder is the start).
    """
    from .ct_features import cache_cases

    started = time.monotonic()
    finetune = finetune_backbone_on(finetune_backbone, device)
    if finetune:
        refuse_packaged_dir(output_dir)  # before an hour of training, not after
    ct = [r for r in refs if r.modality == "CT"]
    if not ct:
        raise InputError("--model ct trains on CT cases only, and none of the given cases is a CT")
    cache_root = Path(feature_cache) if feature_cache else Path(workdir) / "features"
    cases = cache_cases(ct, cache_root, device=device, progress=progress, cancel=cancel)
    init = base_encoder = None
    if base_model:
        state, base = load_base_model(base_model, MODEL_KIND, "ct", "a CT model such as ct-v1")
        cfg.model = CTSegmenterConfig.from_dict(base.config["model"])
        init, base_encoder = ct_weights.split_encoder_state(state)
    encoder = finetune_encoder(base_encoder, cfg.encoder_train_from) if finetune else None
    if cfg.max_minutes is not None:
        cfg.max_minutes = max(0.0, cfg.max_minutes - (time.monotonic() - started) / 60)
    net, history = train_ct_segmenter(cases, workdir, cfg, init=init, encoder=encoder, device=device, progress=progress, cancel=cancel)
    history["minutes_with_caching"] = round((time.monotonic() - started) / 60, 2)
    data = {"cases": [c.case_id for c in cases], "subjects": sorted({c.meta["subject"] for c in cases}), "base_model": base_model, "config": cfg.to_dict()}
    return ship(net, history, name, output_dir, training_data=data, overwrite=output_dir is not None, encoder=encoder)
