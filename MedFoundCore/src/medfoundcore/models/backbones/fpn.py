"""Feature Pyramid Network: backbone features -> same-width maps at strides 4/8/16/32 plus a stride-4 mask feature.

The decoder cross-attends to the stride 16, 8 and 4 maps; mask logits are query embeddings dotted
with the stride-4 mask feature (paper §3.1, Mask2Former-style pixel decoder without deformable attention).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FPN"]


def _conv_gn(cin: int, cout: int, k: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.GroupNorm(_groups(cout), cout), nn.GELU())


def _groups(channels: int) -> int:
    return next(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0)


class FPN(nn.Module):
    """Top-down pathway with lateral 1x1 convs; returns ``(multiscale [s4, s8, s16, s32], mask_features)``."""

    def __init__(self, in_channels: tuple[int, ...], dim: int):
        super().__init__()
        self.lateral = nn.ModuleList(_conv_gn(c, dim, 1) for c in in_channels)
        self.output = nn.ModuleList(_conv_gn(dim, dim, 3) for _ in in_channels)
        self.mask_head = nn.Sequential(_conv_gn(dim, dim, 3), nn.Conv2d(dim, dim, 1))

    def forward(self, features: list[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
        laterals = [lat(f) for lat, f in zip(self.lateral, features)]
        top = laterals[-1]
        merged = [top]
        for lat in reversed(laterals[:-1]):
            top = lat + F.interpolate(top, size=lat.shape[-2:], mode="nearest")
            merged.insert(0, top)
        outs = [conv(m) for conv, m in zip(self.output, merged)]
        return outs, self.mask_head(outs[0])
