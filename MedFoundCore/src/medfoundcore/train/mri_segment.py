"""Training ``mri-v1`` (``models.mri_segmenter``): text-prompted MRI segmentation at a 1 mm working grid.

Every case goes onto an axis-aligned RAS grid of 1 mm (``preprocess.encoder_input``: any orientation,
intensities from the 0.5–99.5 percentiles onto [0, 1]). Each step draws crops, and every trained
structure is a prompt of every crop, with one of three targets:
- labelled in the case: its mask (unions included: "hippocampus" = head + body, "tumor core", "brain tumor");
- known to be absent (:data:`ABSENT_WHERE_LABELLED`: a data set that labels the hippocampus is of
  subjects without brain tumours, a cervical cord crop holds no hippocampus): an empty mask;
- neither: not supervised (a BraTS brain has a hippocampus nobody labelled).
Plus ``decoys`` untrained structures of distant body regions (liver for a brain), text path only,
with empty targets: "liver" on a brain MRI must come back empty.

Cheap augmentation: left-right flips (never anterior-posterior: that is what tells the hippocampal head
from its body), random gamma and contrast, and intensity inversion (T1 vs T2: a cord is bright on one
and dark on the other).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..device import autocast
from ..errors import InputError
from ..models.mri_segmenter import MODEL_KIND, MRISegmenterConfig, MRITextSegmenter, build_mri_segmenter
from ..models.text_query import with_new_keys
from ..preprocess import encoder_input, pad_randomly
from ..progress import CancelToken, ProgressCallback, check, report
from ..registry import ModelCard, save_model
from ..vocabulary import Vocabulary, load_vocabulary, structure_values
from .ct_segment import _lr, dice_loss, text_table
from .loop import load_base_model, log_loss, optimiser_step, resume, save_loop_checkpoint, start_run

SPACING_XYZ = (1.0, 1.0, 1.0)
TUMOUR = ("brain_tumor", "tumor_core", "tumor_necrosis", "peritumoral_edema", "non_enhancing_tumor", "enhancing_tumor")
HIPPOCAMPUS = ("hippocampus", "hippocampus_anterior", "hippocampus_posterior")
#: A case that labels the key is known NOT to hold these structures (what each data set's subjects are).
ABSENT_WHERE_LABELLED: dict[str, tuple[str, ...]] = {
    "hippocampus": TUMOUR + ("spinal_cord",),  # MSD Task04: adults without brain tumours, brain crops
    "grey_matter": TUMOUR,  # the MNI152 template: a healthy population average
    "spinal_cord": TUMOUR + HIPPOCAMPUS,  # cervical cord crops
}


@dataclass
class MRITrainConfig:
    """Recipe; ``max_minutes`` ends training by the clock (warm-up and cosine decay follow it)."""

    steps: int = 20000
    max_minutes: float | None = None
    lr: float = 2e-3
    batch_size: int = 2
    crop_zxy: tuple[int, int, int] = (40, 40, 56)
    foreground_fraction: float = 0.7
    decoys: int = 2
    invert_probability: float = 0.2
    checkpoint_every: int = 100
    seed: int = 0
    structures: list[str] | None = None
    model: MRISegmenterConfig = field(default_factory=MRISegmenterConfig)

    def to_dict(self) -> dict:
        return {**asdict(self), "crop_zxy": list(self.crop_zxy), "model": self.model.to_dict()}


@dataclass
class MRICase:
    """One case on the working grid: image in [0, 1] and labels as ``(Z, X, Y)`` arrays."""

    case_id: str
    subject: str
    group: str
    image: np.ndarray
    labels: np.ndarray
    values: dict[str, list[int]]
    absent: list[str]
    decoys: list[str]
    where: dict[str, np.ndarray] = field(default_factory=dict, repr=False)  # voxels of each key, filled on first use

    def voxels(self, key: str) -> np.ndarray:
        if key not in self.where:
            self.where[key] = np.argwhere(np.isin(self.labels, self.values[key])).astype(np.int32)
        return self.where[key]


def prepare_case(ref, vocab: Vocabulary, group: str | None = None) -> MRICase:
    """Load a case (``CaseRef`` or loaded ``Case``) onto the 1 mm RAS working grid."""
    case = ref.load() if hasattr(ref, "load") else ref
    image, labels, _ = encoder_input(case.image, case.labels, "MRI", SPACING_XYZ)
    values = structure_values(case.names, vocab, None)
    absent = sorted({a for k in values for a in ABSENT_WHERE_LABELLED.get(k, ())} - set(values))
    regions = {r for k in values for r in vocab.get(k).regions}
    decoys = sorted(s.key for s in vocab.distant_from(regions))
    return MRICase(case.case_id, case.subject, group or _group(case), image, labels, values, absent, decoys)


def _group(case) -> str:
    """Cases are balanced by data set: the folder the image came from, or the case id's stem."""
    source = case.meta.get("dataset") or case.meta.get("source_dir")
    return str(source) if source else case.case_id.rstrip("0123456789_")


def group_weights(cases: Sequence[MRICase]) -> list[float]:
    """:func:`dataset_weights` of the cases' data sets and what each teaches."""
    return dataset_weights([c.group for c in cases], [set(c.values) for c in cases])


def dataset_weights(groups: Sequence[str], taught: Sequence[set[str]]) -> list[float]:
    """Sampling weight per case: each data set (``groups[i]``) is drawn in proportion to
    √(structures it teaches) × (1 + log10(its cases)), its cases equally. Uniform draws would leave the
    6 BraTS images 1 crop in 28 beside 160 hippocampus cases; weighting by structures alone would give
    the 160 hippocampus cases as many crops as one cord case."""
    members: dict[str, list[int]] = {}
    for i, group in enumerate(groups):
        members.setdefault(group, []).append(i)
    weights = [0.0] * len(groups)
    for group_members in members.values():
        keys = set().union(*(taught[i] for i in group_members))
        share = max(1, len(keys)) ** 0.5 * (1 + math.log10(len(group_members)))
        for i in group_members:
            weights[i] = share / len(group_members)
    return weights


def _crop(case: MRICase, crop: Sequence[int], rng: random.Random, foreground: float) -> tuple[np.ndarray, np.ndarray]:
    """A crop of ``crop`` voxels, centred on a labelled voxel with probability ``foreground``; a case
    smaller than the crop lands at a random place in it (``preprocess.pad_randomly``: trained with padding
    at the end only, mri-v1 scored 0.836 / 0.823 on fold 0's 40 held-out hippocampus cases vs 0.874 /
    0.860 when inference padded them the same way; docs/mri.md)."""
    (image, labels), before = pad_randomly((case.image, case.labels), crop, lambda n: rng.randint(0, n))
    centre = None
    if rng.random() < foreground and case.values:
        where = case.voxels(rng.choice(sorted(case.values)))
        if len(where):
            centre = where[rng.randrange(len(where))] + np.asarray(before)
    starts = []
    for axis, (size, c) in enumerate(zip(image.shape, crop)):
        if centre is None:
            starts.append(rng.randint(0, size - c))
        else:
            starts.append(int(np.clip(centre[axis] - c // 2 + rng.randint(-c // 4, c // 4), 0, size - c)))
    box = tuple(slice(s, s + c) for s, c in zip(starts, crop))
    return image[box], labels[box]


def _augment(image: np.ndarray, labels: np.ndarray, rng: random.Random, invert: float) -> tuple[np.ndarray, np.ndarray]:
    if rng.random() < 0.5:  # left-right (X of the RAS grid); never anterior-posterior or up-down
        image, labels = image[:, ::-1], labels[:, ::-1]
    image = np.clip(image, 0, 1) ** rng.uniform(0.7, 1.5)
    image = np.clip(image * rng.uniform(0.85, 1.15) + rng.uniform(-0.1, 0.1), 0, 1)
    if rng.random() < invert:
        image = 1.0 - image
    return np.ascontiguousarray(image, dtype=np.float32), np.ascontiguousarray(labels)


@dataclass
class Batch:
    image: torch.Tensor  # B 1 Z X Y
    target: torch.Tensor  # B K Z X Y
    weight: torch.Tensor  # B K: 1 supervised, 0 unknown
    keys: list[str]  # K vocabulary keys: the trained ones, then the decoys
    trained: int  # the first ``trained`` keys have a learned query


def sample_batch(cases: Sequence[MRICase], weights: Sequence[float], keys: Sequence[str], cfg: MRITrainConfig, rng: random.Random) -> Batch:
    picks = rng.choices(range(len(cases)), weights, k=cfg.batch_size)
    pool = sorted({d for i in picks for d in cases[i].decoys})
    decoys = rng.sample(pool, min(cfg.decoys, len(pool)))
    all_keys = [*keys, *decoys]
    images, targets, supervised = [], [], []
    for i in picks:
        case = cases[i]
        image, labels = _augment(*_crop(case, cfg.crop_zxy, rng, cfg.foreground_fraction), rng, cfg.invert_probability)
        images.append(image)
        masks = np.zeros((len(all_keys), *image.shape), dtype=np.float32)
        known = np.zeros(len(all_keys), dtype=np.float32)
        for k, key in enumerate(all_keys):
            if key in case.values:
                masks[k] = np.isin(labels, case.values[key])
            known[k] = key in case.values or key in case.absent or key in case.decoys
        targets.append(masks)
        supervised.append(known)
    return Batch(
        torch.from_numpy(np.stack(images)[:, None]), torch.from_numpy(np.stack(targets)), torch.from_numpy(np.stack(supervised)),
        all_keys, len(keys),
    )


def batch_loss(net: MRITextSegmenter, batch: Batch, text: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted BCE + soft Dice (labelled, non-empty targets) on the masks, BCE on per-slice presence."""
    model_keys = [k if i < batch.trained else None for i, k in enumerate(batch.keys)]
    logits, presence = net(batch.image, text, model_keys)
    w = batch.weight
    voxel_w = w[:, :, None, None, None].expand_as(logits)
    bce = F.binary_cross_entropy_with_logits(logits, batch.target, weight=voxel_w, reduction="sum") / voxel_w.sum().clamp_min(1)
    sup = w > 0
    dice = dice_loss(logits[sup][None], batch.target[sup][None]) if sup.any() else logits.sum() * 0
    slices = batch.target.amax(dim=(-1, -2))  # B K Z
    slice_w = w[:, :, None].expand_as(slices)
    isd = F.binary_cross_entropy_with_logits(presence, slices, weight=slice_w, reduction="sum") / slice_w.sum().clamp_min(1)
    loss = bce + dice + 0.5 * isd
    return loss, {"bce": bce.item(), "dice": dice.item(), "presence": isd.item()}


def trained_keys(cases: Sequence[MRICase], structures: Sequence[str] | None) -> list[str]:
    keys = sorted({k for c in cases for k in c.values})
    if structures is not None:
        keys = [k for k in keys if k in structures]
    if not keys:
        raise InputError(f"none of the cases has labels for {', '.join(structures or [])}")
    return keys


def train_mri_segmenter(
    cases: Sequence[MRICase], workdir: str | Path, cfg: MRITrainConfig, *, init: dict[str, torch.Tensor] | None = None,
    device: str = "cpu", progress: ProgressCallback | None = None, cancel: CancelToken | None = None,
) -> tuple[MRITextSegmenter, dict]:
    """Train (or resume from ``workdir``'s newest checkpoint) on ``device``; returns the model and its
    history. ``init`` (a base model's weights, ``cfg.model`` its config) fine-tunes: the base's learned
    queries are kept and a structure it never saw gets a fresh one."""
    if not cases:
        raise InputError("no MRI case to train on")
    workdir, rng = start_run(workdir, cfg.seed)
    dev = torch.device(device)
    vocab = load_vocabulary()
    keys = trained_keys(cases, cfg.structures)
    decoy_keys = sorted({d for c in cases for d in c.decoys})
    table = dict(zip(keys + decoy_keys, text_table(keys + decoy_keys, vocab).to(dev)))
    weights = group_weights(cases)
    base_keys = list(cfg.model.keys) if init is not None else []
    net = build_mri_segmenter(replace(cfg.model, keys=base_keys + [k for k in keys if k not in base_keys]))
    if init is not None:
        net.load_state_dict(with_new_keys(init, net))
    net = net.to(dev)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=1e-4)
    history: dict = {"loss": [], "keys": keys, "cases": [c.case_id for c in cases]}
    step, history, _ = resume(workdir, net, opt, rng, history)
    before = float(history.get("train_minutes", 0.0))
    start = time.monotonic()
    minutes = lambda: before + (time.monotonic() - start) / 60  # noqa: E731
    net.train()
    smooth = None
    while step < cfg.steps:
        check(cancel)
        if cfg.max_minutes is not None and minutes() > cfg.max_minutes:
            break
        batch = sample_batch(cases, weights, keys, cfg, rng)
        batch = replace(batch, image=batch.image.to(dev), target=batch.target.to(dev), weight=batch.weight.to(dev))
        for group in opt.param_groups:
            group["lr"] = _lr(step, cfg, minutes())
        with autocast(dev):  # bf16 on a GPU; fp32 on the CPU
            loss, parts = batch_loss(net, batch, torch.stack([table[k] for k in batch.keys]))
        optimiser_step(net, opt, loss)
        step += 1
        smooth = log_loss(history, step, smooth, loss.item(), parts)
        if step % cfg.checkpoint_every == 0:
            history["train_minutes"] = round(minutes(), 3)
            save_loop_checkpoint(workdir, step, net, opt, history, rng, keep=2)
        report(progress, "training mri-v1", step, cfg.steps, f"loss {smooth:.3f}")
    history["steps_done"] = step
    history["train_minutes"] = round(minutes(), 3)
    return net.eval(), history


def ship(
    net: MRITextSegmenter, history: dict, name: str, directory: str | Path | None, *, training_data: dict,
    metrics: dict | None = None, overwrite: bool = False,
) -> Path:
    """Save the model (safetensors + card) as ``name``: the card lists the structures it knows by name."""
    vocab = load_vocabulary()
    structures = [{"key": k, "name": vocab.get(k).name} for k in history["keys"]]
    card = ModelCard(
        name=name, kind=MODEL_KIND, config={"model": net.cfg.to_dict(), "encoder_init": "random (trained from scratch)"},
        description="Text-prompted MRI segmentation at a 1 mm grid: a residual 3D UNet (MONAI) with a MiniLM text head "
        "and a per-slice presence head, trained from scratch.",
        structures=structures, prompts=[s["name"] for s in structures],
        preprocessing={"orientation": "RAS", "spacing_xyz_mm": list(SPACING_XYZ), "intensity": "0.5-99.5 percentiles -> [0, 1]",
                       "window_zxy": list(history.get("crop_zxy", MRITrainConfig().crop_zxy))},  # fmt: skip
        training_data=training_data, metrics=metrics or {},
        extra={"history": {k: v for k, v in history.items() if k != "keys"}, "license": "Apache-2.0"},
    )
    return save_model(net.state_dict(), card, directory, overwrite=overwrite)


def train_mri_from_cases(
    refs: Sequence, cfg: MRITrainConfig, name: str, workdir: str | Path, *, output_dir: str | Path | None = None,
    base_model: str | None = None, device: str = "cpu", progress: ProgressCallback | None = None, cancel: CancelToken | None = None,
) -> Path:
    """What ``medfound train-seg --model mri`` does: load every MRI case onto the working grid, train
    (from ``base_model``'s weights when fine-tuning, e.g. ``mri-v1`` on a team's own cases), ship."""
    started = time.monotonic()
    mri = [r for r in refs if r.modality == "MRI"]
    if not mri:
        raise InputError("--model mri trains on MRI cases only, and none of the given cases is an MRI")
    init = None
    if base_model:
        init, base = load_base_model(base_model, MODEL_KIND, "mri", "an MRI model such as mri-v1")
        cfg.model = MRISegmenterConfig.from_dict(base.config["model"])
    vocab = load_vocabulary()
    cases = []
    for i, ref in enumerate(mri):
        check(cancel)
        report(progress, "loading MRI cases", i, len(mri))
        cases.append(prepare_case(ref, vocab))
    if cfg.max_minutes is not None:
        cfg.max_minutes = max(0.0, cfg.max_minutes - (time.monotonic() - started) / 60)
    net, history = train_mri_segmenter(cases, workdir, cfg, init=init, device=device, progress=progress, cancel=cancel)
    history["crop_zxy"] = list(cfg.crop_zxy)
    history["minutes_with_loading"] = round((time.monotonic() - started) / 60, 2)
    data = {"cases": [c.case_id for c in cases], "subjects": sorted({c.subject for c in cases}), "base_model": base_model, "config": cfg.to_dict()}
    return ship(net, history, name, output_dir, training_data=data, overwrite=output_dir is not None)
