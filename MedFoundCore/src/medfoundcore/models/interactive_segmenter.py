"""The interactive (click) model: class-agnostic 3D segmentation from include / exclude points,
strokes, a box and the current mask, on the frozen CT foundation encoder's features.

It is never told what the structure is. Three parts, each computed as rarely as possible:
- ``pixel_features`` / ``image_features``: the encoder's layer1..4 fused on the 6 mm grid and a small
  full-resolution image stem; ONCE per window, cached, shared by every interaction.
- ``coarse_logits``: prompt maps and similarity maps (:mod:`.prompt_encoder`) beside the pixel
  features, through a small 3D U-Net on the 6 mm grid (24 mm at its bottom: a click's context spans
  the organ). Runs at every interaction, on a region around the prompts only.
- ``refine``: the coarse logit upsampled to 1.5 × 1.5 × 3 mm plus a learned correction from the
  image stem and the point maps, inside the coarse mask's box only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .backbones.ct_foundation import FEATURE_CHANNELS, FEATURE_STRIDES
from .ct_segmenter import ChannelNorm3d, PixelDecoder
from .fast_conv import Conv3d
from .prompt_encoder import CHANNELS, SIMILARITY_CHANNELS, SIMILARITY_LEVELS, PromptEncoder, Prompts, prompt_maps, similarity_maps

#: The U-Net halves the 6 mm grid this many times: regions must be multiples of 2**DEPTH.
DEPTH = 2


@dataclass
class InteractiveConfig:
    """Decoder sizes; the encoder is fixed (``backbones.ct_foundation``)."""

    width: int = 32  # pixel features (the 3×3×3 fusion at this width is most of a training step)
    prompt_width: int = 16
    unet_widths: Sequence[int] = (24, 48, 64)
    image_width: int = 8
    refine_width: int = 16
    feature_channels: Sequence[int] = field(default_factory=lambda: list(FEATURE_CHANNELS))

    def to_dict(self) -> dict:
        return {**asdict(self), "unet_widths": list(self.unet_widths), "feature_channels": list(self.feature_channels)}

    @classmethod
    def from_dict(cls, data: dict) -> InteractiveConfig:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


class ResBlock3d(nn.Module):
    """Two 3×3×3 convolutions with per-voxel channel norm (independent of the field of view) and a skip."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.body = nn.Sequential(
            Conv3d(cin, cout, 3, padding=1), ChannelNorm3d(cout), nn.GELU(),
            Conv3d(cout, cout, 3, padding=1), ChannelNorm3d(cout),
        )
        self.skip = nn.Identity() if cin == cout else Conv3d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.body(x) + self.skip(x))


class CoarseUNet(nn.Module):
    """A small U-Net on the 6 mm grid (levels at 6, 12, 24 mm) → one mask logit per voxel. Skips are
    added, not concatenated, and the input is projected 1×1×1 first: the full-resolution level is
    most of the cost, and it runs at every click."""

    def __init__(self, cin: int, widths: Sequence[int]):
        super().__init__()
        widths = list(widths)
        self.stem = nn.Sequential(Conv3d(cin, widths[0], 1), ChannelNorm3d(widths[0]), nn.GELU())
        self.down = nn.ModuleList([ResBlock3d(widths[0], widths[0])] + [ResBlock3d(a, b) for a, b in zip(widths[:-1], widths[1:])])
        self.lift = nn.ModuleList(Conv3d(b, a, 1) for a, b in zip(widths[:-1], widths[1:]))
        self.up = nn.ModuleList(ResBlock3d(a, a) for a in widths[:-1])
        self.out = Conv3d(widths[0], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.avg_pool3d(x, 2))
            skips.append(x)
        for level in reversed(range(len(self.up))):
            skip = skips[level]
            x = self.up[level](skip + F.interpolate(self.lift[level](x), size=skip.shape[-3:], mode="trilinear", align_corners=False))
        return self.out(x)


class InteractiveSegmenter(nn.Module):
    """Decoder of the interactive model (the frozen encoder runs outside it, once per window)."""

    def __init__(self, cfg: InteractiveConfig):
        super().__init__()
        self.cfg = cfg
        self.pixel_decoder = PixelDecoder(cfg.feature_channels, cfg.width)
        self.prompt_encoder = PromptEncoder(cfg.prompt_width)
        self.mask_decoder = CoarseUNet(cfg.width + cfg.prompt_width, cfg.unet_widths)
        # A direct path from the raw prompt and similarity maps to the logit: "near the click and alike
        # to it" is a mask from the first step, which the U-Net then corrects (without it the decoder
        # first collapsed to "nothing anywhere" for a hundred steps).
        self.shortcut = Conv3d(len(CHANNELS) + SIMILARITY_CHANNELS, 1, 1)
        # Per-channel statistics of the frozen encoder's similarity levels over the training bodies
        # (set once by training, shipped with the weights): similarity is measured on standardised
        # features. (On the fused pixel features, even through a learned projection, it was ~0.98
        # everywhere and carried nothing; docs/interactive.md.)
        for level in SIMILARITY_LEVELS:
            channels = cfg.feature_channels[level - 1]
            self.register_buffer(f"key_mean{level}", torch.zeros(channels))
            self.register_buffer(f"key_std{level}", torch.ones(channels))
        self.image_stem = nn.Sequential(
            Conv3d(1, cfg.image_width, 3, padding=1), nn.GELU(),
            Conv3d(cfg.image_width, cfg.image_width, 3, padding=1), nn.GELU(),
        )
        self.refine_head = nn.Sequential(
            Conv3d(cfg.image_width + 3, cfg.refine_width, (1, 3, 3), padding=(0, 1, 1)), nn.GELU(),
            Conv3d(cfg.refine_width, cfg.refine_width, (3, 1, 1), padding=(1, 0, 0)), nn.GELU(),
            Conv3d(cfg.refine_width, 1, 1),
        )
        nn.init.zeros_(self.refine_head[-1].weight)
        nn.init.zeros_(self.refine_head[-1].bias)

    @property
    def upsample(self) -> tuple[int, int, int]:
        """Full-resolution voxels per 6 mm voxel, (Z, X, Y)."""
        return FEATURE_STRIDES[0]

    def pixel_features(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.pixel_decoder(features)

    def image_features(self, image: torch.Tensor) -> torch.Tensor:
        """Full-resolution features of the [0, 1] image ``[B, 1, Z, X, Y]``."""
        return self.image_stem(image)

    def set_key_statistics(self, stats: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Per-channel mean and std of each similarity level's encoder features (training data)."""
        for level, (mean, std) in stats.items():
            getattr(self, f"key_mean{level}").copy_(mean)
            getattr(self, f"key_std{level}").copy_(std.clamp_min(1e-6))

    def similarity_keys(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The frozen encoder's similarity levels of one region (``features``: its layer1..4 maps,
        ``[1, C, ...]`` each), standardised and unit length: ``[C, z, x, y]`` per level, no gradient."""
        keys = []
        for level in SIMILARITY_LEVELS:
            mean, std = getattr(self, f"key_mean{level}"), getattr(self, f"key_std{level}")
            f = features[level - 1][0].detach().float()
            keys.append(F.normalize((f - mean[:, None, None, None]) / std[:, None, None, None], dim=0))
        return keys

    def prompt_maps(self, prompts: Prompts, shape: Sequence[int], previous: torch.Tensor | None, device: torch.device) -> torch.Tensor:
        """Raw prompt maps ``[1, 7, *shape]`` of a region (prompts in its full-resolution voxel indices;
        ``previous`` its mask fraction per 6 mm voxel)."""
        return prompt_maps(prompts, shape, self.upsample, previous, device)[None]

    def similarity(self, keys: Sequence[torch.Tensor], prompts: Prompts, shape: Sequence[int], previous: torch.Tensor | None) -> torch.Tensor:
        """Similarity maps ``[1, 6, *shape]`` of a region from its :meth:`similarity_keys`."""
        strides = [FEATURE_STRIDES[level - 1] for level in SIMILARITY_LEVELS]
        return similarity_maps(keys, strides, prompts, shape, previous)[None]

    def window_outputs(self, features: Sequence[torch.Tensor], window: torch.Tensor) -> list[torch.Tensor]:
        """What a window's cache holds: pixel features, image features and the similarity keys."""
        return [self.pixel_features(features), self.image_features(window), *(k[None] for k in self.similarity_keys(features))]

    def coarse_logits(self, pixel: torch.Tensor, maps: torch.Tensor, similarity: torch.Tensor) -> torch.Tensor:
        """Mask logits on the 6 mm grid ``[1, 1, z, x, y]`` (each of z, x, y a multiple of 2**DEPTH)."""
        decoded = self.mask_decoder(torch.cat([pixel, self.prompt_encoder(maps, similarity)], dim=1))
        return decoded + self.shortcut(torch.cat([maps, similarity], dim=1))

    def refine(self, image_features: torch.Tensor, coarse: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
        """Full-resolution logits: ``coarse`` [1, 1, z, x, y] upsampled to the image features' grid
        plus a correction read from the image and the include / exclude point maps (zero at start)."""
        size = image_features.shape[-3:]
        up = F.interpolate(coarse, size=size, mode="trilinear", align_corners=False)
        near = F.interpolate(maps[:, :2], size=size, mode="trilinear", align_corners=False)
        return up + self.refine_head(torch.cat([image_features, up, near], dim=1))


def build_interactive_segmenter(cfg: InteractiveConfig | None = None) -> InteractiveSegmenter:
    return InteractiveSegmenter(cfg or InteractiveConfig())


__all__ = ["CHANNELS", "DEPTH", "InteractiveConfig", "InteractiveSegmenter", "build_interactive_segmenter"]
