"""MONAI baselines: 3D UNet, DynUNet (nnU-Net's recipe), UNETR and SwinUNETR (MONAI's own implementations)
at three size profiles.

``standard`` is each network's published MONAI configuration (UNETR: ViT-B 768/12 heads, feature 16;
SwinUNETR: feature 48; UNet: 16-256 channels, 2 residual units; DynUNet: nnU-Net's 32-256 filters). ``small`` and ``tiny`` shrink width/depth
so that CPU and CI runs finish; the size used is written into the results.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from monai.networks.nets import UNETR, DynUNet, SwinUNETR, UNet

from ...io import Volume
from ...progress import CancelToken, ProgressCallback
from ..cases import BenchCase
from .base import Deadline, FitResult, Method, MethodSettings, count_parameters
from .supervised import N_CLASSES, Recipe, predict_sliding, train_budgeted

ROI = (32, 64, 32)  # (K, J, I): covers the J extent of every MSD crop, a multiple of 32 for SwinUNETR


def _unet(size: str) -> torch.nn.Module:
    channels, units = {
        "tiny": ((8, 16, 32), 1),
        "small": ((16, 32, 64, 128), 2),
        "standard": ((16, 32, 64, 128, 256), 2),
    }[size]
    return UNet(3, 1, N_CLASSES, channels=channels, strides=(2,) * (len(channels) - 1), num_res_units=units, norm="instance")


def _dynunet(size: str) -> torch.nn.Module:
    """nnU-Net's 3d_fullres topology for ROI: 3x3x3 kernels, stride 2 per stage down to 4x8x4, filters
    doubling from 32 (standard), instance norm, leaky ReLU, deep supervision on two extra heads."""
    filters = {"tiny": (8, 16, 32, 64), "small": (16, 32, 64, 128), "standard": (32, 64, 128, 256)}[size]
    strides = [(1, 1, 1)] + [(2, 2, 2)] * (len(filters) - 1)
    return DynUNet(3, 1, N_CLASSES, kernel_size=[(3, 3, 3)] * len(filters), strides=strides, upsample_kernel_size=strides[1:],
                   filters=filters, norm_name="instance", act_name=("leakyrelu", {"negative_slope": 0.01, "inplace": True}),
                   deep_supervision=True, deep_supr_num=2, res_block=False)  # fmt: skip


def _unetr(size: str) -> torch.nn.Module:
    feature, hidden, mlp, heads = {"tiny": (8, 96, 192, 4), "small": (16, 384, 1536, 6), "standard": (16, 768, 3072, 12)}[size]
    return UNETR(1, N_CLASSES, img_size=ROI, feature_size=feature, hidden_size=hidden, mlp_dim=mlp, num_heads=heads)


def _swinunetr(size: str) -> torch.nn.Module:
    feature, depths = {"tiny": (12, (1, 1, 1, 1)), "small": (24, (2, 2, 2, 2)), "standard": (48, (2, 2, 2, 2))}[size]
    return SwinUNETR(1, N_CLASSES, feature_size=feature, depths=depths, num_heads=(3, 6, 12, 24))


class MonaiBaseline(Method):
    """A MONAI network trained from scratch with the shared budgeted DiceCE/AdamW loop."""

    build: Callable[[str], torch.nn.Module]
    recipe: Recipe

    def __init__(self, settings: MethodSettings) -> None:
        super().__init__(settings)
        torch.manual_seed(settings.seed)
        self.net = type(self).build(settings.size)

    def fit(
        self,
        cases: Sequence[BenchCase],
        deadline: Deadline,
        work_dir: Path,
        progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
    ) -> FitResult:
        return train_budgeted(
            self.net, cases, self.recipe, deadline, self.settings.device, self.settings.seed, f"train {self.key}", progress, cancel
        )

    def predict(self, image: Volume) -> np.ndarray:
        return predict_sliding(self.net, image.array, self.recipe.roi, self.settings.device)

    def parameter_count(self) -> int:
        return count_parameters(self.net)


class UNet3D(MonaiBaseline):
    key, title = "unet", "3D UNet (MONAI)"
    description = "monai.networks.nets.UNet, residual units, instance norm; AdamW lr 1e-3, DiceCE, from scratch"
    build = staticmethod(_unet)
    recipe = Recipe(roi=ROI, lr=1e-3)


class DynUNetBaseline(MonaiBaseline):
    key, title, paper_column = "dynunet", "DynUNet, nnU-Net recipe (MONAI)", "nnU-Net"
    description = (
        "monai.networks.nets.DynUNet in nnU-Net's 3d_fullres topology (instance norm, leaky ReLU, deep supervision "
        "weighted 1, 1/2, 1/4); nnU-Net's optimiser: SGD lr 1e-2, momentum 0.99 Nesterov, weight decay 3e-5, poly "
        "decay over the budget; DiceCE; batch 2 and no nnU-Net data augmentation, like the other rows; from scratch"
    )
    build = staticmethod(_dynunet)
    recipe = Recipe(roi=ROI, lr=1e-2, weight_decay=3e-5, optimizer="sgd-poly", deep_supervision=True)


class UNETRBaseline(MonaiBaseline):
    key, title, paper_column = "unetr", "UNETR (MONAI)", "UNETR"
    description = "monai.networks.nets.UNETR (patch 16); AdamW lr 1e-4 (UNETR recipe), DiceCE, from scratch"
    build = staticmethod(_unetr)
    recipe = Recipe(roi=ROI, lr=1e-4)


class SwinUNETRBaseline(MonaiBaseline):
    key, title, paper_column = "swinunetr", "SwinUNETR (MONAI)", "SwinUNETR"
    description = "monai.networks.nets.SwinUNETR (window 7); AdamW lr 1e-4 (SwinUNETR recipe), DiceCE, from scratch"
    build = staticmethod(_swinunetr)
    recipe = Recipe(roi=ROI, lr=1e-4)
