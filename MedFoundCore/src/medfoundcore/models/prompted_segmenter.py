"""BiomedParse-V text-prompted 2D segmenter: image encoder + FPN + text-conditioned mask decoder + ISD.

Typical use by the inference engine (paper §3.5): encode the FVE images of a slice batch once,
then decode every prompt against the shared features::

    model = build_segmenter(card.config)            # or build_segmenter(SegmenterConfig(preset="tiny"))
    feats = model.encode_image(images)              # images [B, 3, H, W] float in [0, 255] (fve output)
    out = model.decode(feats, text)                 # text [B, P, 384] (TextEncoder, expanded over B)
    masks = model.final_masks(out)                  # bool [B, P, H, W] = raw mask * (omega > 0.5)

Training uses ``model(images, text)`` and :func:`medfoundcore.losses.segmentation.segmentation_loss`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from medfoundcore.config import dataclass_from_dict
from medfoundcore.errors import InputError
from medfoundcore.models.backbones.fpn import FPN
from medfoundcore.models.backbones.image_encoder import ENCODER_PRESETS, ImageEncoder
from medfoundcore.models.isd import ISD
from medfoundcore.models.mask_decoder import MaskDecoder

__all__ = [
    "SegmenterConfig",
    "ImageFeatures",
    "SegmenterOutput",
    "PromptedSegmenter",
    "build_segmenter",
    "DECODER_PRESETS",
]

_STRIDE = 32  # input sides are padded to a multiple of the coarsest stride

# hidden dim, heads, queries per preset (encoder widths live in backbones.image_encoder.ENCODER_PRESETS)
DECODER_PRESETS: dict[str, dict[str, int]] = {
    "tiny": {"hidden_dim": 64, "num_heads": 4, "num_queries": 8},
    "small": {"hidden_dim": 128, "num_heads": 4, "num_queries": 16},
    "base": {"hidden_dim": 192, "num_heads": 8, "num_queries": 32},
    "large": {"hidden_dim": 256, "num_heads": 8, "num_queries": 64},
}


@dataclass
class SegmenterConfig:
    """Everything needed to rebuild a :class:`PromptedSegmenter` (stored as ``card.config``).

    ``hidden_dim``/``num_heads``/``num_queries`` default to the preset's values (None = from preset).
    ``image_size`` is the training/inference side length the pipeline resizes slices to; ``fve_k`` the
    FVE order the model was trained with (k=1: 3 slices; the model itself accepts any in_chans image).
    """

    preset: str = "tiny"
    in_chans: int = 3
    image_size: int = 128
    text_dim: int = 384
    hidden_dim: int | None = None
    num_heads: int | None = None
    num_queries: int | None = None
    rounds: int = 3
    use_isd: bool = True
    isd_stop_gradient: bool = True
    isd_pre_norm: bool = True
    edge_queries: int = 0
    text_film: bool = True
    fve_k: int = 1
    extra: dict = field(default_factory=dict)  # free-form notes kept with the card (not used by the network)

    def __post_init__(self) -> None:
        if self.preset not in ENCODER_PRESETS:
            raise InputError(f"unknown model preset {self.preset!r}; choose one of {', '.join(ENCODER_PRESETS)}")
        for name, value in DECODER_PRESETS[self.preset].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if self.image_size % _STRIDE:
            raise InputError(f"image_size {self.image_size} must be a multiple of {_STRIDE}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> SegmenterConfig:
        return dataclass_from_dict(cls, data, "segmenter")


@dataclass
class ImageFeatures:
    """Per-image features shared by all prompts: FPN maps (strides 4..32), stride-4 mask features, sizes."""

    multiscale: list[torch.Tensor]
    mask_features: torch.Tensor
    image_size: tuple[int, int]  # (H, W) of the input before padding
    padded_size: tuple[int, int]

    @property
    def batch_size(self) -> int:
        return self.mask_features.shape[0]

    def select(self, index: torch.Tensor | slice) -> ImageFeatures:
        """A subset of images (e.g. to decode only slices that passed a cheap test)."""
        return ImageFeatures([f[index] for f in self.multiscale], self.mask_features[index], self.image_size, self.padded_size)


@dataclass
class SegmenterOutput:
    """Logits per (image, prompt): masks and optional edges at input resolution, presence per slice."""

    mask_logits: torch.Tensor  # [B, P, H, W]
    presence_logits: torch.Tensor  # [B, P]; omega = sigmoid(presence_logits)
    edge_logits: torch.Tensor | None = None  # [B, P, H, W]

    @property
    def presence(self) -> torch.Tensor:
        """omega = P(prompted object in the slice), [B, P]."""
        return torch.sigmoid(self.presence_logits)


class PromptedSegmenter(nn.Module):
    """BiomedParse-V network. Images are float in [0, 255] (``preprocess`` + ``fve`` output)."""

    def __init__(self, config: SegmenterConfig):
        super().__init__()
        self.config = config
        self.encoder = ImageEncoder(ENCODER_PRESETS[config.preset], in_chans=config.in_chans)
        self.fpn = FPN(self.encoder.out_channels, config.hidden_dim)
        self.decoder = MaskDecoder(
            config.hidden_dim,
            text_dim=config.text_dim,
            num_queries=config.num_queries,
            rounds=config.rounds,
            heads=config.num_heads,
            edge_queries=config.edge_queries,
            text_film=config.text_film,
        )
        self.isd = self._make_isd(config)

    def _make_isd(self, config: SegmenterConfig) -> ISD | None:
        if not config.use_isd:
            return None
        return ISD(
            config.hidden_dim, self.decoder.num_layers, heads=config.num_heads,
            ffn_dim=2 * config.hidden_dim, stop_gradient=config.isd_stop_gradient, pre_norm=config.isd_pre_norm,
        )

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """``nn.Module.load_state_dict``, also accepting weights of earlier layouts (post-norm ISD, no text FiLM).

        Weights trained before the ISD became pre-norm have ``isd.head.weight`` (no final LN) and cards
        without ``isd_pre_norm``; the ISD is rebuilt in that layout so those models keep loading.
        """
        if self.isd is not None and self.config.isd_pre_norm and "isd.head.weight" in state_dict:
            device = self.isd.query.device
            self.config = dataclasses.replace(self.config, isd_pre_norm=False)
            self.isd = self._make_isd(self.config).to(device)
        if self.decoder.text_film is not None and "decoder.text_film.weight" not in state_dict:
            # weights from before the text FiLM path: run the decoder exactly as they were trained
            self.config = dataclasses.replace(self.config, text_film=False)
            self.decoder.text_film = None
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    # -- image path -----------------------------------------------------------------------------
    def encode_image(self, images: torch.Tensor) -> ImageFeatures:
        """images [B, in_chans, H, W] in [0, 255] -> features (computed once, shared by every prompt)."""
        if images.ndim != 4 or images.shape[1] != self.config.in_chans:
            raise InputError(
                f"images must be [B, {self.config.in_chans}, H, W] (FVE-encoded slices); got {tuple(images.shape)}"
            )
        h, w = images.shape[-2:]
        x = images.float() / 127.5 - 1.0
        ph, pw = (-h) % _STRIDE, (-w) % _STRIDE
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), value=-1.0)
        multiscale, mask_features = self.fpn(self.encoder(x))
        return ImageFeatures(multiscale, mask_features, (h, w), (h + ph, w + pw))

    # -- prompt path ----------------------------------------------------------------------------
    def decode(self, features: ImageFeatures, text: torch.Tensor) -> SegmenterOutput:
        """Decode P prompts per image. text: [B, P, text_dim] (or [B, P, T, text_dim] for multi-token prompts)."""
        b = features.batch_size
        if text.ndim == 3:
            text = text[:, :, None]
        if text.ndim != 4 or text.shape[0] != b or text.shape[-1] != self.config.text_dim:
            raise InputError(
                f"text embeddings must be [B={b}, P, {self.config.text_dim}]; got {tuple(text.shape)}"
            )
        p = text.shape[1]
        out = self.decoder(features.multiscale, features.mask_features, text.reshape(b * p, *text.shape[2:]))
        masks = self._to_input_size(out.mask_logits, features)
        edges = self._to_input_size(out.edge_logits, features) if out.edge_logits is not None else None
        if self.isd is not None:
            presence = self.isd(out.states)
        else:  # no ISD: the most confident pixel decides (the paper's "ISD off" ablation)
            presence = masks.flatten(1).amax(dim=1)
        h, w = features.image_size
        return SegmenterOutput(
            masks.reshape(b, p, h, w),
            presence.reshape(b, p).float(),
            edges.reshape(b, p, h, w) if edges is not None else None,
        )

    @staticmethod
    def _to_input_size(logits: torch.Tensor, features: ImageFeatures) -> torch.Tensor:
        up = F.interpolate(logits[:, None].float(), size=features.padded_size, mode="bilinear", align_corners=False)
        h, w = features.image_size
        return up[:, 0, :h, :w]

    def forward(self, images: torch.Tensor, text: torch.Tensor) -> SegmenterOutput:
        return self.decode(self.encode_image(images), text)

    # -- outputs --------------------------------------------------------------------------------
    @staticmethod
    def final_masks(output: SegmenterOutput, threshold: float = 0.5, presence_threshold: float = 0.5) -> torch.Tensor:
        """Eq. 2: binary masks [B, P, H, W] = (sigmoid(mask) > threshold) * (omega > presence_threshold)."""
        present = output.presence > presence_threshold
        return (torch.sigmoid(output.mask_logits) > threshold) & present[..., None, None]

    def num_parameters(self) -> dict[str, int]:
        """Parameter counts per part (for model cards and docs)."""
        parts = {"encoder": self.encoder, "fpn": self.fpn, "decoder": self.decoder}
        if self.isd is not None:
            parts["isd"] = self.isd
        counts = {k: sum(p.numel() for p in m.parameters()) for k, m in parts.items()}
        counts["total"] = sum(counts.values())
        return counts


def build_segmenter(config: dict | SegmenterConfig) -> PromptedSegmenter:
    """Rebuild a segmenter from a config (a model card's ``config`` dict or a :class:`SegmenterConfig`)."""
    if isinstance(config, dict):
        config = SegmenterConfig.from_dict(config)
    return PromptedSegmenter(config)
