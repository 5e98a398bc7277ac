"""Self-supervised pretraining of the 3DME encoder on unlabelled volumes (3DME §IV).

Any folders of NIfTI/NRRD/MHA/DICOM volumes are sampled as random crops resampled to ``spacing_mm``
(volumes smaller than a crop are upsampled along the short axes; crops with more than 90 %
background are redrawn), masked by one of three schemes — 3DME progressive blocks, MiM nested
levels with cross-level InfoNCE, NEMESIS/MAESIL plane/axis dual masking with noise — and
reconstructed by the masked autoencoder under the 3DME loss (0.7 masked MSE + 0.2 semantic
consistency + 0.1 Sobel edge Dice). Runs on one CPU/GPU or under ``torchrun`` (DDP, gloo on CPU,
NCCL on CUDA); checkpoints are atomic and a killed run resumes bit-for-bit on CPU because every crop
and mask is a pure function of (seed, rank, sample index). Reconstruction PSNR on held-out volumes
is logged during training and the encoder is exported as a registry model (card kind ``encoder3d``).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
from torch import nn

from ..device import autocast
from ..config import dataclass_from_dict
from ..errors import InputError
from ..io import READ_SUFFIXES, atomic_path, load_volume
from ..losses.ssl import ThreeDMELoss, frozen_copy
from ..masking.dual_axis import dual_mask, noise_enhanced
from ..masking.mim import cross_level_infonce, generate_mim_levels, multi_level_reconstruction, token_mask
from ..masking.progressive import DEFAULT_STAGES, ProgressiveMaskingSchedule
from ..models.backbones.encoder3d import DualBranchEncoder3D, Encoder3DConfig, MaskedAutoencoder3D, build_mae3d
from ..preprocess import detect_modality, normalize_intensity
from ..progress import CancelToken, ProgressCallback, check, report
from ..registry import ModelCard, save_model
from . import distributed
from .checkpoint import checkpoint_path, latest_checkpoint, load_checkpoint, prune_checkpoints, save_checkpoint

MetricsCallback = Callable[[dict[str, Any]], None]
MASKING_SCHEMES = ("progressive", "mim", "dual_axis")
LABEL_NAME_HINTS = ("_lab.", "_seg.", "label", "mask", "_gt.")
STAGE = "pretrain"


# ------------------------------------------------------------------------------------------ config


@dataclass
class PretrainConfig:
    """Everything that defines a pretraining run; stored in checkpoints and in the exported card.

    Defaults follow the paper (128³ crops at 1 mm, progressive masking, loss weights 0.7/0.2/0.1);
    ``training/`` holds the CPU-sized and GPU-sized variants.
    """

    encoder: str = "paper"
    encoder_overrides: dict[str, Any] = field(default_factory=dict)
    crop_size: int = 128
    spacing_mm: float = 1.0
    masking: str = "progressive"
    masking_options: dict[str, Any] = field(default_factory=dict)
    steps: int = 10000
    batch_size: int = 2
    lr: float = 1.5e-4
    weight_decay: float = 0.05
    warmup_steps: int = 100
    grad_clip: float = 1.0
    loss_weights: tuple[float, float, float] = (0.7, 0.2, 0.1)
    semantic: str = "self"  # "self": φ = frozen copy of the encoder, refreshed; "none": no L_sem
    semantic_refresh_every: int = 500
    seed: int = 0
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    eval_every: int = 500
    holdout: int = 2
    eval_crops: int = 4
    max_background: float = 0.9
    ct_window: str = "soft_tissue"
    device: str = "auto"
    amp: bool = True
    grad_checkpointing: bool = False
    num_workers: int = 0
    time_limit_minutes: float | None = None  # stop cleanly (checkpoint + export) after this wall time

    def __post_init__(self) -> None:
        self.loss_weights = tuple(float(w) for w in self.loss_weights)  # type: ignore[assignment]
        self.validate()

    def validate(self) -> None:
        """Refuse inconsistent settings before any data is read."""
        if self.masking not in MASKING_SCHEMES:
            raise InputError(f"pretrain config: masking must be one of {', '.join(MASKING_SCHEMES)}, got {self.masking!r}")
        if self.semantic not in ("self", "none"):
            raise InputError(f"pretrain config: semantic must be 'self' or 'none', got {self.semantic!r}")
        for name in ("steps", "batch_size", "crop_size", "checkpoint_every", "eval_every"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"pretrain config: {name} must be >= 1, got {getattr(self, name)}")
        if self.spacing_mm <= 0:
            raise InputError(f"pretrain config: spacing_mm must be positive, got {self.spacing_mm}")
        self.encoder_config()  # validates crop size against the patch size

    def encoder_config(self) -> Encoder3DConfig:
        """The encoder config: preset + overrides, sized for ``crop_size``."""
        overrides = {"img_size": self.crop_size, "grad_checkpointing": self.grad_checkpointing, **self.encoder_overrides}
        return Encoder3DConfig.preset(self.encoder, **overrides)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["loss_weights"] = list(self.loss_weights)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PretrainConfig:
        return dataclass_from_dict(cls, data, "pretrain")

    @classmethod
    def load(cls, path: str | os.PathLike[str], **overrides: Any) -> PretrainConfig:
        """Read a JSON or YAML config file (keys as in this class); ``overrides`` win."""
        data = read_config_file(path)
        data = data.get("pretrain", data)
        return cls.from_dict({**data, **{k: v for k, v in overrides.items() if v is not None}})


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A JSON or YAML mapping from ``path``, with errors naming the file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: config file not found")
    text = path.read_text()
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as error:  # yaml/json raise several types
        raise InputError(f"{path}: not a valid {path.suffix.lstrip('.').upper() or 'config'} file ({error})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: the config must be a mapping of keys to values")
    return data


# ------------------------------------------------------------------------------------------- data


def discover_volumes(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Image files and DICOM series folders under ``paths`` (recursively), label maps excluded."""
    found: list[Path] = []
    for root in map(Path, paths):
        if not root.exists():
            raise InputError(f"{root}: no such file or folder")
        if root.is_file():
            found.append(root)
            continue
        for directory, _, files in os.walk(root):
            names = sorted(files)
            if any(n.lower().endswith(".dcm") for n in names):
                found.append(Path(directory))
                continue
            found.extend(Path(directory) / n for n in names if _is_image_name(n))
    unique = sorted(set(found))
    if not unique:
        raise InputError(f"no volumes found under {', '.join(map(str, paths))} (looked for {', '.join(READ_SUFFIXES)} and DICOM folders)")
    return unique


def _is_image_name(name: str) -> bool:
    lower = name.lower()
    if not any(lower.endswith(s) for s in READ_SUFFIXES if s != ".dcm"):
        return False
    return not any(hint in lower for hint in LABEL_NAME_HINTS)


def split_holdout(files: Sequence[Path], count: int, seed: int) -> tuple[list[Path], list[Path]]:
    """Hold ``count`` volumes out for PSNR, drawn from folders with several volumes (no dataset vanishes)."""
    by_folder: dict[Path, list[Path]] = {}
    for f in files:
        by_folder.setdefault(f.parent, []).append(f)
    eligible = sorted(f for group in by_folder.values() if len(group) > 1 for f in group)
    if count <= 0 or not eligible:
        return list(files), []
    rng = np.random.default_rng(seed)
    held = {eligible[i] for i in rng.choice(len(eligible), size=min(count, len(eligible) - 1), replace=False)}
    return [f for f in files if f not in held], sorted(held)


@dataclass
class CropSampler:
    """Random ``crop``³ crops at ``spacing_mm`` from volumes on disk, normalised to [0, 1].

    A crop is resampled directly from the original image (never the whole volume at 1 mm), along the
    image's own axes; an axis shorter than the crop is upsampled to fill it. Volumes are cached
    (normalised, float32) up to ``cache_bytes``.
    """

    files: Sequence[Path]
    crop: int
    spacing_mm: float
    max_background: float = 0.9
    ct_window: str = "soft_tissue"
    cache_bytes: int = 1 << 30
    retries: int = 10
    _cache: OrderedDict = field(default_factory=OrderedDict, repr=False)
    _weights: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.files:
            raise InputError("pretraining needs at least one volume")
        groups: dict[Path, int] = {}
        for f in self.files:
            groups[f.parent] = groups.get(f.parent, 0) + 1
        # Each folder (dataset) gets weight sqrt(n): large collections dominate less than proportionally.
        weights = np.array([math.sqrt(groups[f.parent]) / groups[f.parent] for f in self.files])
        self._weights = weights / weights.sum()

    def image(self, index: int) -> sitk.Image:
        """The normalised image of volume ``index`` (cached)."""
        path = self.files[index]
        if path in self._cache:
            self._cache.move_to_end(path)
            return self._cache[path]
        volume = load_volume(path)
        modality = detect_modality(volume)
        array = normalize_intensity(volume.array, modality, self.ct_window) / 255.0
        image = volume.with_array(array.astype(np.float32)).to_sitk()
        self._cache[path] = image
        while sum(4 * img.GetNumberOfPixels() for img in self._cache.values()) > self.cache_bytes and len(self._cache) > 1:
            self._cache.popitem(last=False)
        return image

    def crop_from(self, image: sitk.Image, rng: np.random.Generator) -> np.ndarray:
        """One random crop [D, H, W] of ``image``."""
        size = np.array(image.GetSize(), dtype=float)
        spacing = np.array(image.GetSpacing())
        extent = size * spacing
        out_spacing = np.minimum(self.spacing_mm, extent / self.crop)
        span = out_spacing * self.crop
        start = rng.uniform(0.0, np.maximum(extent - span, 0.0))
        first_centre = start - 0.5 * spacing + 0.5 * out_spacing  # in mm along the image axes from voxel 0
        direction = np.array(image.GetDirection()).reshape(3, 3)
        origin = np.array(image.GetOrigin()) + direction @ first_centre
        crop = sitk.Resample(
            image, [self.crop] * 3, sitk.Transform(), sitk.sitkLinear, tuple(origin), tuple(out_spacing), image.GetDirection(), 0.0, sitk.sitkFloat32
        )
        return sitk.GetArrayFromImage(crop)

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        """A crop from a random volume, redrawn while it is mostly background (the least-background one after retries)."""
        best, best_background = None, 2.0
        for _ in range(self.retries):
            index = int(rng.choice(len(self.files), p=self._weights))
            try:
                image = self.image(index)
            except InputError as error:  # one unreadable file must not end a long run
                self._drop(index, error)
                continue
            crop = self.crop_from(image, rng)
            background = float(np.mean(crop < 0.02))
            if background <= self.max_background:
                return crop
            if background < best_background:
                best, best_background = crop, background
        if best is None:
            raise InputError(f"no readable volume among {len(self.files)} files after {self.retries} attempts")
        return best

    def _drop(self, index: int, error: Exception) -> None:
        """Stop sampling an unreadable volume (reported once on stderr)."""
        import sys

        print(f"medfound pretrain: skipping {self.files[index]}: {error}", file=sys.stderr)
        assert self._weights is not None
        weights = self._weights.copy()
        weights[index] = 0.0
        if weights.sum() == 0:
            raise InputError(f"none of the {len(self.files)} volumes could be read; last error: {error}")
        self._weights = weights / weights.sum()


class UnlabelledVolumes(torch.utils.data.IterableDataset):
    """Endless stream of crops [1, c, c, c]; sample ``n`` of a rank is a pure function of (seed, rank, n).

    That makes a resumed run draw exactly the crops the killed run would have drawn, and DataLoader
    workers split the stream by ``n mod num_workers`` without duplicates.
    """

    def __init__(self, sampler: CropSampler, seed: int, rank: int = 0, start: int = 0) -> None:
        super().__init__()
        self.sampler, self.seed, self.rank, self.start = sampler, seed, rank, start

    def __iter__(self) -> Iterator[torch.Tensor]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        n = self.start + worker
        while True:
            rng = np.random.default_rng([self.seed, self.rank, n])
            yield torch.from_numpy(self.sampler.sample(rng))[None]
            n += workers


# ---------------------------------------------------------------------------------------- masking


class _Pretrainer(nn.Module):
    """The MAE (plus MiM's alignment projector) as one module, so DDP sees one forward.

    Returns the reconstruction and, when there is a projector, the projected encoder tokens [B, N, D]
    (MiM's patches p) and the projected mean token of each volume [B, D] (its context vector c).
    """

    def __init__(self, mae: MaskedAutoencoder3D, projector: nn.Module | None = None) -> None:
        super().__init__()
        self.mae = mae
        self.projector = projector

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        encoded = self.mae.encoder(self.mae.mask_input(x, mask))
        recon = self.mae.decode(encoded)
        if self.projector is None:
            return recon, None, None
        tokens = encoded.tokens.float()
        return recon, self.projector(tokens), self.projector(tokens.mean(dim=1))


def mim_projector(dim: int, width: int = 256, out: int = 128) -> nn.Module:
    """MiM §3.3: the MLP that aggregates a volume's tokens into the space where levels are aligned."""
    return nn.Sequential(nn.Linear(dim, width), nn.GELU(), nn.Linear(width, out))


class Masker:
    """Turns a clean batch into (network input, target, voxel mask) for one scheme, plus any extra loss."""

    def __init__(self, config: PretrainConfig) -> None:
        self.config = config
        options = dict(config.masking_options)
        self.options = options
        if config.masking == "progressive":
            self.schedule = _progressive_schedule(options, config.steps)
        if config.masking == "mim":
            self._init_mim(config, options)

    def _init_mim(self, config: PretrainConfig, options: dict[str, Any]) -> None:
        """MiM settings: the paper's 3 levels, one token of the encoder per MiM patch (grid = crop / patch).

        The level-1 volume is ``level1_scale`` crops wide in the source and resized to the crop, as the
        paper's 384³ level 1 is resized to its 96³ input; each level's patches are a grid-th of its side.
        """
        patch = config.encoder_config().patch_size
        self.mim_grid = config.crop_size // patch
        if int(options.get("grid", self.mim_grid)) != self.mim_grid:
            raise InputError(f"MiM grid must be the encoder's token grid {self.mim_grid} (crop {config.crop_size} / patch {patch}), got {options['grid']}")
        self.mim_levels = int(options.get("levels", 3))
        self.mim_gamma = options.get("gamma", 2)
        self.mim_ratio = float(options.get("ratio", 0.6))
        self.level1_scale = int(options.get("level1_scale", 2))
        side = config.crop_size * self.level1_scale
        for level in range(2, self.mim_levels + 1):
            side //= self.mim_grid
            if side < self.mim_grid:
                raise InputError(
                    f"MiM level {level} would be {side} voxels wide, less than the {self.mim_grid}³ token grid: "
                    "raise masking_options.level1_scale or lower levels"
                )

    def source_crop(self) -> int:
        """Side of the crops the sampler must draw: MiM's level 1 is wider than the network input."""
        return self.config.crop_size * (self.level1_scale if self.config.masking == "mim" else 1)

    def batch(
        self, x: torch.Tensor, step: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
        """(inputs, targets, masks [B, D, H, W], extra) for training step ``step``."""
        scheme = self.config.masking
        shape = x.shape[-3:]
        if scheme == "progressive":
            masks = self.schedule.sample_batch(x.shape[0], shape, step, generator)
            return x, x, masks, {"stage": self.schedule.stage_index(step)}
        if scheme == "dual_axis":
            return self._dual_axis(x, generator)
        return self._mim(x, generator)

    def eval_masks(self, count: int, shape: Sequence[int], generator: torch.Generator) -> torch.Tensor:
        """Fixed masks for held-out PSNR: the hardest setting of the scheme, so the curve is comparable."""
        if self.config.masking == "progressive":
            last = self.schedule.stages[-1]
            return ProgressiveMaskingSchedule([(last.block, last.ratio)]).sample_batch(count, shape, 0, generator)
        if self.config.masking == "mim":  # level-1 masks: the coarse patches a level-1 volume hides
            patch = self.config.encoder_config().patch_size
            return torch.stack([_tokens_to_voxels(token_mask(self.mim_grid, self.mim_ratio, generator), patch) for _ in range(count)])
        x = torch.zeros(count, 1, *shape)
        return self.batch(x, self.config.steps, generator)[2][:count]

    def _dual_axis(self, x: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
        """NEMESIS/MAESIL: each sample twice, once plane-masked, once axis-masked, with a noisy input."""
        patch = self.config.encoder_config().patch_size
        grid = [s // patch for s in x.shape[-3:]]
        masks = []
        for _ in range(x.shape[0]):
            axis = int(torch.randint(0, 3, (1,), generator=generator))
            pair = dual_mask(grid, self.options.get("plane_ratio", 0.5), self.options.get("axis_ratio", 0.5), axis, generator)
            masks += [_tokens_to_voxels(pair.plane, patch), _tokens_to_voxels(pair.axis, patch)]
        target = x.repeat_interleave(2, dim=0)
        noisy = noise_enhanced(target, float(self.options.get("noise_sigma", 0.05)), generator)
        return noisy, target, torch.stack(masks), {}

    def _mim(self, x: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
        """MiM: every level's masked volumes of each sample in one batch, with their levels and the
        (parent, child, parent patch, parent level) pairs of the cross-level alignment."""
        crop = (self.config.crop_size,) * 3
        volumes, masks, levels, pairs = [], [], [], []
        for sample in x:
            tree = generate_mim_levels(sample, self.mim_levels, self.mim_grid, self.mim_ratio, self.mim_gamma, out_size=crop, generator=generator)
            index: list[list[int]] = []
            for level in tree:
                index.append([])
                for volume in level:
                    index[-1].append(len(volumes))
                    volumes.append(volume.volume)
                    masks.append(volume.voxel_mask())
                    levels.append(volume.level)
                    if volume.parent is not None:
                        pairs.append((index[-2][volume.parent], len(volumes) - 1, volume.parent_patch, volume.level - 1))
        batch = torch.stack(volumes).to(x.dtype)
        return batch, batch, torch.stack(masks), {"mim_pairs": pairs, "mim_levels": levels}


def _progressive_schedule(options: dict[str, Any], steps: int) -> ProgressiveMaskingSchedule:
    """3DME stages over ``steps`` in equal parts (or at ``options['boundaries']``); a run shorter than
    the number of stages keeps the first stages, one step each."""
    stages = [tuple(s) for s in options.get("stages", DEFAULT_STAGES)]
    if options.get("boundaries") is not None:
        return ProgressiveMaskingSchedule(stages, options["boundaries"], "step")
    stages = stages[: max(1, min(len(stages), steps))]
    return ProgressiveMaskingSchedule(stages, None, "step", steps if len(stages) > 1 else None)


def _tokens_to_voxels(token_mask: torch.Tensor, patch: int) -> torch.Tensor:
    m = token_mask
    for axis in range(3):
        m = m.repeat_interleave(patch, dim=axis)
    return m


def _mim_alignment(patches: torch.Tensor, context: torch.Tensor, pairs: list[tuple[int, int, int, int]]) -> torch.Tensor:
    """MiM eq. 6–7: InfoNCE of each finer volume's context vector against its parent's patches (the
    parent's own encoder tokens, projected), averaged per adjacent-level pair, then over the pairs."""
    per_level = []
    for parent_level in sorted({p[3] for p in pairs}):
        chosen = [p for p in pairs if p[3] == parent_level]
        positive = torch.tensor([flat for _, _, flat, _ in chosen], device=patches.device)
        per_level.append(cross_level_infonce(context[[c for _, c, _, _ in chosen]], patches[[p for p, _, _, _ in chosen]], positive))
    return torch.stack(per_level).mean()


def _per_level_loss(loss_fn: ThreeDMELoss, recon: torch.Tensor, targets: torch.Tensor, masks: torch.Tensor, levels: list[int]) -> dict[str, torch.Tensor]:
    """MiM eq. 3: the 3DME loss of each level's volumes, averaged over levels (not over volumes, so the
    many small level-3 volumes do not outweigh the one level-1 volume)."""
    per_level = []
    for level in sorted(set(levels)):
        rows = [i for i, lv in enumerate(levels) if lv == level]
        per_level.append(loss_fn(recon[rows], targets[rows], masks[rows]))
    return {key: multi_level_reconstruction([parts[key] for parts in per_level]) for key in per_level[0]}


# ------------------------------------------------------------------------------------------ state


@dataclass
class PretrainState:
    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    evaluations: list[dict[str, Any]] = field(default_factory=list)


def _lr_lambda(config: PretrainConfig) -> Callable[[int], float]:
    """Linear warm-up then cosine decay to 1 % (as a multiplier of ``config.lr``)."""

    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / max(1, config.warmup_steps)
        progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _step_generator(config: PretrainConfig, rank: int, step: int) -> torch.Generator:
    generator = torch.Generator()
    generator.manual_seed(int(np.random.default_rng([config.seed, rank, step, 17]).integers(2**62)))
    return generator


# --------------------------------------------------------------------------------------- evaluate


def reconstruction_psnr(model: MaskedAutoencoder3D, crops: torch.Tensor, masks: torch.Tensor, device: torch.device) -> float:
    """PSNR (dB, signal range 1) of the reconstruction over the masked voxels of fixed held-out crops."""
    was_training = model.training
    model.eval()
    squared, count = 0.0, 0
    with torch.inference_mode():
        for crop, mask in zip(crops, masks):
            x, m = crop[None].to(device), mask[None].to(device)
            with autocast(device):
                recon = model(x, m)
            diff = (recon.float().clamp(0, 1) - x)[:, 0][m]
            squared += float(diff.pow(2).sum())
            count += int(m.sum())
    model.train(was_training)
    mse = squared / max(count, 1)
    return float(10 * math.log10(1.0 / max(mse, 1e-12)))


def _eval_set(sampler: CropSampler | None, masker: Masker, config: PretrainConfig) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Fixed held-out crops (round-robin over the held-out volumes, so none is repeated) and masks."""
    if sampler is None:
        return None
    rng = np.random.default_rng([config.seed, 999_983])
    crops = []
    for i in range(config.eval_crops):
        index = i % len(sampler.files)
        candidates = [sampler.crop_from(sampler.image(index), rng) for _ in range(sampler.retries)]
        crops.append(min(candidates, key=lambda c: float(np.mean(c < 0.02))))  # least background
    stacked = torch.stack([torch.from_numpy(c)[None] for c in crops])
    generator = torch.Generator().manual_seed(config.seed + 424242)
    return stacked, masker.eval_masks(config.eval_crops, stacked.shape[-3:], generator)


def fill_psnr(crops: torch.Tensor, masks: torch.Tensor) -> float:
    """PSNR of the trivial answer (each crop's mean visible intensity): the floor a useful model must beat."""
    squared, count = 0.0, 0
    for crop, mask in zip(crops, masks):
        fill = crop[0][~mask].mean() if (~mask).any() else crop.mean()
        squared += float((crop[0][mask] - fill).pow(2).sum())
        count += int(mask.sum())
    return float(10 * math.log10(1.0 / max(squared / max(count, 1), 1e-12)))


# ------------------------------------------------------------------------------------------- train


def pretrain(
    paths: Sequence[str | os.PathLike[str]],
    config: PretrainConfig,
    work_dir: str | os.PathLike[str],
    *,
    resume: bool = True,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    on_metrics: MetricsCallback | None = None,
) -> Path:
    """Pretrain on the volumes under ``paths``; returns the exported encoder directory ``work_dir/encoder``.

    With ``resume`` (default) the newest checkpoint in ``work_dir/checkpoints`` is continued. Under
    torchrun every rank calls this; rank 0 writes checkpoints, metrics and the encoder.
    """
    work_dir = Path(work_dir)
    info = distributed.setup(config.device)
    try:
        return _pretrain(paths, config, work_dir, info, resume, progress, cancel, on_metrics)
    finally:
        distributed.cleanup()


def _pretrain(
    paths: Sequence[str | os.PathLike[str]],
    config: PretrainConfig,
    work_dir: Path,
    info: distributed.DistInfo,
    resume: bool,
    progress: ProgressCallback | None,
    cancel: CancelToken | None,
    on_metrics: MetricsCallback | None,
) -> Path:
    device = info.device
    files = discover_volumes(paths)
    train_files, eval_files = split_holdout(files, config.holdout, config.seed)
    masker = Masker(config)
    sampler = CropSampler(train_files, masker.source_crop(), config.spacing_mm, config.max_background, config.ct_window)
    eval_sampler = CropSampler(eval_files, config.crop_size, config.spacing_mm, config.max_background, config.ct_window) if eval_files else None

    torch.manual_seed(config.seed)  # identical initial weights on every rank
    mae = build_mae3d(config.encoder_config()).to(device)
    pretrainer = _Pretrainer(mae, mim_projector(mae.cfg.dim) if config.masking == "mim" else None).to(device)
    model = distributed.wrap(pretrainer, info)
    optimizer = torch.optim.AdamW(pretrainer.parameters(), lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.95))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(config))
    state = PretrainState()

    loss_fn = ThreeDMELoss(config.loss_weights, _semantic_phi(mae, config))
    checkpoints = work_dir / "checkpoints"
    latest = latest_checkpoint(checkpoints) if resume else None
    if latest is not None:
        state = _restore(latest, pretrainer, optimizer, scheduler, loss_fn, config)
    eval_set = _eval_set(eval_sampler, masker, config) if info.is_main else None

    dataset = UnlabelledVolumes(sampler, config.seed, info.rank, start=state.step * config.batch_size)
    loader = iter(torch.utils.data.DataLoader(dataset, batch_size=config.batch_size, num_workers=config.num_workers))
    model.train()
    started = time.perf_counter()
    for step in range(state.step, config.steps):
        check(cancel)
        if config.semantic == "self" and step % config.semantic_refresh_every == 0 and step > 0:
            loss_fn.phi = _semantic_phi(mae, config)
        parts = _train_step(model, loss_fn, masker, optimizer, scheduler, next(loader), step, config, info)
        state.step = step + 1
        record = {"step": state.step, **parts, "lr": scheduler.get_last_lr()[0], "seconds": time.perf_counter() - started}
        state.history.append(record)
        if info.is_main and on_metrics is not None:
            on_metrics(record)
        report(progress, STAGE, state.step, config.steps, f"loss {parts['total']:.4f}")
        out_of_time = _out_of_time(config, started, info)
        last = state.step == config.steps or out_of_time
        if eval_set is not None and (state.step % config.eval_every == 0 or last):
            evaluation = {"step": state.step, "psnr_db": reconstruction_psnr(mae, *eval_set, device), "fill_psnr_db": fill_psnr(*eval_set)}
            state.evaluations.append(evaluation)
            if on_metrics is not None:
                on_metrics(evaluation)
        if state.step % config.checkpoint_every == 0 or last:
            if info.is_main:
                _save(checkpoints, pretrainer, optimizer, scheduler, loss_fn, state, config)
            distributed.barrier()
        if out_of_time:
            break
    replicas = _check_replicas(mae, info, work_dir / "replicas")
    if info.is_main:
        export_encoder(mae.encoder, config, state, files, work_dir / "encoder")
        _write_metrics(work_dir / "metrics.json", config, state, files, eval_files, replicas)
    distributed.barrier()
    return work_dir / "encoder"


def parameter_hash(module: nn.Module) -> str:
    """sha256 over every parameter and buffer (names, shapes, bytes): equal iff the replicas are equal."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().to("cpu").contiguous().numpy().tobytes())
    return digest.hexdigest()


def _check_replicas(mae: MaskedAutoencoder3D, info: distributed.DistInfo, directory: Path) -> list[str]:
    """Every rank writes its parameter hash; under DDP diverged replicas are an error, not a silent bug.

    BatchNorm running statistics are per-rank between forwards (DDP broadcasts rank 0's at the next
    forward), so they are broadcast from rank 0 first: the exported model is rank 0's anyway.
    """
    if info.distributed:
        import torch.distributed as dist

        for buffer in mae.buffers():
            dist.broadcast(buffer.data, src=0)
    digest = parameter_hash(mae)
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_path(directory / f"rank-{info.rank}.sha256") as tmp:
        tmp.write_text(digest + "\n")
    if not info.distributed:
        return [digest]
    import torch.distributed as dist

    hashes: list[str] = [""] * info.world_size
    dist.all_gather_object(hashes, digest)
    if len(set(hashes)) != 1:
        raise RuntimeError(f"DDP replicas diverged: parameter hashes per rank {hashes}")
    return hashes


def _out_of_time(config: PretrainConfig, started: float, info: distributed.DistInfo) -> bool:
    """Whether the wall-time budget is spent; under DDP rank 0 decides for all (no rank may stop alone)."""
    if config.time_limit_minutes is None:
        return False
    flag = torch.tensor([float(time.perf_counter() - started > 60.0 * config.time_limit_minutes)], device=info.device)
    if info.distributed:
        import torch.distributed as dist

        dist.broadcast(flag, src=0)
    return bool(flag.item())


def _train_step(
    model: nn.Module,
    loss_fn: ThreeDMELoss,
    masker: Masker,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    x: torch.Tensor,
    step: int,
    config: PretrainConfig,
    info: distributed.DistInfo,
) -> dict[str, float]:
    """One optimisation step on a CPU batch ``x`` (masks are drawn on the CPU generator); returns the loss parts."""
    inputs, targets, masks, extra = masker.batch(x, step, _step_generator(config, info.rank, step))
    inputs, targets, masks = inputs.to(info.device), targets.to(info.device), masks.to(info.device)
    with autocast(info.device) if config.amp else contextlib.nullcontext():
        recon, patches, context = model(inputs, masks)
        if "mim_levels" in extra:
            parts = _per_level_loss(loss_fn, recon.float(), targets, masks, extra["mim_levels"])
        else:
            parts = loss_fn(recon.float(), targets, masks)
        total = parts["total"]
        if extra.get("mim_pairs"):
            parts["mim_infonce"] = _mim_alignment(patches.float(), context.float(), extra["mim_pairs"])
            total = total + float(masker.options.get("infonce_weight", 0.1)) * parts["mim_infonce"]
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    if config.grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
    optimizer.step()
    scheduler.step()
    out = {k: float(v.detach()) for k, v in parts.items() if k != "total"}
    out["total"] = float(total.detach())
    if "stage" in extra:
        out["mask_stage"] = extra["stage"]
    return out


def _semantic_phi(mae: MaskedAutoencoder3D, config: PretrainConfig) -> nn.Module | None:
    """φ of eq. 11: a frozen snapshot of the encoder (no pretrained 3D segmenter ships offline)."""
    if config.semantic == "none":
        return None
    return frozen_copy(mae.encoder)


def _save(
    directory: Path,
    pretrainer: _Pretrainer,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    loss_fn: ThreeDMELoss,
    state: PretrainState,
    config: PretrainConfig,
) -> None:
    save_checkpoint(
        checkpoint_path(directory, state.step),
        model=pretrainer.mae.state_dict(),
        projector=pretrainer.projector.state_dict() if pretrainer.projector is not None else {},
        phi=loss_fn.phi.state_dict() if loss_fn.phi is not None else {},
        optimizer=optimizer.state_dict(),
        scheduler=scheduler.state_dict(),
        step=state.step,
        history=json.dumps(state.history),
        evaluations=json.dumps(state.evaluations),
        config=json.dumps(config.to_dict()),
    )
    prune_checkpoints(directory, config.keep_checkpoints)


def _restore(
    path: Path,
    pretrainer: _Pretrainer,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    loss_fn: ThreeDMELoss,
    config: PretrainConfig,
) -> PretrainState:
    """Load a checkpoint written by :func:`_save`; a checkpoint of another model shape is refused."""
    data = load_checkpoint(path)
    saved = json.loads(data["config"])
    if saved.get("encoder") != config.encoder or saved.get("crop_size") != config.crop_size or saved.get("encoder_overrides") != config.encoder_overrides:
        raise InputError(f"{path}: checkpoint was made with another encoder/crop size ({saved.get('encoder')}, {saved.get('crop_size')}); use a new --work-dir or the same config")
    pretrainer.mae.load_state_dict(data["model"])
    if pretrainer.projector is not None:
        pretrainer.projector.load_state_dict(data["projector"])
    if loss_fn.phi is not None and data.get("phi"):
        loss_fn.phi.load_state_dict(data["phi"])  # φ is the snapshot of the last refresh, not the resumed weights
    optimizer.load_state_dict(data["optimizer"])
    scheduler.load_state_dict(data["scheduler"])
    return PretrainState(int(data["step"]), json.loads(data["history"]), json.loads(data["evaluations"]))


# ------------------------------------------------------------------------------------------ export


def export_encoder(
    encoder: DualBranchEncoder3D,
    config: PretrainConfig,
    state: PretrainState,
    files: Sequence[Path],
    directory: Path,
    name: str = "encoder",
    description: str = "",
) -> Path:
    """Write the encoder as a registry model (fp16 safetensors + card kind ``encoder3d``)."""
    folders = sorted({str(f.parent) for f in files})
    card = ModelCard(
        name=name,
        kind="encoder3d",
        config=encoder.cfg.to_dict() | {"grad_checkpointing": False},
        description=description or "3DME dual-branch encoder pretrained with masked reconstruction on unlabelled volumes",
        preprocessing={"spacing_mm": config.spacing_mm, "crop_size": config.crop_size, "ct_window": config.ct_window, "intensity": "preprocess.normalize_intensity / 255 -> [0, 1]"},
        training_data={"volumes": len(files), "folders": folders},
        metrics={"steps": state.step, "final_loss": state.history[-1]["total"] if state.history else None, "psnr_db": state.evaluations},
        extra={"pretrain_config": config.to_dict()},
    )
    return save_model(encoder.state_dict(), card, directory, overwrite=True)


def _write_metrics(
    path: Path, config: PretrainConfig, state: PretrainState, files: Sequence[Path], eval_files: Sequence[Path], replicas: list[str]
) -> None:
    data = {
        "config": config.to_dict(),
        "world_size": len(replicas),
        "replica_hashes": replicas,
        "volumes": len(files),
        "held_out": [str(f) for f in eval_files],
        "history": state.history,
        "psnr": state.evaluations,
    }
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1))
