"""``mri-v1``: a text-prompted 3D segmenter for MRI at the image's native resolution (1 mm working grid).

Why not the CT model's design: the CT foundation encoder sees 6 mm per feature voxel, where a
hippocampal body is 3 mm and a cervical cord 6 mm wide, and the slice model squashes slices to a square.
Here a MONAI residual UNet computes per-voxel features at the full 1 mm grid ONCE per window; every
prompt is then one dot product per voxel with a query built from its MiniLM text embedding (plus a
learned query for each structure the model was trained on; ``text_query.TextQueries``, as in ``ct-v1``).
The presence head (BiomedParse-V's ISD idea) reads the features DETACHED and decides per slice whether
the prompted structure is in the window, so absent structures come back empty without its loss shaping
the segmentation path.

Which encoder: the trunk is trained from scratch. The measured alternatives did not beat random
initialisation on MRI (3DME-S0 vs the same head on a random encoder in the hippocampus benchmark;
docs/mri.md has the table).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
from monai.networks.nets import UNet
from torch import nn

from .ct_segmenter import TEXT_DIM, PresenceHead
from .text_query import TextQueries

#: The model card kind of this family (``registry.ModelCard.kind``), shared by training and inference.
MODEL_KIND = "mri-text-segmenter"


@dataclass
class MRISegmenterConfig:
    """Sizes of the trunk and the text head; ``keys`` are the structures with a learned query."""

    width: int = 32
    channels: Sequence[int] = field(default_factory=lambda: [16, 32, 64, 128])
    res_units: int = 1
    text_dim: int = TEXT_DIM
    keys: Sequence[str] = ()

    def to_dict(self) -> dict:
        return {**asdict(self), "channels": list(self.channels), "keys": list(self.keys)}

    @classmethod
    def from_dict(cls, data: dict) -> MRISegmenterConfig:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


class MRITextSegmenter(TextQueries, nn.Module):
    """Image ``[B, 1, Z, X, Y]`` in [0, 1] → per-voxel features; features × prompts → mask logits."""

    def __init__(self, cfg: MRISegmenterConfig):
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        channels = list(cfg.channels)
        self.trunk = UNet(3, 1, w, channels=channels, strides=(2,) * (len(channels) - 1), num_res_units=cfg.res_units, norm="instance")
        self.init_text_queries(cfg.text_dim, w, cfg.keys)
        self.presence = PresenceHead(w)

    @property
    def multiple(self) -> int:
        """Every spatial size the trunk takes must be a multiple of this."""
        return 2 ** (len(self.cfg.channels) - 1)

    def pixel_features(self, image: torch.Tensor) -> torch.Tensor:
        return self.trunk(image)

    def mask_logits(self, pixel: torch.Tensor, text: torch.Tensor, keys: Sequence[str | None]) -> torch.Tensor:
        """``pixel`` [B, C, Z, X, Y], ``text`` [K, D] → logits [B, K, Z, X, Y]."""
        weights, offset = self.folded_queries(text, keys)
        return torch.einsum("bczxy,kc->bkzxy", pixel, weights) + offset[None, :, None, None, None] + self.mask_bias

    def presence_logits(self, pixel: torch.Tensor, text: torch.Tensor, keys: Sequence[str | None]) -> torch.Tensor:
        """Per-slice presence logits [B, K, Z] (gradient cut off from the segmentation path)."""
        return self.presence(pixel, self.queries(text, keys))

    def forward(self, image: torch.Tensor, text: torch.Tensor, keys: Sequence[str | None]) -> tuple[torch.Tensor, torch.Tensor]:
        pixel = self.pixel_features(image)
        return self.mask_logits(pixel, text, keys), self.presence_logits(pixel, text, keys)


def build_mri_segmenter(cfg: MRISegmenterConfig | None = None) -> MRITextSegmenter:
    return MRITextSegmenter(cfg or MRISegmenterConfig())
