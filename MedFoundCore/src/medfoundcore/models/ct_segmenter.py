"""``ct-v1``: a text-conditioned 3D decoder on the frozen CT foundation encoder's multi-scale features.

Three parts, each computed as rarely as possible:
- ``pixel_features``: the encoder's layer1..layer4 maps projected and fused on the layer1 grid
  (6 mm); computed ONCE per window and shared by every prompt.
- ``coarse_logits``: per prompt, a mask query (one dot product per voxel: an extra prompt costs almost
  nothing). The query is the MiniLM text embedding through a small MLP (which also FiLM-modulates the
  pixel features) plus, for each structure the decoder was trained on, a learned query vector.
- ``refine``: a light full-resolution path on the 1.5 × 1.5 × 3 mm image, so that boundaries are not
  limited to the 6 mm feature grid; image features are shared, the per-prompt part is two small
  convolutions, run only inside the prompt's box at inference.
- ``presence``: an ISD-style head (BiomedParse-V §3.3) deciding per 6 mm slab whether the structure is
  there at all; it reads the pixel features DETACHED, so its loss never shapes the segmentation path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .backbones.ct_foundation import FEATURE_CHANNELS, FEATURE_STRIDES
from .fast_conv import Conv3d
from .text_query import TextQueries

TEXT_DIM = 384  # MiniLM-L6


@dataclass
class CTSegmenterConfig:
    """Decoder sizes; the encoder is fixed (see ``backbones.ct_foundation``)."""

    width: int = 64
    image_width: int = 8
    refine_width: int = 16
    text_dim: int = TEXT_DIM
    feature_channels: Sequence[int] = field(default_factory=lambda: list(FEATURE_CHANNELS))
    keys: Sequence[str] = ()  # vocabulary keys with a learned query (the trained structures)

    def to_dict(self) -> dict:
        return {**asdict(self), "feature_channels": list(self.feature_channels), "keys": list(self.keys)}

    @classmethod
    def from_dict(cls, data: dict) -> CTSegmenterConfig:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


class ChannelNorm3d(nn.LayerNorm):
    """LayerNorm over the channels of each voxel. Unlike GroupNorm / InstanceNorm its statistics do
    not depend on the field of view, so a 192 mm training crop and a 336 mm inference window (or a
    whole thin CT) see the same normalisation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.movedim(1, -1)).movedim(-1, 1)


def _norm(channels: int) -> nn.Module:
    return ChannelNorm3d(channels)


class PixelDecoder(nn.Module):
    """FPN-style fusion of layer1..layer4 onto the layer1 grid, then one 3×3×3 convolution."""

    def __init__(self, feature_channels: Sequence[int], width: int):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Sequential(Conv3d(c, width, 1), _norm(width)) for c in feature_channels)
        self.fuse = nn.Sequential(
            Conv3d(width, width, 3, padding=1), _norm(width), nn.GELU(),
        )

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        size = features[0].shape[-3:]
        fused = self.lateral[0](features[0])
        for lateral, feature in zip(self.lateral[1:], features[1:]):
            fused = fused + F.interpolate(lateral(feature), size=size, mode="trilinear", align_corners=False)
        return self.fuse(fused)


class PresenceHead(nn.Module):
    """ISD idea: is the prompted structure on this slab at all? Reads pooled, detached features."""

    def __init__(self, width: int):
        super().__init__()
        self.image = nn.Linear(2 * width, width)
        self.query = nn.Linear(width, width)
        self.out = nn.Sequential(nn.GELU(), nn.Linear(width, 1))

    def forward(self, pixel: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """``pixel`` [B, C, z, x, y], mask queries [K, C] → slab logits [B, K, z]."""
        # gradient cut off: presence never shapes the segmentation features nor the queries
        pixel, query = pixel.detach(), query.detach()
        pooled = torch.cat([pixel.mean(dim=(-1, -2)), pixel.amax(dim=(-1, -2))], dim=1).transpose(1, 2)  # B z 2C
        joint = self.image(pooled)[:, None] * self.query(query)[None, :, None]  # B K z C
        return self.out(joint).squeeze(-1)


class CTTextSegmenter(TextQueries, nn.Module):
    """Decoder of ``ct-v1`` (the frozen encoder runs outside it, once per window)."""

    def __init__(self, cfg: CTSegmenterConfig):
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        self.pixel_decoder = PixelDecoder(cfg.feature_channels, w)
        self.init_text_queries(cfg.text_dim, w, cfg.keys)
        self.image_stem = nn.Sequential(
            Conv3d(1, cfg.image_width, 3, padding=1), nn.GELU(),
            Conv3d(cfg.image_width, cfg.image_width, 3, padding=1), nn.GELU(),
        )
        self.refine_head = nn.Sequential(
            Conv3d(cfg.image_width + 1, cfg.refine_width, (1, 3, 3), padding=(0, 1, 1)), nn.GELU(),
            Conv3d(cfg.refine_width, cfg.refine_width, (3, 1, 1), padding=(1, 0, 0)), nn.GELU(),
            Conv3d(cfg.refine_width, 1, 1),
        )
        nn.init.zeros_(self.refine_head[-1].weight)
        nn.init.zeros_(self.refine_head[-1].bias)
        self.presence = PresenceHead(w)

    @property
    def upsample(self) -> tuple[int, int, int]:
        """Full-resolution voxels per layer1 voxel, (Z, X, Y)."""
        return FEATURE_STRIDES[0]

    def pixel_features(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.pixel_decoder(features)

    def coarse_logits(self, pixel: torch.Tensor, text: torch.Tensor, keys: Sequence[str | None]) -> torch.Tensor:
        """Mask logits on the layer1 grid: ``pixel`` [B, C, z, x, y], ``text`` [K, D] → [B, K, z, x, y]."""
        weights, offset = self.folded_queries(text, keys)  # K C, K
        logits = torch.einsum("bczxy,kc->bkzxy", pixel, weights)
        return logits + offset[None, :, None, None, None] + self.mask_bias

    def image_features(self, image: torch.Tensor) -> torch.Tensor:
        """Shared full-resolution features of the [0, 1] image ``[B, 1, Z, X, Y]``."""
        return self.image_stem(image)

    def refine(self, image_features: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        """Full-resolution logits for one prompt: ``coarse`` [B, 1, z, x, y] upsampled to the image's
        grid plus a learned correction from the image features (zero at initialisation)."""
        up = F.interpolate(coarse, size=image_features.shape[-3:], mode="trilinear", align_corners=False)
        return up + self.refine_head(torch.cat([image_features, up], dim=1))

    def window_outputs(self, features: Sequence[torch.Tensor], window: torch.Tensor) -> list[torch.Tensor]:
        """What a window's cache holds: pixel features and image features."""
        return [self.pixel_features(features), self.image_features(window)]

    def presence_logits(self, pixel: torch.Tensor, text: torch.Tensor, keys: Sequence[str | None]) -> torch.Tensor:
        return self.presence(pixel, self.queries(text, keys))


def build_ct_segmenter(cfg: CTSegmenterConfig | None = None) -> CTTextSegmenter:
    return CTTextSegmenter(cfg or CTSegmenterConfig())
