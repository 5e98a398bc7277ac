"""Budgeted supervised 3D training and sliding-window inference, the usual MONAI recipe.

DiceCE loss, AdamW, random patches of ``roi`` voxels, and Gaussian-weighted sliding-window inference
with 50 % overlap. The loop runs until the wall-clock deadline, so every baseline gets the same time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from monai.losses import DeepSupervisionLoss, DiceCELoss

from ...device import autocast, autocast_dtype
from ...progress import CancelToken, ProgressCallback, check, report
from ..cases import BenchCase
from .base import Deadline, FitResult

N_CLASSES = 3  # background, anterior, posterior


@dataclass(frozen=True)
class Recipe:
    """Optimisation settings of one baseline."""

    roi: tuple[int, int, int] = (32, 64, 32)
    batch_size: int = 2
    lr: float = 1e-4
    weight_decay: float = 1e-5
    #: "adamw", or "sgd-poly": nnU-Net's SGD (momentum 0.99, Nesterov) with the learning rate decayed
    #: as (1 - t / T) ** 0.9, where t / T is the elapsed share of the wall-clock budget.
    optimizer: str = "adamw"
    #: the network returns [B, heads, C, ...] in training (MONAI DynUNet deep supervision): the loss is
    #: nnU-Net's weighted sum over heads, weights 1, 1/2, 1/4, ... normalised.
    deep_supervision: bool = False


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """[0, 255] image -> (1, K, J, I) float tensor in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32) / 255.0)[None]


def pad_to(array: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Zero-pad (symmetrically) so that every axis is at least ``shape``."""
    pads = [(max(0, s - a) // 2, max(0, s - a) - max(0, s - a) // 2) for a, s in zip(array.shape, shape)]
    return np.pad(array, pads) if any(sum(p) for p in pads) else array


class PatchSampler:
    """Uniform random ``roi`` patches from the (padded) training volumes, seeded."""

    def __init__(self, cases: Sequence[BenchCase], roi: tuple[int, int, int], seed: int) -> None:
        self.images = [pad_to(c.image.array.astype(np.float32) / 255.0, roi) for c in cases]
        self.labels = [pad_to(c.label.array.astype(np.int64), roi) for c in cases]
        self.roi = roi
        self.rng = np.random.default_rng(seed)

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        picks = self.rng.integers(0, len(self.images), size)
        xs, ys = [], []
        for i in picks:
            corner = [int(self.rng.integers(0, a - r + 1)) for a, r in zip(self.images[i].shape, self.roi)]
            window = tuple(slice(c, c + r) for c, r in zip(corner, self.roi))
            xs.append(self.images[i][window])
            ys.append(self.labels[i][window])
        return torch.from_numpy(np.stack(xs)[:, None]), torch.from_numpy(np.stack(ys)[:, None])


def train_budgeted(
    net: torch.nn.Module,
    cases: Sequence[BenchCase],
    recipe: Recipe,
    deadline: Deadline,
    device: torch.device,
    seed: int,
    stage: str = "train",
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> FitResult:
    """Train ``net`` in place until ``deadline`` (at least one step); report elapsed/budget seconds."""
    net.to(device).train()
    sampler = PatchSampler(cases, recipe.roi, seed)
    loss_fn = _loss(recipe)
    optimizer = _optimizer(net, recipe)
    scaler = torch.amp.GradScaler("cuda", enabled=autocast_dtype(device) == torch.float16)
    steps, last_loss, shown = 0, float("nan"), -1
    while steps == 0 or not deadline.expired:
        check(cancel)
        x, y = sampler.batch(recipe.batch_size)
        x, y = x.to(device), y.to(device)
        if recipe.optimizer == "sgd-poly":
            for group in optimizer.param_groups:
                group["lr"] = recipe.lr * (1.0 - min(deadline.elapsed / deadline.seconds, 0.999)) ** 0.9
        optimizer.zero_grad(set_to_none=True)
        with autocast(device):
            loss = loss_fn(net(x), y)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        steps += 1
        last_loss = float(loss.detach())
        if int(deadline.elapsed) != shown:
            shown = int(deadline.elapsed)
            report(progress, stage, shown, int(deadline.seconds), f"step {steps} loss {last_loss:.3f}")
    epochs = steps * recipe.batch_size / max(1, len(cases))
    return FitResult(deadline.elapsed, epochs, steps, [f"final training loss {last_loss:.3f}"])


def _optimizer(net: torch.nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    if recipe.optimizer == "sgd-poly":
        return torch.optim.SGD(net.parameters(), lr=recipe.lr, momentum=0.99, nesterov=True, weight_decay=recipe.weight_decay)
    return torch.optim.AdamW(net.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)


def _loss(recipe: Recipe):
    dice_ce = DiceCELoss(to_onehot_y=True, softmax=True)
    if not recipe.deep_supervision:
        return dice_ce

    def deep_supervised(outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """MONAI's deep-supervision sum over the heads DynUNet stacks on dim 1, weights 1, 1/2, 1/4... normalised."""
        halves = [0.5**i for i in range(outputs.shape[1])]
        return DeepSupervisionLoss(dice_ce, weights=[w / sum(halves) for w in halves])(list(outputs.unbind(1)), target)

    return deep_supervised


@torch.no_grad()
def predict_sliding(net: torch.nn.Module, image: np.ndarray, roi: tuple[int, int, int], device: torch.device) -> np.ndarray:
    """Argmax label map of ``net`` over ``image`` ([0, 255], (K, J, I)) by Gaussian sliding windows."""
    net.eval()
    x = to_tensor(image)[None].to(device)
    with autocast(device):
        logits = sliding_window_inference(x, roi, sw_batch_size=4, predictor=net, overlap=0.5, mode="gaussian")
    return logits.argmax(dim=1)[0].to("cpu", torch.uint8).numpy()
