"""Fine-tuning the pretrained 3D encoder: a 3D UNet head for segmentation, attention pooling for labels.

3DME §V: the pretraining decoder is replaced by a task head and trained with the encoder frozen
(``freeze_encoder=True``, head only, 3DME-S0) or fine-tuned (3DME-S10: 10 epochs). Cases are
resampled to the encoder's spacing and normalised as in pretraining; training crops are centred on
foreground with probability ``foreground_fraction`` (small structures such as the hippocampus would
otherwise be rare). The result is a registry model of kind ``finetuned3d`` that
:func:`predict_segmentation` runs by MONAI sliding-window inference.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.datasets import Case
from ..device import autocast, resolve_device
from ..config import dataclass_from_dict
from ..errors import InputError, ModelError
from ..io import Volume
from ..models.heads import build_task_model3d, ClassificationModel3D, SegmentationModel3D, task_config
from ..preprocess import detect_modality, normalize_intensity, pad_randomly, resample_like, resample_to_spacing
from ..progress import CancelToken, ProgressCallback, check, report
from ..registry import ModelCard, load_model, save_model
from ..models.backbones.encoder3d import load_encoder

MetricsCallback = Callable[[dict[str, Any]], None]
Task = Literal["segmentation", "classification"]
STAGE = "finetune"


@dataclass
class FinetuneConfig:
    """A fine-tuning run. ``spacing_mm``/``crop_size`` default to the encoder's pretraining values."""

    task: Task = "segmentation"
    freeze_encoder: bool = True
    epochs: int = 10
    steps_per_epoch: int | None = None  # default: one pass over the cases (len(cases) / batch_size)
    lr: float = 1e-3
    encoder_lr_scale: float = 0.1
    weight_decay: float = 1e-4
    batch_size: int = 2
    crop_size: int | None = None
    spacing_mm: float | None = None
    foreground_fraction: float = 0.67
    class_from: str = "modality"  # classification target: "modality" or "meta:<key>" of each case
    feature_size: int = 16
    device: str = "auto"
    amp: bool = True
    seed: int = 0
    max_minutes: float | None = None  # wall-clock budget from the call (preparation included); then save and stop

    def __post_init__(self) -> None:
        if self.task not in ("segmentation", "classification"):
            raise InputError(f"finetune config: task must be 'segmentation' or 'classification', got {self.task!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise InputError(f"finetune config: epochs and batch_size must be >= 1, got {self.epochs}, {self.batch_size}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FinetuneConfig:
        return dataclass_from_dict(cls, data, "finetune")


# --------------------------------------------------------------------------------------- samples


@dataclass
class PreparedCase:
    """A case on the model grid: image in [0, 1], labels as contiguous class indices (0 = background)."""

    case_id: str
    image: np.ndarray
    labels: np.ndarray | None
    target: int | None = None
    foreground: np.ndarray | None = field(default=None, repr=False)


def prepare_image(volume: Volume, spacing_mm: float, ct_window: str = "soft_tissue") -> Volume:
    """Normalise (CT window / MRI percentiles → [0, 1]) and resample to isotropic ``spacing_mm``."""
    modality = detect_modality(volume)
    normalised = volume.with_array((normalize_intensity(volume.array, modality, ct_window) / 255.0).astype(np.float32))
    return resample_to_spacing(normalised, spacing_mm)


def class_table(cases: Sequence[Case]) -> dict[int, str]:
    """Label value → name over all cases (the first name seen for a value wins)."""
    table: dict[int, str] = {}
    for case in cases:
        present = {int(v) for v in np.unique(case.labels.array)} - {0}
        for value in sorted(present | set(case.names)):
            table.setdefault(int(value), case.names.get(value, f"label_{value}"))
    if not table:
        raise InputError("fine-tuning for segmentation needs cases with at least one labelled structure")
    return dict(sorted(table.items()))


def _class_target(case: Case, class_from: str) -> str:
    if class_from == "modality":
        return str(case.modality).split()[0].upper()
    if class_from.startswith("meta:"):
        key = class_from[5:]
        if key not in case.meta:
            raise InputError(f"case {case.case_id}: no meta[{key!r}] for the classification target")
        return str(case.meta[key])
    raise InputError(f"finetune config: class_from must be 'modality' or 'meta:<key>', got {class_from!r}")


def _prepare(case: Case, config: FinetuneConfig, spacing: float, window: str, values: list[int], classes: list[str]) -> PreparedCase:
    image = prepare_image(case.image, spacing, window)
    if config.task == "classification":
        return PreparedCase(case.case_id, image.array, None, classes.index(_class_target(case, config.class_from)))
    labels = resample_like(case.labels, image, label=True).array
    lut = np.zeros(int(max(values + [int(labels.max())])) + 1, dtype=np.int64)
    for index, value in enumerate(values, start=1):
        lut[value] = index
    indices = lut[labels.astype(np.int64)]
    return PreparedCase(case.case_id, image.array, indices, None, np.argwhere(indices > 0))


def _random_crop(case: PreparedCase, size: int, rng: np.random.Generator, foreground_fraction: float) -> tuple[np.ndarray, np.ndarray | None]:
    """A ``size``³ crop (a smaller volume zero-padded at random sides: ``preprocess.pad_randomly``),
    centred on foreground when asked."""
    arrays = [a for a in (case.image, case.labels) if a is not None]
    (image, *labels), before = pad_randomly(arrays, (size,) * 3, lambda n: int(rng.integers(n + 1)))
    labels = labels[0] if labels else None
    shape = np.array(image.shape)
    if case.foreground is not None and len(case.foreground) and rng.random() < foreground_fraction:
        centre = case.foreground[rng.integers(len(case.foreground))] + np.asarray(before)
        start = np.clip(centre - size // 2, 0, shape - size)
    else:
        start = np.array([rng.integers(0, s - size + 1) for s in shape])
    box = tuple(slice(int(a), int(a) + size) for a in start)
    return image[box], (labels[box] if labels is not None else None)


# ------------------------------------------------------------------------------------------ train


def finetune(
    cases: Sequence[Case],
    config: FinetuneConfig,
    encoder: str | os.PathLike[str] = "encoder-v1",
    output_name: str | None = None,
    *,
    output_dir: str | os.PathLike[str] | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    on_metrics: MetricsCallback | None = None,
) -> Path:
    """Train a head (and optionally the encoder) on ``cases``; returns the saved model's directory.

    The model goes to the user model store as ``output_name`` (or to ``output_dir``) with a card of
    kind ``finetuned3d`` that records classes, preprocessing and the training metrics.
    """
    started = time.monotonic()
    _check_free(output_name, output_dir)
    cases = [c.load() if hasattr(c, "load") else c for c in cases]
    if not cases:
        raise InputError("fine-tuning needs at least one labelled case")
    torch_device = resolve_device(config.device)
    base, base_card = load_encoder(encoder)
    spacing = float(config.spacing_mm or base_card.preprocessing.get("spacing_mm", 1.0))
    window = str(base_card.preprocessing.get("ct_window", "soft_tissue"))
    crop = int(config.crop_size or base_card.preprocessing.get("crop_size", base.cfg.img_size))
    if crop % base.cfg.patch_size:
        raise InputError(f"finetune: crop size {crop} must be a multiple of the encoder patch size {base.cfg.patch_size}")

    if config.task == "segmentation":
        table = class_table(cases)
        values, names = list(table), list(table.values())
        torch.manual_seed(config.seed)
        model: nn.Module = SegmentationModel3D(base, len(values) + 1, config.freeze_encoder, config.feature_size)
    else:
        names = sorted({_class_target(c, config.class_from) for c in cases})
        values = list(range(len(names)))
        if len(names) < 2:
            raise InputError(f"classification needs at least two classes among the cases, found {names}")
        torch.manual_seed(config.seed)
        model = ClassificationModel3D(base, len(names), config.freeze_encoder)
    prepared = [_prepare(c, config, spacing, window, values, names) for c in cases]
    model.to(torch_device)

    steps_per_epoch = config.steps_per_epoch or max(1, math.ceil(len(prepared) / config.batch_size))
    total = config.epochs * steps_per_epoch
    optimizer = torch.optim.AdamW(_parameter_groups(model, config), weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_cosine(total))
    loss_fn = _loss(config.task)
    rng = np.random.default_rng(config.seed)
    history: list[dict[str, Any]] = []
    model.train()
    for step in range(total):
        check(cancel)
        x, y = _batch(prepared, crop, rng, config, torch_device)
        with autocast(torch_device) if config.amp else contextlib.nullcontext():
            logits = model(x)
        loss = loss_fn(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        record = {"step": step + 1, "epoch": step // steps_per_epoch + 1, "loss": float(loss.detach())}
        history.append(record)
        if on_metrics is not None:
            on_metrics(record)
        report(progress, STAGE, step + 1, total, f"loss {record['loss']:.4f}")
        if config.max_minutes is not None and time.monotonic() - started > 60.0 * config.max_minutes:
            break  # out of budget: keep what was learned
    card = _card(model, config, base_card, encoder, output_name, spacing, crop, window, values, names, cases, history)
    directory = output_dir if output_dir is not None else None
    return save_model(model.state_dict(), card, directory)


def _check_free(output_name: str | None, output_dir: str | os.PathLike[str] | None) -> None:
    """Refuse before training, not after, when the target model already exists (models are never replaced)."""
    from ..registry import WEIGHTS_FILE, user_models_dir

    target = Path(output_dir) if output_dir is not None else (user_models_dir() / output_name if output_name else None)
    if target is not None and (target / WEIGHTS_FILE).exists():
        raise InputError(f"{target}: a model is already stored there; choose another name or delete it first (medfound models delete)")


def _warmup_cosine(total: int) -> Callable[[int], float]:
    """LR multiplier: linear warm-up over 10 % of the steps (at least 1), cosine decay to 1 % after; any ``total``."""
    warmup = max(1, total // 10)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _parameter_groups(model: nn.Module, config: FinetuneConfig) -> list[dict[str, Any]]:
    head = [p for n, p in model.named_parameters() if not n.startswith("encoder.") and p.requires_grad]
    groups = [{"params": head, "lr": config.lr}]
    if not config.freeze_encoder:
        groups.append({"params": list(model.encoder.parameters()), "lr": config.lr * config.encoder_lr_scale})
    return groups


def _loss(task: Task) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if task == "classification":
        return F.cross_entropy
    from monai.losses import DiceCELoss

    dice_ce = DiceCELoss(to_onehot_y=True, softmax=True)
    return lambda logits, target: dice_ce(logits, target[:, None])


def _batch(
    prepared: Sequence[PreparedCase], crop: int, rng: np.random.Generator, config: FinetuneConfig, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    images, targets = [], []
    for _ in range(config.batch_size):
        case = prepared[int(rng.integers(len(prepared)))]
        image, labels = _random_crop(case, crop, rng, config.foreground_fraction)
        images.append(torch.from_numpy(np.ascontiguousarray(image)))
        targets.append(torch.from_numpy(np.ascontiguousarray(labels)) if labels is not None else torch.tensor(case.target))
    return torch.stack(images)[:, None].to(device), torch.stack(targets).to(device)


def _card(
    model: nn.Module,
    config: FinetuneConfig,
    base_card: ModelCard,
    encoder: str | os.PathLike[str],
    output_name: str | None,
    spacing: float,
    crop: int,
    window: str,
    values: list[int],
    names: list[str],
    cases: Sequence[Case],
    history: list[dict[str, Any]],
) -> ModelCard:
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    name = output_name or f"finetuned3d-{config.task}-{stamp}"
    last_epoch = [h["loss"] for h in history if h["epoch"] == history[-1]["epoch"]]
    return ModelCard(
        name=name,
        kind="finetuned3d",
        config=task_config(model),  # type: ignore[arg-type]
        description=f"3DME {config.task} head on {base_card.name} ({'frozen' if config.freeze_encoder else 'fine-tuned'} encoder)",
        structures=[{"value": v, "name": n} for v, n in zip(values, names)],
        preprocessing={"spacing_mm": spacing, "crop_size": crop, "ct_window": window, "intensity": "preprocess.normalize_intensity / 255 -> [0, 1]"},
        training_data={"cases": [c.case_id for c in cases], "base_encoder": base_card.name, "base_encoder_sha256": base_card.sha256},
        metrics={"first_loss": history[0]["loss"], "final_epoch_loss": float(np.mean(last_epoch)), "steps": len(history)},
        extra={"finetune_config": config.to_dict(), "task": config.task, "encoder_arg": str(encoder)},
    )


# -------------------------------------------------------------------------------------- inference


def load_finetuned(name_or_path: str | os.PathLike[str], device: str | torch.device = "auto") -> tuple[nn.Module, ModelCard]:
    """A ``finetuned3d`` model in eval mode on ``device`` with its card."""
    state, card = load_model(name_or_path)
    if card.kind != "finetuned3d":
        raise ModelError(f"model {name_or_path!s} is a {card.kind!r}, not a fine-tuned 3D model (kind 'finetuned3d')")
    model = build_task_model3d(card.config)
    model.load_state_dict(state)
    return model.to(resolve_device(device)).eval(), card


def predict_segmentation(
    model_dir_or_model: str | os.PathLike[str] | tuple[nn.Module, ModelCard],
    volume: Volume,
    *,
    device: str = "auto",
    overlap: float = 0.5,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> Volume:
    """Label map (original label values) on ``volume``'s grid, by Gaussian-weighted sliding windows."""
    from monai.inferers import sliding_window_inference

    torch_device = resolve_device(device)
    if isinstance(model_dir_or_model, tuple):
        model, card = model_dir_or_model
        model = model.to(torch_device).eval()
    else:
        model, card = load_finetuned(model_dir_or_model, torch_device)
    if card.extra.get("task", "segmentation") != "segmentation" or not isinstance(model, SegmentationModel3D):
        raise InputError(f"model {card.name!r} is a classifier; predict_segmentation needs a segmentation model")
    spacing = float(card.preprocessing["spacing_mm"])
    crop = int(card.preprocessing["crop_size"])
    image = prepare_image(volume, spacing, card.preprocessing.get("ct_window", "soft_tissue"))
    x = torch.from_numpy(np.ascontiguousarray(image.array))[None, None].to(torch_device)
    windows = _window_count(image.shape, crop, overlap)
    done = [0]

    def predictor(window: torch.Tensor) -> torch.Tensor:
        check(cancel)
        with autocast(torch_device):
            logits = model(window).float()
        done[0] += window.shape[0]
        report(progress, "predict", done[0], windows)
        return logits

    with torch.inference_mode():
        logits = sliding_window_inference(x, crop, 1, predictor, overlap=overlap, mode="gaussian", padding_mode="constant", cval=0.0)
    indices = logits.argmax(dim=1)[0].cpu().numpy()
    lut = np.array([0] + [int(s["value"]) for s in card.structures])
    values = lut[indices].astype(np.uint16 if lut.max() > 255 else np.uint8)
    labels = resample_like(image.with_array(values), volume, label=True)
    return volume.with_array(labels.array, kind="label", model=card.name)


def _window_count(shape: Sequence[int], crop: int, overlap: float) -> int:
    step = max(1, int(crop * (1 - overlap)))
    return int(np.prod([max(1, math.ceil((max(s, crop) - crop) / step) + 1) for s in shape]))
