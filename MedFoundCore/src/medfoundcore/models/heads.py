"""Downstream heads for the 3DME encoder: a 3D UNet decoder for segmentation, attention pooling for labels.

3DME §V replaces the pretraining decoder by a 3D U-Net decoder (segmentation) or an attention-based
classifier, with the encoder frozen or fine-tuned. The UNet head takes its skips from the Conv3D
branch's pyramid (strides 2, 4, …) and one full-resolution block on the input, and its bottleneck from
all fusion-layer hidden states, so it sees several encoder depths as UNETR does.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.blocks import UnetOutBlock, UnetrBasicBlock, UnetrUpBlock
from torch import nn

from ..errors import InputError
from .backbones.encoder3d import DualBranchEncoder3D, Encoder3DOutput, build_encoder3d, tokens_to_map

NORM = "instance"


class UNetHead3D(nn.Module):
    """3D UNet decoder from :class:`Encoder3DOutput` to logits [B, num_classes, D, H, W].

    Args:
        dim: encoder token width.
        conv_channels: widths of the encoder's Conv3D pyramid (``cfg.conv_channels``).
        num_hidden: number of hidden states (fusion layers) concatenated into the bottleneck.
        in_chans: input image channels (for the full-resolution skip).
        num_classes: output channels (background included).
        feature_size: width of the full-resolution stage; stage i has ``feature_size·2^i``.
    """

    def __init__(
        self,
        dim: int,
        conv_channels: tuple[int, ...],
        num_hidden: int,
        in_chans: int,
        num_classes: int,
        feature_size: int = 16,
    ) -> None:
        super().__init__()
        levels = len(conv_channels)
        widths = [feature_size * 2**i for i in range(levels + 1)]  # full res .. stride 2^levels
        self.bottleneck = UnetrBasicBlock(3, dim * max(num_hidden, 1), widths[-1], 3, 1, NORM, res_block=True)
        self.skips = nn.ModuleList(
            UnetrBasicBlock(3, ch, widths[i + 1], 3, 1, NORM, res_block=True) for i, ch in enumerate(conv_channels[:-1])
        )
        self.input_skip = UnetrBasicBlock(3, in_chans, widths[0], 3, 1, NORM, res_block=True)
        self.ups = nn.ModuleList(
            UnetrUpBlock(3, widths[i + 1], widths[i], 3, 2, NORM, res_block=True) for i in reversed(range(levels))
        )
        self.out = UnetOutBlock(3, widths[0], num_classes)

    def forward(self, x: torch.Tensor, enc: Encoder3DOutput) -> torch.Tensor:
        states = enc.hidden_states or [enc.tokens]
        deep = torch.cat([tokens_to_map(h, enc.grid) for h in states], dim=1)
        y = self.bottleneck(deep)
        skips = [self.input_skip(x)] + [blk(f) for blk, f in zip(self.skips, enc.conv_features[:-1])]
        for up, skip in zip(self.ups, reversed(skips)):
            y = up(y, skip)
        return self.out(y)


class _EncoderHolder(nn.Module):
    """Shared frozen/trainable encoder handling for the task models."""

    def __init__(self, encoder: DualBranchEncoder3D, freeze_encoder: bool) -> None:
        super().__init__()
        self.encoder = encoder
        self.freeze_encoder = freeze_encoder
        if freeze_encoder:
            encoder.requires_grad_(False)

    def train(self, mode: bool = True) -> _EncoderHolder:
        super().train(mode)
        if self.freeze_encoder:
            self.encoder.eval()  # keep BatchNorm statistics of a frozen encoder fixed
        return self

    def encode(self, x: torch.Tensor) -> Encoder3DOutput:
        if self.freeze_encoder:
            with torch.no_grad():
                return self.encoder(x)
        return self.encoder(x)


class SegmentationModel3D(_EncoderHolder):
    """Encoder + :class:`UNetHead3D`: volume [B, C, D, H, W] → logits [B, num_classes, D, H, W]."""

    def __init__(
        self, encoder: DualBranchEncoder3D, num_classes: int, freeze_encoder: bool = True, feature_size: int = 16
    ) -> None:
        super().__init__(encoder, freeze_encoder)
        self.num_classes, self.feature_size = num_classes, feature_size
        cfg = encoder.cfg
        self.head = UNetHead3D(
            cfg.dim, cfg.conv_channels, len(cfg.fusion_layers), cfg.in_chans, num_classes, feature_size
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x, self.encode(x))


class AttentionPoolClassifier(nn.Module):
    """Learned queries attend over all tokens (one SDPA cross-attention), then a linear layer.

    Attention pooling lets a volume label depend on a small region (a lesion) instead of the mean of
    thousands of mostly-normal tokens.
    """

    def __init__(self, dim: int, num_classes: int, heads: int = 4, queries: int = 1) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.query = nn.Parameter(torch.randn(1, queries, dim) * 0.02)
        self.norm = nn.LayerNorm(dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.fc = nn.Sequential(nn.LayerNorm(dim * queries), nn.Linear(dim * queries, num_classes))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, N, C] → logits [B, num_classes]."""
        b, n, c = tokens.shape
        h = self.heads
        k, v = self.kv(self.norm(tokens)).view(b, n, 2, h, c // h).permute(2, 0, 3, 1, 4)
        q = self.query.expand(b, -1, -1).reshape(b, -1, h, c // h).transpose(1, 2)
        pooled = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, -1, c)
        return self.fc(self.proj(pooled).flatten(1))


class ClassificationModel3D(_EncoderHolder):
    """Encoder + :class:`AttentionPoolClassifier`: volume → logits [B, num_classes]."""

    def __init__(self, encoder: DualBranchEncoder3D, num_classes: int, freeze_encoder: bool = True, heads: int = 4) -> None:
        super().__init__(encoder, freeze_encoder)
        self.num_classes, self.heads = num_classes, heads
        self.head = AttentionPoolClassifier(encoder.cfg.dim, num_classes, heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encode(x).tokens)


def task_config(model: SegmentationModel3D | ClassificationModel3D) -> dict[str, Any]:
    """Card-ready description (encoder config + head) from which :func:`build_task_model3d` rebuilds ``model``."""
    if isinstance(model, SegmentationModel3D):
        head: dict[str, Any] = {"head": "segmentation", "feature_size": model.feature_size}
    else:
        head = {"head": "classification", "heads": model.heads}
    return {"encoder": model.encoder.cfg.to_dict(), "num_classes": model.num_classes, **head}


def build_task_model3d(config: dict[str, Any], freeze_encoder: bool = True) -> SegmentationModel3D | ClassificationModel3D:
    """Rebuild a fine-tuned model (card kind ``finetuned3d``) from :func:`task_config`'s dict."""
    encoder = build_encoder3d(config["encoder"])
    if config["head"] == "segmentation":
        return SegmentationModel3D(encoder, config["num_classes"], freeze_encoder, config.get("feature_size", 16))
    if config["head"] == "classification":
        return ClassificationModel3D(encoder, config["num_classes"], freeze_encoder, config.get("heads", 4))
    raise InputError(f"finetuned3d config: unknown head {config['head']!r} (expected segmentation or classification)")
