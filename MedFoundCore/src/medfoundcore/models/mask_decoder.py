"""Text-conditioned transformer mask decoder (BiomedParse-V §3.1).

Tokens = [projected text embedding(s); learnable segmentation queries]. Each layer cross-attends the
tokens to one FPN level (strides 16, 8, 4, repeated for ``rounds`` loops: 9 layers by default), then
self-attends and applies an FFN (Mask2Former order). The mask for a prompt comes from the
segmentation queries, softly selected by their affinity to the text token (a differentiable form
of SEEM's grounding-query selection), dotted with the stride-4 mask features. Optionally the first
``edge_queries`` queries predict the object boundary instead (§3.5, for instance splitting).

The decoder does not gate presence; it returns every layer's (queries, text) hidden states so the
ISD (``isd.py``) can read them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MaskDecoder", "DecoderOutput", "sine_position_encoding"]

_SCALE_ORDER = (2, 1, 0)  # indices into [s4, s8, s16, s32]: strides 16, 8, 4


@dataclass
class DecoderOutput:
    """Low-resolution (stride 4) logits per (image, prompt) pair and the per-layer hidden states."""

    mask_logits: torch.Tensor  # [N, h, w]
    edge_logits: torch.Tensor | None  # [N, h, w]
    states: list[tuple[torch.Tensor, torch.Tensor]]  # per layer: (queries [N, Q, D], text [N, T, D])


def sine_position_encoding(h: int, w: int, dim: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Fixed 2D sine/cosine position encoding, [h*w, dim] (DETR convention, normalised coordinates)."""
    quarter = dim // 4
    freq = 10000 ** (-torch.arange(quarter, device=device, dtype=torch.float32) / max(quarter, 1))
    ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h * 2 * math.pi
    xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w * 2 * math.pi
    y = ys[:, None] * freq[None]
    x = xs[:, None] * freq[None]
    pe = torch.cat(
        [
            y.sin()[:, None].expand(h, w, quarter), y.cos()[:, None].expand(h, w, quarter),
            x.sin()[None].expand(h, w, quarter), x.cos()[None].expand(h, w, quarter),
        ],
        dim=-1,
    ).reshape(h * w, 4 * quarter)
    if pe.shape[1] < dim:
        pe = F.pad(pe, (0, dim - pe.shape[1]))
    return pe.to(dtype)


class DecoderLayer(nn.Module):
    """Cross-attention to one feature level -> self-attention among tokens -> FFN (post-norm, residual).

    ``x`` holds P prompts per image (image-major, ``[B*P, L, D]``) while ``memory`` holds each image
    once (``[B, M, D]``). Cross-attention never mixes query tokens, so the P prompts' tokens are
    attended as one longer sequence per image: the memory's key/value projections -- the decoder's
    dominant cost -- are computed once per image, not once per prompt.
    """

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float = 0.0):
        super().__init__()
        self.cross = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(), nn.Linear(ffn_dim, dim))
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(3))

    def forward(self, x: torch.Tensor, pos: torch.Tensor, memory: torch.Tensor, memory_pos: torch.Tensor) -> torch.Tensor:
        n, length, dim = x.shape
        grouped = (x + pos).reshape(memory.shape[0], -1, dim)  # [B, P*L, D]
        attended = self.cross(grouped, memory + memory_pos, memory, need_weights=False)[0]
        x = self.norms[0](x + attended.reshape(n, length, dim))
        q = x + pos
        x = self.norms[1](x + self.self_attn(q, q, x, need_weights=False)[0])
        return self.norms[2](x + self.ffn(x))


class MaskDecoder(nn.Module):
    """Queries + text cross-attend to FPN levels in rounds; outputs stride-4 mask (and edge) logits."""

    def __init__(
        self,
        dim: int,
        text_dim: int = 384,
        num_queries: int = 16,
        rounds: int = 3,
        heads: int = 8,
        ffn_dim: int | None = None,
        edge_queries: int = 0,
        dropout: float = 0.0,
        text_film: bool = True,
    ):
        super().__init__()
        if not 0 <= edge_queries < num_queries:
            raise ValueError(f"edge_queries ({edge_queries}) must be in [0, num_queries={num_queries})")
        self.dim = dim
        self.num_queries = num_queries
        self.edge_queries = edge_queries
        self.text_proj = nn.Sequential(nn.Linear(text_dim, dim), nn.GELU(), nn.Linear(dim, dim), nn.LayerNorm(dim))
        self.query_feat = nn.Embedding(num_queries, dim)
        self.query_pos = nn.Embedding(num_queries + 1, dim)  # last row: position of the text token(s)
        self.level_embed = nn.Embedding(len(_SCALE_ORDER), dim)
        self.layers = nn.ModuleList(
            DecoderLayer(dim, heads, ffn_dim or 4 * dim, dropout) for _ in range(rounds * len(_SCALE_ORDER))
        )
        self.norm = nn.LayerNorm(dim)
        self.mask_embed = _mlp(dim)
        self.edge_embed = _mlp(dim) if edge_queries else None
        # FiLM: the prompt scales/shifts the stride-4 mask features, so the mask itself depends on the
        # text (with query selection alone a briefly trained decoder returns one mask for every prompt).
        self.text_film = nn.Linear(dim, 2 * dim) if text_film else None
        if self.text_film is not None:
            nn.init.zeros_(self.text_film.weight)
            nn.init.zeros_(self.text_film.bias)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def forward(self, multiscale: list[torch.Tensor], mask_features: torch.Tensor, text: torch.Tensor) -> DecoderOutput:
        """multiscale: FPN maps [B, D, h_s, w_s] (strides 4..32); mask_features [B, D, h, w];
        text [N, T, text_dim] with N = B * P, image-major (P prompts per image; features are not repeated)."""
        n, t = text.shape[:2]
        b = mask_features.shape[0]
        if n % b:
            raise ValueError(f"{n} prompt rows cannot be split evenly over {b} images")
        memories = []
        for level, idx in enumerate(_SCALE_ORDER):
            f = multiscale[idx]
            pos = sine_position_encoding(f.shape[-2], f.shape[-1], self.dim, f.device, f.dtype)
            memories.append((f.flatten(2).transpose(1, 2), (pos + self.level_embed.weight[level])[None]))
        text_tokens = self.text_proj(text.to(mask_features.dtype))
        # queries start as learnable content + the prompt (paper §3.1: text "combined with" the queries)
        queries = self.query_feat.weight[None] + text_tokens.mean(dim=1, keepdim=True)
        x = torch.cat([text_tokens, queries], dim=1)
        pos = torch.cat([self.query_pos.weight[-1:].expand(t, -1), self.query_pos.weight[:-1]], dim=0)[None]
        states = []
        for i, layer in enumerate(self.layers):
            memory, memory_pos = memories[i % len(memories)]
            x = layer(x, pos, memory, memory_pos)
            states.append((x[:, t:], x[:, :t]))
        x = self.norm(x)
        text_out, query_out = x[:, :t].mean(dim=1), x[:, t:]
        film = self.text_film(text_tokens.mean(dim=1)).chunk(2, dim=-1) if self.text_film is not None else None
        e = self.edge_queries
        mask_logits = self._predict(query_out[:, e:], text_out, self.mask_embed, mask_features, film)
        edge_logits = self._predict(query_out[:, :e], text_out, self.edge_embed, mask_features, film) if e else None
        return DecoderOutput(mask_logits, edge_logits, states)

    def _predict(self, queries, text, head: nn.Module, mask_features: torch.Tensor, film) -> torch.Tensor:
        """Mask logits [N, h, w] = embedding · FiLM(mask features), without materialising N feature maps.

        FiLM scales/shifts the features per prompt: e · (f ⊙ (1 + γ) + β) = (e ⊙ (1 + γ)) · f + e · β.
        """
        weights = torch.softmax(torch.einsum("nqd,nd->nq", queries, text) / math.sqrt(self.dim), dim=1)
        embedding = torch.einsum("nq,nqd->nd", weights, head(queries))
        offset = torch.zeros_like(embedding[:, 0])
        if film is not None:  # the grounded text token is a mask query of its own (SEEM-style)
            embedding = embedding + head(text)
            gamma, beta = film
            offset = (embedding * beta).sum(-1)
            embedding = embedding * (1 + gamma)
        b = mask_features.shape[0]
        per_image = embedding.reshape(b, -1, embedding.shape[-1])
        logits = torch.einsum("bpd,bdhw->bphw", per_image, mask_features)
        return logits.flatten(0, 1) + offset[:, None, None]


def _mlp(dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))
