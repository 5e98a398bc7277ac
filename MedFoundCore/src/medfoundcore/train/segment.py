"""Training of the text-prompted segmenter (BiomedParse-V §3.5, §5.2) on labelled 3D cases.

Every case is turned once into a stack of preprocessed slices at the model's resolution (intensity
window / percentiles, view selection, in-plane resize). A training sample is one focal slice: its slab
is optionally replaced by a label-conditioned synthetic image, augmented, FVE-encoded, and paired with
several prompts -- structures present in the slice, structures labelled in the case but absent from
this slice, and structures from other body regions (so that the ISD learns that "liver" is never in a
brain MRI). AdamW + warm-up/cosine, atomic checkpoints every N steps, resume after a kill, DDP via
torchrun, bf16/fp16 autocast on CUDA.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.augment import DEFAULT_SCALE_RANGE, SliceAugment
from ..data.datasets import Case, CaseRef
from ..data.synth import synthesize
from ..device import autocast
from ..errors import InputError
from ..preprocess import SLICE_PREPROCESSING_VERSION, context_half, detect_modality, fve_images, model_slices, select_view, training_views
from ..progress import CancelToken, ProgressCallback, check, report
from ..vocabulary import prompt_text, structure_values
from . import distributed
from .checkpoint import (
    checkpoint_path, latest_checkpoint, load_checkpoint, prune_checkpoints, remove_partial_checkpoints, save_checkpoint,
)

MetricsCallback = Callable[[dict[str, float]], None]


@dataclass
class TrainConfig:
    """Everything that defines a training run; stored in the checkpoint and the model card."""

    preset: str = "tiny"
    image_size: int = 128
    fve_k: int | None = None  # FVE order; None: 1 from scratch, the base model's when fine-tuning
    use_isd: bool = True
    isd_stop_gradient: bool = True
    steps: int = 1000
    epochs: float | None = None  # if set, overrides ``steps``: one epoch = every training slice once
    lr: float = 3e-4
    weight_decay: float = 0.05
    warmup_steps: int = 50
    batch_size: int = 8
    prompts_per_image: int = 4
    positive_slice_fraction: float = 0.8
    synth_fraction: float = 0.25
    augment: bool = True
    # per-axis anatomy scaling (augment.DEFAULT_SCALE_RANGE); widen it when test scanners' fields of view
    # differ from the training images' (a model trained on one 366 mm field fails on a 500 mm one)
    scale_range: tuple[float, float] = DEFAULT_SCALE_RANGE
    device: str = "auto"
    checkpoint_every: int = 100
    max_minutes: float | None = None  # wall-clock budget: stop early and still save the model
    log_every: int = 10
    seed: int = 0
    base_model: str | None = None  # None: from scratch; "default" or a model name/path: fine-tune it
    structures: list[str] | None = None  # restrict training to these vocabulary keys
    ct_window: str = "soft_tissue"
    all_views: bool = True  # paper §5.2: near-isotropic volumes also train on their other two views

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


# ------------------------------------------------------------------------------------ case preparation
@dataclass
class PreparedCase:
    """One case in one slicing view at model resolution: uint8 image stack and label stack (K, S, S)."""

    case_id: str
    modality: str
    image: np.ndarray
    labels: np.ndarray
    values: dict[str, np.ndarray]  # structure key -> label values whose union is that structure
    presence: dict[str, np.ndarray]  # structure key -> (K,) bool, structure present in slice
    regions: set[str]
    lateral: bool
    group: str
    foreign: list[str] = field(default_factory=list)  # keys from other body regions: known absent

    @property
    def keys(self) -> list[str]:
        return sorted(self.values)


def prepare_case(case: Case, config: TrainConfig, vocab, allowed: set[str] | None) -> list[PreparedCase]:
    """Preprocess one case into model-resolution stacks, one per training view."""
    values = structure_values(case.names, vocab, allowed)
    if not values:
        return []
    modality = case.modality or detect_modality(case.image)
    out = []
    views = training_views(case.image.shape, case.image.spacing) if config.all_views else [select_view(case.image.shape)]
    for axis in views:
        image = model_slices(case.image.array, axis, modality, config.image_size, config.ct_window)
        labels = model_slices(case.labels.array, axis, None, config.image_size, label=True)
        presence = {k: np.isin(labels, v).any(axis=(1, 2)) for k, v in values.items()}
        out.append(
            PreparedCase(
                case_id=case.case_id,
                modality=modality,
                image=np.round(image).astype(np.uint8),
                labels=labels,
                values={k: np.asarray(v) for k, v in values.items()},
                presence=presence,
                regions={_region(vocab, k) for k in values},
                lateral=any(_is_lateral(vocab, k) for k in values),
                group=str(case.meta.get("dataset") or case.meta.get("group") or ""),
            )
        )
    return out


def _region(vocab, key: str) -> str:
    return vocab.get(key).region


def _is_lateral(vocab, key: str) -> bool:
    return vocab.get(key).laterality is not None


def assign_foreign(prepared: list[PreparedCase]) -> None:
    """Give each case the structures of other cases whose body regions it does not share at all."""
    for case in prepared:
        foreign = set()
        for other in prepared:
            if not (other.regions & case.regions):
                foreign.update(other.values)
        case.foreign = sorted(foreign - set(case.values))


# ------------------------------------------------------------------------------------ sampling
@dataclass
class Batch:
    images: torch.Tensor  # (B, 3, S, S) in [0, 255]
    prompts: torch.Tensor  # (B, P) long indices into the structure list
    targets: torch.Tensor  # (B, P, S, S) float
    present: torch.Tensor  # (B, P) float


class SampleBuilder:
    """Draws training samples (focal slice + prompts + targets) from prepared cases."""

    def __init__(self, cases: list[PreparedCase], keys: list[str], config: TrainConfig) -> None:
        self.cases, self.config = cases, config
        self.index = {k: i for i, k in enumerate(keys)}
        self.weights = _case_weights(cases)
        self.prevalence = structure_prevalence(cases, self.weights)
        self.augment = SliceAugment(config.image_size, scale_range=tuple(config.scale_range)) if config.augment else None
        self.half = context_half(config.fve_k)

    def batch(self, rng: np.random.Generator) -> Batch:
        """``batch_size`` samples stacked into tensors."""
        samples = [self.sample(rng) for _ in range(self.config.batch_size)]
        return Batch(*(torch.from_numpy(np.stack(x)) for x in zip(*samples)))

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
        case = self.cases[rng.choice(len(self.cases), p=self.weights)]
        focal = self._focal(case, rng)
        keys = self._prompts(case, focal, rng)
        idx = np.clip(np.arange(focal - self.half, focal + self.half + 1), 0, case.image.shape[0] - 1)
        slab = case.image[idx].astype(np.float32)
        if rng.random() < self.config.synth_fraction:
            slab = synthesize(slab, case.labels[idx], rng)
        focal_labels = case.labels[focal]
        masks = np.stack([np.isin(focal_labels, case.values[k]) if k in case.values else np.zeros_like(focal_labels, bool) for k in keys]).astype(np.float32)
        if self.augment is not None:
            slab, masks = self.augment(slab, masks, rng, allow_lr_flip=not case.lateral)
        image = fve_images(slab, self.half, self.half + 1, self.config.fve_k)[0]
        present = (masks.reshape(len(keys), -1).max(axis=1) > 0).astype(np.float32)
        return image.astype(np.float32), np.array([self.index[k] for k in keys]), masks, present

    def _focal(self, case: PreparedCase, rng: np.random.Generator) -> int:
        if rng.random() < self.config.positive_slice_fraction:
            any_present = np.any(np.stack(list(case.presence.values())), axis=0)
            candidates = np.flatnonzero(any_present)
            if candidates.size:
                return int(rng.choice(candidates))
        return int(rng.integers(case.image.shape[0]))

    def _prompts(self, case: PreparedCase, focal: int, rng: np.random.Generator) -> list[str]:
        """Half positives (if any), the rest absent: labelled-but-not-here first, then other regions."""
        p = self.config.prompts_per_image
        positives = [k for k in case.keys if case.presence[k][focal]]
        absent = [k for k in case.keys if not case.presence[k][focal]]
        chosen = list(rng.permutation(positives)[: max(1, (p + 1) // 2)]) if positives else []
        pool_local = list(rng.permutation(absent))
        pool_foreign = self._foreign_order(case.foreign, rng)
        while len(chosen) < p and (pool_local or pool_foreign):
            take_foreign = pool_foreign and (not pool_local or rng.random() < 0.5)
            chosen.append((pool_foreign if take_foreign else pool_local).pop())
        while len(chosen) < p:  # tiny vocabularies: repeat what we have
            chosen.append(chosen[int(rng.integers(len(chosen)))])
        return [str(k) for k in chosen]

    def _foreign_order(self, foreign: list[str], rng: np.random.Generator) -> list[str]:
        """Foreign structures in a random order that puts the most often *present* ones first (popped
        from the end), so a structure seen in many slices is also the one most often shown absent.
        Uniform sampling lets the ISD learn a text prior ("liver" -> present) instead of looking."""
        if not foreign:
            return []
        p = np.array([self.prevalence.get(k, 0.0) for k in foreign]) + 1e-3
        order = rng.choice(len(foreign), size=len(foreign), replace=False, p=p / p.sum())
        return [foreign[i] for i in order[::-1]]


def structure_prevalence(cases: list[PreparedCase], weights: np.ndarray) -> dict[str, float]:
    """Probability that a sampled slice shows each structure (case sampling weight x slice fraction)."""
    out: dict[str, float] = {}
    for case, w in zip(cases, weights):
        for key, present in case.presence.items():
            out[key] = out.get(key, 0.0) + float(w) * float(present.mean())
    return out


def _case_weights(cases: list[PreparedCase]) -> np.ndarray:
    """Sampling weights: each data group (source folder) gets a share growing with the square root of
    the number of structures it teaches, split evenly among its cases, so that 200 head-and-neck CTs
    do not drown the one abdominal CT that teaches a dozen organs."""
    members: dict[str, list[int]] = {}
    for i, c in enumerate(cases):
        members.setdefault(c.group, []).append(i)
    weights = np.zeros(len(cases))
    for group, idx in members.items():
        n_structures = len({k for i in idx for k in cases[i].values})
        weights[idx] = np.sqrt(n_structures) / len(idx)
    return weights / weights.sum()


# ------------------------------------------------------------------------------------ training loop
def cosine_lambda(warmup: int, total: int) -> Callable[[int], float]:
    """Linear warm-up then cosine decay to 5 % of the base learning rate."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def _build_model(config: TrainConfig):
    from ..models.prompted_segmenter import SegmenterConfig, build_segmenter

    if config.base_model:
        from ..registry import load_model

        state, card = load_model(config.base_model)
        model_cfg = SegmenterConfig.from_dict(card.config["model"] if "model" in card.config else card.config)
        model = build_segmenter(model_cfg)
        model.load_state_dict(state)
        if config.fve_k is not None:  # k changes only how slices are packed into the 3 input channels
            model_cfg = replace(model_cfg, fve_k=config.fve_k)
        return model, model_cfg, card
    model_cfg = SegmenterConfig(
        preset=config.preset,
        image_size=config.image_size,
        fve_k=1 if config.fve_k is None else config.fve_k,
        use_isd=config.use_isd,
        isd_stop_gradient=config.isd_stop_gradient,
    )
    return build_segmenter(model_cfg), model_cfg, None


def _resolve_cases(cases: Sequence[Case | CaseRef], config: TrainConfig, vocab, progress, cancel) -> list[PreparedCase]:
    allowed = set(config.structures) if config.structures else None
    prepared: list[PreparedCase] = []
    for i, item in enumerate(cases):
        check(cancel)
        case = item.load() if isinstance(item, CaseRef) else item
        prepared.extend(prepare_case(case, config, vocab, allowed))
        report(progress, "preparing cases", i + 1, len(cases), case.case_id)
    if not prepared:
        raise InputError("no training case has a label that maps to a known structure (see structures.json)")
    assign_foreign(prepared)
    return prepared


def _dice(logits: torch.Tensor, targets: torch.Tensor, present: torch.Tensor) -> float:
    """Mean hard Dice over prompts whose structure is in the slice (a live training signal)."""
    pred = (logits.detach().float() > 0).float()
    inter = (pred * targets).flatten(2).sum(-1)
    denom = pred.flatten(2).sum(-1) + targets.flatten(2).sum(-1)
    dice = (2 * inter + 1e-6) / (denom + 1e-6)
    mask = present > 0
    return float(dice[mask].mean()) if mask.any() else float("nan")


def train_segmenter(
    cases: Sequence[Case | CaseRef],
    config: TrainConfig,
    output_name: str,
    work_dir: str | Path,
    *,
    output_dir: str | Path | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    on_metrics: MetricsCallback | None = None,
) -> Path:
    """Train (or fine-tune, with ``config.base_model``) and register a prompted segmenter.

    Resumes from the newest checkpoint in ``work_dir``. Returns the model directory (the user model store
    under ``output_name``, or ``output_dir`` when given). Cancelling raises :class:`Cancelled` and leaves
    the last checkpoint intact, so that a later call resumes.
    """
    from ..registry import save_model
    from ..text import TextEncoder
    from ..vocabulary import load_vocabulary

    work_dir = Path(work_dir)
    dist = distributed.setup(config.device)
    torch.manual_seed(config.seed + dist.rank)
    vocab = load_vocabulary()
    model, model_cfg, base_card = _build_model(config)
    config = replace(config, image_size=model_cfg.image_size, fve_k=model_cfg.fve_k)
    check_resumable(work_dir, config)
    if dist.is_main:
        remove_partial_checkpoints(work_dir)
    prepared = _resolve_cases(cases, config, vocab, progress, cancel)
    data = data_digest(prepared)
    check_same_data(work_dir, data)
    keys = sorted({k for c in prepared for k in c.values} | {k for c in prepared for k in c.foreign})
    texts = [prompt_text(vocab.get(k)) for k in keys]
    table = TextEncoder().encode(texts).float().to(dist.device)
    loop = _Loop(model, distributed.wrap(model.to(dist.device), dist), SampleBuilder(prepared, keys, config), table, config, dist)
    loop.total = _total_steps(config, prepared)
    loop.data = data
    loop.start(work_dir)
    resumed_at = loop.step
    history = loop.run(work_dir, progress, cancel, on_metrics)
    directory = None
    finished = _finished_model(output_name, output_dir) if loop.step == resumed_at else None
    if finished is not None:  # a resume of a finished run: its model and card stay as they are
        directory = finished
    elif dist.is_main:
        card = _make_card(output_name, model_cfg, config, vocab, prepared, texts, base_card, history, loop)
        directory = save_model(model.state_dict(), card, output_dir, overwrite=output_dir is not None)
    distributed.barrier()
    distributed.cleanup()
    return Path(directory) if directory else Path(output_dir or ".")


class _Loop:
    """The optimisation loop: AdamW + warm-up/cosine, autocast, atomic checkpoints, time budget."""

    def __init__(self, model, net, builder: SampleBuilder, table: torch.Tensor, config: TrainConfig, dist) -> None:
        self.model, self.net, self.builder, self.table, self.config, self.dist = model, net, builder, table, config, dist
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        self.total = config.steps
        self.step = 0
        self.data = ""
        self.history: list[dict[str, float]] = []  # every logged step of the run, across resumes

    def start(self, work_dir: Path) -> None:
        """Schedule over ``total`` steps and resume from the newest checkpoint, if any."""
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, cosine_lambda(self.config.warmup_steps, self.total))
        self.step, self.history = _resume(work_dir, self.model, self.optimizer, self.scheduler, self.dist.device)

    def run(self, work_dir: Path, progress, cancel, on_metrics) -> list[dict[str, float]]:
        config, history = self.config, self.history
        started = time.monotonic()
        deadline = started + config.max_minutes * 60 if config.max_minutes else float("inf")
        self.net.train()
        while self.step < self.total and time.monotonic() < deadline:
            check(cancel)
            metrics = self.one_step()
            if self.step % config.log_every == 0 or self.step == self.total:
                metrics = {"step": self.step, **metrics(), "seconds": round(time.monotonic() - started, 2)}
                history.append(metrics)
                if on_metrics is not None and self.dist.is_main:
                    on_metrics(metrics)
            report(progress, "training", self.step, self.total)
            last = self.step == self.total or time.monotonic() >= deadline
            if self.dist.is_main and (self.step % config.checkpoint_every == 0 or last):
                _save(work_dir, self.step, self.model, self.optimizer, self.scheduler, config, self.data, history)
        return history

    def one_step(self) -> Callable[[], dict[str, float]]:
        """One optimisation step; returns a function computing its metrics (only called when logging)."""
        from ..losses.segmentation import segmentation_loss

        device = self.dist.device
        batch = self.builder.batch(np.random.default_rng([self.config.seed, self.dist.rank, self.step]))
        images, targets, present = (t.to(device) for t in (batch.images, batch.targets, batch.present))
        with autocast(device):
            output = self.net(images, self.table[batch.prompts.to(device)])
        losses = segmentation_loss(_float_output(output), targets)
        self.optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        return lambda: {
            "loss": float(losses["total"].detach()),
            "loss_mask": float(losses["mask"].detach()),
            "loss_presence": float(losses["presence"].detach()),
            "dice": _dice(output.mask_logits, targets, present),
            "lr": float(self.scheduler.get_last_lr()[0]),
        }


def _make_card(name, model_cfg, config, vocab, prepared, texts, base_card, history, loop):
    from ..registry import ModelCard

    keys = {k for c in prepared for k in c.values}
    if base_card is not None:  # a fine-tuned model still knows what its base knew
        keys |= {s["key"] for s in base_card.structures}
    return ModelCard(
        name=name,
        kind="prompted-segmenter",
        config={"model": model_cfg.to_dict(), "train": config.to_dict()},
        description=f"BiomedParse-V style text-prompted segmenter ({model_cfg.preset}), trained with medfound train-seg",
        structures=[_structure_entry(vocab.get(k)) for k in sorted(keys)],
        prompts=texts,
        preprocessing=_preprocessing(config),
        training_data=_training_data(prepared, base_card),
        metrics={"train_final": history[-1] if history else {}, "train_history": history[-20:], "steps_done": loop.step, "steps_planned": loop.total},
    )


def _float_output(output):
    """Losses in fp32 even when the forward pass ran under autocast."""
    for name in ("mask_logits", "presence_logits", "edge_logits"):
        value = getattr(output, name, None)
        if value is not None and value.dtype != torch.float32:
            setattr(output, name, value.float())
    return output


def _total_steps(config: TrainConfig, prepared: list[PreparedCase]) -> int:
    if config.epochs is None:
        return int(config.steps)
    slices = sum(c.image.shape[0] for c in prepared)
    return max(1, int(round(config.epochs * slices / config.batch_size)))


def _save(work_dir: Path, step: int, model, optimizer, scheduler, config: TrainConfig, data: str = "", history=()) -> None:
    save_checkpoint(
        checkpoint_path(work_dir, step),
        step=step,
        model=model.state_dict(),
        optimizer=optimizer.state_dict(),
        scheduler=scheduler.state_dict(),
        config=config.to_dict(),
        data=data,
        history=list(history)[-100:],  # bounded: the card keeps the last 20
    )
    prune_checkpoints(work_dir, keep=2)


# Fields a resumed run may change: how long it runs, how often it reports, where it runs.
_RESUME_MAY_CHANGE = {"steps", "epochs", "max_minutes", "checkpoint_every", "log_every", "device"}


def check_resumable(work_dir: Path, config: TrainConfig) -> None:
    """Refuse to continue another run's checkpoint: resuming with a different learning rate, seed or
    data recipe would silently mix two runs (and report the mixture under the new settings)."""
    path = latest_checkpoint(work_dir)
    if path is None:
        return
    saved = TrainConfig.from_dict(load_checkpoint(path)["config"]).to_dict()
    wanted = config.to_dict()
    changed = [
        f"{key} {saved[key]!r} -> {wanted[key]!r}"
        for key in wanted
        if key not in _RESUME_MAY_CHANGE and _comparable(saved[key]) != _comparable(wanted[key])
    ]
    if changed:
        raise InputError(
            f"{work_dir} holds checkpoint {path.name} of a different run ({'; '.join(changed)}). "
            "Start the new run under another name or work directory, or resume with the run's own settings."
        )


def _comparable(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value


def _resume(work_dir: Path, model, optimizer, scheduler, device) -> tuple[int, list[dict[str, float]]]:
    """Step and metrics history of the newest checkpoint (0 and [] without one), its state loaded."""
    path = latest_checkpoint(work_dir)
    if path is None:
        return 0, []
    state = load_checkpoint(path, map_location=device)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return int(state["step"]), list(state.get("history", []))


def data_digest(prepared: list[PreparedCase]) -> str:
    """sha256 of the case list (ids and grid sizes): what a resumed run must train on again."""
    import hashlib
    import json

    cases = sorted((c.case_id, list(c.image.shape)) for c in prepared)
    return hashlib.sha256(json.dumps(cases).encode()).hexdigest()


def check_same_data(work_dir: Path, digest: str) -> None:
    """Refuse to continue a run on other cases: its model card would list data it was not trained on."""
    path = latest_checkpoint(work_dir)
    if path is None:
        return
    saved = load_checkpoint(path).get("data", "")
    if saved and saved != digest:
        raise InputError(
            f"{work_dir} holds checkpoint {path.name} of a run on different training data (case list hash "
            f"{saved[:12]} there, {digest[:12]} now). Resume with the same cases, or start a new run under another name or work directory."
        )


def _finished_model(name: str, output_dir: str | Path | None) -> Path | None:
    """The stored model of a run that had nothing left to train (None: there is none yet)."""
    from ..registry import CARD_FILE, user_models_dir

    target = Path(output_dir) if output_dir is not None else user_models_dir() / name
    return target if (target / CARD_FILE).exists() else None


def _structure_entry(structure) -> dict[str, Any]:
    return {"key": structure.key, "name": structure.name, "color": list(getattr(structure, "color", []) or [])}


def _preprocessing(config: TrainConfig) -> dict[str, Any]:
    return {
        "version": SLICE_PREPROCESSING_VERSION,
        "ct_window": config.ct_window,
        "mri": "clip 0.5-99.5 percentiles",
        "scale": "[0, 255] -> /255",
        "view": "preprocess.select_view",
        "image_size": config.image_size,
        "fve_k": config.fve_k,
    }


def _training_data(prepared: list[PreparedCase], base_card) -> dict[str, Any]:
    ids = sorted({c.case_id for c in prepared})
    data: dict[str, Any] = {
        "cases": ids,
        "n_cases": len(ids),
        "n_slices": int(sum(c.image.shape[0] for c in prepared)),
        "groups": sorted({c.group for c in prepared}),
    }
    if base_card is not None:
        data["fine_tuned_from"] = base_card.name
    return data
