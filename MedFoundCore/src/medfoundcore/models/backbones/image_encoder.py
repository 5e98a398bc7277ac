"""Hierarchical 2D image encoder (ConvNeXt-style stages, optional self-attention) for FVE images.

The paper uses FocalNet; any backbone that returns stride 4/8/16/32 features fits the FPN and
decoder (§3.1). This one is written for two regimes: a "tiny" preset that trains on 2 CPU cores at
128x128, and larger presets for GPUs. The stride-4 patch-embedding stem keeps each FVE
"super pixel" (2^(k-1) px, §3.3) inside one patch for k <= 3.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["EncoderSpec", "ENCODER_PRESETS", "ImageEncoder", "LayerNorm2d"]


@dataclass(frozen=True)
class EncoderSpec:
    """Widths and depths of the four stages (strides 4, 8, 16, 32); ``attn`` = self-attention blocks per stage."""

    dims: tuple[int, int, int, int]
    depths: tuple[int, int, int, int]
    attn: tuple[int, int, int, int] = (0, 0, 0, 0)
    heads: int = 4


ENCODER_PRESETS: dict[str, EncoderSpec] = {
    "tiny": EncoderSpec(dims=(16, 32, 64, 128), depths=(1, 1, 2, 1)),
    "small": EncoderSpec(dims=(32, 64, 128, 256), depths=(1, 2, 3, 1), attn=(0, 0, 0, 1)),
    "base": EncoderSpec(dims=(64, 128, 256, 512), depths=(2, 2, 6, 2), attn=(0, 0, 1, 2), heads=8),
    "large": EncoderSpec(dims=(96, 192, 384, 768), depths=(2, 2, 9, 2), attn=(0, 0, 2, 2), heads=12),
}


class LayerNorm2d(nn.Module):
    """LayerNorm over channels of an NCHW tensor (ConvNeXt convention)."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvBlock(nn.Module):
    """ConvNeXt block: depthwise 7x7 -> LN -> MLP (4x) -> layer scale, residual."""

    def __init__(self, dim: int, layer_scale: float = 1e-6):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.mlp(self.norm(y)) * self.gamma
        return x + y.permute(0, 3, 1, 2)


class AttentionBlock(nn.Module):
    """Global multi-head self-attention over the tokens of a (low-resolution) feature map."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(
            dim, heads, dim_feedforward=4 * dim, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = self.layer(x.flatten(2).transpose(1, 2))
        return tokens.transpose(1, 2).reshape(b, c, h, w)


class ImageEncoder(nn.Module):
    """Images [B, C, H, W] (H, W multiples of 32) -> four feature maps at strides 4, 8, 16, 32."""

    def __init__(self, spec: EncoderSpec, in_chans: int = 3):
        super().__init__()
        self.spec = spec
        self.out_channels = spec.dims
        d = spec.dims
        self.downsample = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(in_chans, d[0], kernel_size=4, stride=4), LayerNorm2d(d[0]))]
            + [nn.Sequential(LayerNorm2d(d[i - 1]), nn.Conv2d(d[i - 1], d[i], kernel_size=2, stride=2))
               for i in range(1, 4)]
        )
        self.stages = nn.ModuleList(
            nn.Sequential(
                *[ConvBlock(d[i]) for _ in range(spec.depths[i])],
                *[AttentionBlock(d[i], spec.heads) for _ in range(spec.attn[i])],
            )
            for i in range(4)
        )
        self.norms = nn.ModuleList(LayerNorm2d(c) for c in d)
        self.apply(self._init)

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for down, stage, norm in zip(self.downsample, self.stages, self.norms):
            x = stage(down(x))
            features.append(norm(x))
        return features
