"""3DME dual-branch 3D encoder (ViT + Conv3D fused by deformable cross-attention) and its MAE.

Paper: 3DME §III-B/C. The ViT branch sees 8³ patches with a separable 3D sin-cos position encoding
(eq. 1) through pre-norm transformer layers (eq. 2–3); the Conv3D branch (eq. 4–5) sees voxels. After
each *fusion layer* the two streams exchange information through two deformable cross-attentions
(eq. 6–7, see :mod:`..deformable_attention`) and a residual FFN, and the fused tokens continue through
the ViT. :class:`MaskedAutoencoder3D` adds the 3-layer ViT decoder used for masked pretraining.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
import os
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ...config import dataclass_from_dict
from ...errors import InputError, ModelError
from ...masking.voxels import broadcast_mask
from ..deformable_attention import DeformableCrossAttention3D, Grid

if TYPE_CHECKING:  # pragma: no cover - typing only
    from ...registry import ModelCard

PosEmbedMode = Literal["concat", "sum"]


@dataclass
class Encoder3DConfig:
    """Everything needed to rebuild a :class:`DualBranchEncoder3D` (stored in model cards).

    ``fusion_layers`` are 1-based ViT layer indices after which the branches are fused (paper: 3/6/9/12).
    ``conv_channels`` are the widths of the stride-2 convolutions; there are log2(patch_size) of them so
    that the Conv3D branch ends on the same grid as the patch tokens. ``pos_embed`` is ``"concat"`` (each
    axis encoded in its own third of the channels, the default) or ``"sum"`` (eq. 1 as printed, where
    the three axes are added and so ``PE(x, y, z) == PE(y, x, z)``). ``context_tokens`` > 0 adds that many
    learned NEMESIS tokens (NT): global tokens that every ViT layer reads and writes beside the patch
    tokens, so each layer can aggregate context from the whole crop (0, the default, is plain 3DME).
    """

    img_size: int = 128
    patch_size: int = 8
    in_chans: int = 1
    dim: int = 768
    depth: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    fusion_layers: tuple[int, ...] = (3, 6, 9, 12)
    deform_points: int = 4
    conv_channels: tuple[int, ...] = (64, 128, 256)
    decoder_depth: int = 3
    decoder_dim: int | None = None
    decoder_heads: int | None = None
    pos_embed: PosEmbedMode = "concat"
    context_tokens: int = 0
    grad_checkpointing: bool = False

    def __post_init__(self) -> None:
        self.fusion_layers = tuple(int(i) for i in self.fusion_layers)
        self.conv_channels = tuple(int(c) for c in self.conv_channels)
        self.validate()

    def validate(self) -> None:
        """Raise :class:`InputError` for inconsistent sizes, before any weights are allocated."""
        p = self.patch_size
        if p < 2 or p & (p - 1):
            raise InputError(f"encoder3d config: patch_size must be a power of two >= 2, got {p}")
        if len(self.conv_channels) != int(math.log2(p)):
            raise InputError(
                f"encoder3d config: patch_size {p} needs {int(math.log2(p))} conv_channels "
                f"(one per stride-2 convolution), got {list(self.conv_channels)}"
            )
        if self.dim % self.heads:
            raise InputError(f"encoder3d config: dim {self.dim} is not divisible by heads {self.heads}")
        bad = [i for i in self.fusion_layers if not 1 <= i <= self.depth]
        if bad:
            raise InputError(f"encoder3d config: fusion_layers {bad} outside 1..depth={self.depth}")
        if self.pos_embed not in ("concat", "sum"):
            raise InputError(f"encoder3d config: pos_embed must be 'concat' or 'sum', got {self.pos_embed!r}")
        if self.context_tokens < 0:
            raise InputError(f"encoder3d config: context_tokens must be >= 0, got {self.context_tokens}")
        if self.img_size % p:
            raise InputError(f"encoder3d config: img_size {self.img_size} is not a multiple of patch_size {p}")

    @property
    def dec_dim(self) -> int:
        return self.decoder_dim or self.dim

    @property
    def dec_heads(self) -> int:
        return self.decoder_heads or self.heads

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["fusion_layers"] = list(self.fusion_layers)
        d["conv_channels"] = list(self.conv_channels)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Encoder3DConfig:
        return dataclass_from_dict(cls, data, "encoder3d")

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> Encoder3DConfig:
        """``"paper"`` (128³, 768 wide, 12 layers, GPU) or ``"tiny"`` (64³, 96 wide, 4 layers, CPU)."""
        if name not in PRESETS:
            raise InputError(f"unknown encoder3d preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})


PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    "tiny": dict(
        img_size=64, dim=96, depth=4, heads=4, fusion_layers=(1, 2, 3, 4), deform_points=4,
        conv_channels=(16, 32, 64), decoder_depth=3, decoder_dim=96, decoder_heads=4,
    ),
}


# --------------------------------------------------------------------------- position encoding
def sincos_1d(pos: torch.Tensor, dim: int) -> torch.Tensor:
    """Eq. 1 for one axis: channel k is sin(pos·w_i) (k even) or cos(pos·w_i) (k odd), w_i = 10000^(-2i/dim), i = k//2."""
    i = torch.arange(dim, device=pos.device) // 2
    w = torch.pow(10000.0, -2.0 * i.to(torch.float64) / dim)
    ang = pos.to(torch.float64)[:, None] * w[None, :]
    even = (torch.arange(dim, device=pos.device) % 2) == 0
    return torch.where(even, torch.sin(ang), torch.cos(ang)).to(torch.float32)


def sincos_3d(grid: Grid, dim: int, mode: PosEmbedMode = "concat", device: torch.device | None = None) -> torch.Tensor:
    """Separable 3D sin-cos position encoding of a (d, h, w) token grid, shape [d·h·w, dim].

    Computed analytically for any grid, so crops of other sizes than the pretraining size get exact
    encodings (no interpolation). ``"sum"`` adds the three axis codes (eq. 1); ``"concat"`` gives each
    axis its own ``2·(dim//6)`` channels (zeros pad the rest) so that axes stay distinguishable.
    """
    coords = [torch.arange(n, device=device) for n in grid]
    if mode == "sum":
        parts = [sincos_1d(c, dim) for c in coords]
    else:
        sub = 2 * (dim // 6)
        parts = [sincos_1d(c, sub) for c in coords]
    pz, py, px = parts
    d, h, w = grid
    if mode == "sum":
        pe = pz[:, None, None] + py[None, :, None] + px[None, None, :]
    else:
        pe = torch.cat(
            (
                pz[:, None, None].expand(d, h, w, -1),
                py[None, :, None].expand(d, h, w, -1),
                px[None, None, :].expand(d, h, w, -1),
            ),
            dim=-1,
        )
        pe = F.pad(pe, (0, dim - pe.shape[-1]))
    return pe.reshape(d * h * w, dim)


# --------------------------------------------------------------------------- building blocks
class Mlp(nn.Sequential):
    def __init__(self, dim: int, ratio: float) -> None:
        hidden = int(dim * ratio)
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


class Attention(nn.Module):
    """Multi-head self-attention on PyTorch's fused ``scaled_dot_product_attention`` (flash/mem-efficient on GPU)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class TransformerBlock(nn.Module):
    """Pre-norm ViT layer: z' = MSA(LN(z)) + z (eq. 2); z = MLP(LN(z')) + z' (eq. 3)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm2, self.mlp = nn.LayerNorm(dim), Mlp(dim, mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ConvBranch3D(nn.Module):
    """Eq. 4–5: stride-2 Conv3D+BN+ReLU stages (3 for 8³ patches), then a 3×3×3 Conv3D to the token width."""

    def __init__(self, in_chans: int, channels: tuple[int, ...], dim: int) -> None:
        super().__init__()
        stages, prev = [], in_chans
        for ch in channels:
            stages.append(
                nn.Sequential(
                    nn.Conv3d(prev, ch, 3, stride=2, padding=1, bias=False), nn.BatchNorm3d(ch), nn.ReLU(inplace=True)
                )
            )
            prev = ch
        self.stages = nn.ModuleList(stages)
        self.align = nn.Conv3d(prev, dim, 3, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Return the pyramid (strides 2, 4, …, patch) and the aligned map F⁴ [B, dim, d, h, w]."""
        pyramid = []
        for stage in self.stages:
            x = stage(x)
            pyramid.append(x)
        return pyramid, self.align(x)


class FusionBlock(nn.Module):
    """Eq. 6–7 plus the residual FFN and FC: conv map F and token map Z update each other.

    F̂ = F + DA(LN(F), LN(Z));  Ẑ = Z + DA(LN(Z), LN(F̂));  Ẑ ← Ẑ + FFN(LN(Ẑ));  Z_out = FC(Ẑ).
    The FC starts as the identity so that inserting fusion does not scramble the token stream at init.
    """

    def __init__(self, dim: int, heads: int, points: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm_f1, self.norm_z1 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.norm_z2, self.norm_f2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.conv_from_vit = DeformableCrossAttention3D(dim, heads, points)
        self.vit_from_conv = DeformableCrossAttention3D(dim, heads, points)
        self.norm_ffn, self.ffn = nn.LayerNorm(dim), Mlp(dim, mlp_ratio)
        self.fc = nn.Linear(dim, dim)
        nn.init.eye_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)

    def forward(self, z: torch.Tensor, f: torch.Tensor, grid: Grid) -> tuple[torch.Tensor, torch.Tensor]:
        """z, f: [B, N, C] tokens on the same ``grid``; returns (fused tokens, updated conv tokens)."""
        f = f + self.conv_from_vit(self.norm_f1(f), grid, self.norm_z1(z), grid)
        z = z + self.vit_from_conv(self.norm_z2(z), grid, self.norm_f2(f), grid)
        z = z + self.ffn(self.norm_ffn(z))
        return self.fc(z), f


# --------------------------------------------------------------------------- encoder
@dataclass
class Encoder3DOutput:
    """What the encoder gives its heads.

    tokens: [B, N, C] final tokens (N = d·h·w, row-major over (d, h, w)).
    grid: (d, h, w) token grid; voxel (z, y, x) of the input lies in token (z//p, y//p, x//p).
    hidden_states: [B, N, C] tokens after each fusion layer (before the final LayerNorm), for
        UNETR-style heads that read several depths.
    conv_features: Conv3D-branch pyramid, [B, c_i, D/2^i, H/2^i, W/2^i] for i = 1..log2(p).
    fused_conv: [B, C, d, h, w] conv-branch map after the last fusion.
    context: [B, K, C] the NEMESIS tokens after the final LayerNorm (None when the config has none).
    """

    tokens: torch.Tensor
    grid: Grid
    hidden_states: list[torch.Tensor]
    conv_features: list[torch.Tensor]
    fused_conv: torch.Tensor
    context: torch.Tensor | None = None

    def token_map(self) -> torch.Tensor:
        """Tokens as a feature volume [B, C, d, h, w]."""
        return tokens_to_map(self.tokens, self.grid)


def tokens_to_map(tokens: torch.Tensor, grid: Grid) -> torch.Tensor:
    """[B, N, C] → [B, C, d, h, w]."""
    b, _, c = tokens.shape
    return tokens.transpose(1, 2).reshape(b, c, *grid)


def map_to_tokens(fmap: torch.Tensor) -> torch.Tensor:
    """[B, C, d, h, w] → [B, N, C]."""
    return fmap.flatten(2).transpose(1, 2)


def pad_to_patch_multiple(x: torch.Tensor, patch: int) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """Zero-pad the far side of each spatial axis of [B, C, D, H, W] to a multiple of ``patch``.

    Returns the padded tensor and the (D, H, W) pads; crop outputs with ``[..., :D, :H, :W]``.
    """
    pads = tuple((-s) % patch for s in x.shape[-3:])
    pd, ph, pw = pads
    return F.pad(x, (0, pw, 0, ph, 0, pd)), pads  # type: ignore[return-value]


class DualBranchEncoder3D(nn.Module):
    """The 3DME encoder: ViT over 8³ patches + Conv3D branch, fused after ``cfg.fusion_layers``.

    Accepts any input whose sides are multiples of ``cfg.patch_size`` (not only ``cfg.img_size``): the
    position encoding is computed for the actual grid, so crops of other sizes work for click features.
    """

    def __init__(self, cfg: Encoder3DConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.grad_checkpointing = cfg.grad_checkpointing
        self.patch_embed = nn.Conv3d(cfg.in_chans, cfg.dim, cfg.patch_size, stride=cfg.patch_size)
        self.blocks = nn.ModuleList(TransformerBlock(cfg.dim, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.conv_branch = ConvBranch3D(cfg.in_chans, cfg.conv_channels, cfg.dim)
        self.fusions = nn.ModuleDict(
            {str(i): FusionBlock(cfg.dim, cfg.heads, cfg.deform_points, cfg.mlp_ratio) for i in cfg.fusion_layers}
        )
        self.norm = nn.LayerNorm(cfg.dim)
        self.context_tokens = nn.Parameter(torch.randn(1, cfg.context_tokens, cfg.dim) * 0.02) if cfg.context_tokens else None
        self._pe_cache: dict[tuple, torch.Tensor] = {}

    @property
    def dim(self) -> int:
        return self.cfg.dim

    @property
    def img_size(self) -> int:
        """Side of the cubic crops the encoder was (pre)trained on; sliding windows use this size."""
        return self.cfg.img_size

    @property
    def patch_size(self) -> int:
        return self.cfg.patch_size

    def pos_embed(self, grid: Grid, device: torch.device) -> torch.Tensor:
        key = (grid, str(device))
        if key not in self._pe_cache:
            self._pe_cache[key] = sincos_3d(grid, self.cfg.dim, self.cfg.pos_embed, device)
        return self._pe_cache[key]

    def check_input(self, x: torch.Tensor) -> None:
        p, c = self.cfg.patch_size, self.cfg.in_chans
        if x.dim() != 5 or x.shape[1] != c:
            raise InputError(f"encoder3d input must be [B, {c}, D, H, W], got shape {tuple(x.shape)}")
        if any(s % p for s in x.shape[-3:]):
            raise InputError(
                f"encoder3d input sides {tuple(x.shape[-3:])} must be multiples of the patch size {p}; "
                "pad with medfoundcore.models.backbones.encoder3d.pad_to_patch_multiple"
            )

    def _run(self, module: nn.Module, *args: Any) -> Any:
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(module, *args, use_reentrant=False)
        return module(*args)

    def forward(self, x: torch.Tensor) -> Encoder3DOutput:
        """x: [B, in_chans, D, H, W] → :class:`Encoder3DOutput`."""
        self.check_input(x)
        p = self.cfg.patch_size
        grid: Grid = (x.shape[2] // p, x.shape[3] // p, x.shape[4] // p)
        z = map_to_tokens(self.patch_embed(x))
        z = z + self.pos_embed(grid, x.device).to(z.dtype)
        k = self.cfg.context_tokens
        if self.context_tokens is not None:
            z = torch.cat([self.context_tokens.to(z.dtype).expand(z.shape[0], -1, -1), z], dim=1)
        pyramid, f_map = self.conv_branch(x)
        f = map_to_tokens(f_map)
        hidden: list[torch.Tensor] = []
        for i, block in enumerate(self.blocks, start=1):
            z = self._run(block, z)
            fusion = self.fusions[str(i)] if str(i) in self.fusions else None
            if fusion is not None:  # fusion is spatial: only the patch tokens meet the conv branch
                patches, f = self._run(fusion, z[:, k:], f, grid)
                z = torch.cat([z[:, :k], patches], dim=1)
                hidden.append(patches)
        out = self.norm(z)
        context = out[:, :k] if k else None
        return Encoder3DOutput(out[:, k:], grid, hidden, pyramid, tokens_to_map(f, grid), context)


# --------------------------------------------------------------------------- masked autoencoder
class MaskedAutoencoder3D(nn.Module):
    """Encoder + 3DME decoder (§III-C): ViT layers over tokens + PE, linear to patch voxels, 1×1×1 Conv3D.

    Masking is in voxel space (blocks may be smaller than a patch, e.g. 4³ in the first stage), so the
    whole volume is encoded with masked voxels replaced by one learned fill value (SimMIM-style) rather
    than dropping tokens.
    """

    def __init__(self, cfg: Encoder3DConfig, encoder: DualBranchEncoder3D | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = encoder or DualBranchEncoder3D(cfg)
        dd = cfg.dec_dim
        self.mask_value = nn.Parameter(torch.zeros(1))
        self.dec_embed = nn.Linear(cfg.dim, dd) if dd != cfg.dim else nn.Identity()
        self.dec_blocks = nn.ModuleList(
            TransformerBlock(dd, cfg.dec_heads, cfg.mlp_ratio) for _ in range(cfg.decoder_depth)
        )
        self.dec_norm = nn.LayerNorm(dd)
        self.to_voxels = nn.Linear(dd, cfg.patch_size**3 * cfg.in_chans)  # W_D
        self.out_conv = nn.Conv3d(cfg.in_chans, cfg.in_chans, 1)
        self._pe_cache: dict[tuple, torch.Tensor] = {}

    def _decoder_pe(self, grid: Grid, device: torch.device) -> torch.Tensor:
        """Z'_enc = Z_enc + PE_3D: the encoder's code when widths match, else one at the decoder width."""
        if self.cfg.dec_dim == self.cfg.dim:
            return self.encoder.pos_embed(grid, device)
        key = (grid, str(device))
        if key not in self._pe_cache:
            self._pe_cache[key] = sincos_3d(grid, self.cfg.dec_dim, self.cfg.pos_embed, device)
        return self._pe_cache[key]

    def mask_input(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Replace masked voxels (mask True; [D,H,W], [B,D,H,W] or [B,1,D,H,W]) by the learned fill value."""
        m = broadcast_mask(mask, x)
        return torch.where(m, self.mask_value.to(x.dtype), x)

    def decode(self, enc: Encoder3DOutput) -> torch.Tensor:
        """Tokens → volume [B, in_chans, D, H, W]."""
        p, c = self.cfg.patch_size, self.cfg.in_chans
        z = self.dec_embed(enc.tokens)
        z = z + self._decoder_pe(enc.grid, z.device).to(z.dtype)
        for block in self.dec_blocks:
            z = self.encoder._run(block, z)
        v = self.to_voxels(self.dec_norm(z))  # [B, N, p³·c]
        b = v.shape[0]
        d, h, w = enc.grid
        v = v.view(b, d, h, w, c, p, p, p).permute(0, 4, 1, 5, 2, 6, 3, 7).reshape(b, c, d * p, h * p, w * p)
        return self.out_conv(v)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Reconstruct the full volume from ``x`` with ``mask``ed voxels hidden (or ``x`` as given if None)."""
        if mask is not None:
            x = self.mask_input(x, mask)
        return self.decode(self.encoder(x))


# --------------------------------------------------------------------------- builders (model cards)
def _as_config(cfg: Encoder3DConfig | dict[str, Any] | str) -> Encoder3DConfig:
    if isinstance(cfg, Encoder3DConfig):
        return cfg
    if isinstance(cfg, str):
        return Encoder3DConfig.preset(cfg)
    return Encoder3DConfig.from_dict(dict(cfg))


def build_encoder3d(cfg: Encoder3DConfig | dict[str, Any] | str) -> DualBranchEncoder3D:
    """Rebuild the encoder from a config, its ``to_dict()`` (a model card's ``config``) or a preset name."""
    return DualBranchEncoder3D(_as_config(cfg))


def build_mae3d(cfg: Encoder3DConfig | dict[str, Any] | str) -> MaskedAutoencoder3D:
    """Rebuild the pretraining MAE; its ``encoder.`` sub-state-dict loads into :func:`build_encoder3d`."""
    return MaskedAutoencoder3D(_as_config(cfg))


def load_encoder(name_or_path: str | os.PathLike[str]) -> tuple[DualBranchEncoder3D, ModelCard]:
    """Rebuild a pretrained encoder (card kind ``encoder3d``) in eval mode, weights sha256-verified.

    Used by fine-tuning, interactive (click) inference and the benchmark alike.
    """
    from ...registry import load_model  # local: building an encoder needs no model store

    state, card = load_model(name_or_path)
    if card.kind != "encoder3d":
        raise ModelError(f"model {name_or_path!s} is a {card.kind!r}, not a pretrained 3D encoder (kind 'encoder3d')")
    encoder = build_encoder3d(card.config)
    encoder.load_state_dict(state)
    return encoder.eval(), card


def save_random_encoder(reference: str | os.PathLike[str], directory: str | os.PathLike[str], seed: int = 0) -> os.PathLike[str]:
    """``reference``'s architecture and card with freshly initialised weights (torch seed ``seed``), saved
    as a model in ``directory``: the random-initialisation control of any claim that pretraining helps."""
    import dataclasses

    from ...registry import save_model

    _, card = load_encoder(reference)
    torch.manual_seed(seed)
    encoder = build_encoder3d(card.config)
    card = dataclasses.replace(card, name="random-init-encoder", description=f"architecture of {card.name}, random weights (control)",
                               metrics={}, training_data={}, extra={}, sha256="", created="")  # fmt: skip
    return save_model(encoder.state_dict(), card, directory, overwrite=True)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
