"""Independent Segmentation Discriminator (BiomedParse-V §3.4, eq. 4).

A dedicated classification query q runs in parallel to the mask decoder. After every decoder layer
l it reads the segmentation queries S_l and text tokens T_l:

    q_{l+1} = FFN(LN(q_l + CrossAttn(q_l, sg([S_l, T_l]))))

and a final linear layer gives the presence logit of the prompted object in the slice (omega =
sigmoid). ``stop_gradient=True`` is the paper's gradient cut-off: the presence loss, which sees
many negative slices, then cannot push the segmentation path; ``False`` is the ablation.
Implementation note: the update is written in pre-norm residual form,
q <- q + CrossAttn(LN(q), sg([S_l, T_l])); q <- q + FFN(LN(q)), with a final LN before the linear head
(``pre_norm=False`` gives the literal post-norm form, kept for the ablation).
The literal post-norm form of eq. 4 stacked nine times drowned the context in the learned query
(omega collapsed to the class prior for every prompt in our CPU overfitting runs); pre-norm keeps the
per-prompt evidence on the residual path and separates present from absent prompts within ~30 steps.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ISD"]


class _Update(nn.Module):
    def __init__(self, dim: int, heads: int, ffn_dim: int, pre_norm: bool = True):
        super().__init__()
        self.pre_norm = pre_norm
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(), nn.Linear(ffn_dim, dim))
        self.ffn_norm = nn.LayerNorm(dim)

    def forward(self, q: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        if not self.pre_norm:  # eq. 4 literally: q = FFN(LN(q + CrossAttn(q, ctx))), FFN with residual
            y = self.norm(q + self.attn(q, context, context, need_weights=False)[0])
            return self.ffn_norm(y + self.ffn(y))
        y = self.norm(q)
        q = q + self.attn(y, context, context, need_weights=False)[0]
        return q + self.ffn(self.ffn_norm(q))


class ISD(nn.Module):
    """Classification query updated after each decoder layer; ``forward(states) -> presence logits [N]``."""

    def __init__(
        self,
        dim: int,
        num_layers: int,
        heads: int = 8,
        ffn_dim: int | None = None,
        stop_gradient: bool = True,
        pre_norm: bool = True,
    ):
        super().__init__()
        self.stop_gradient = stop_gradient
        self.query = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.query, std=0.02)
        self.updates = nn.ModuleList(_Update(dim, heads, ffn_dim or 4 * dim, pre_norm) for _ in range(num_layers))
        # pre-norm needs a final LN; the post-norm layout (state-dict key "head.weight") is the original one
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 1)) if pre_norm else nn.Linear(dim, 1)

    def forward(self, states: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """states: per decoder layer (queries [N, Q, D], text [N, T, D]) -> presence logits [N]."""
        if len(states) != len(self.updates):
            raise ValueError(f"ISD built for {len(self.updates)} decoder layers, got {len(states)} states")
        n = states[0][0].shape[0]
        q = self.query.expand(n, -1, -1).to(states[0][0].dtype)
        for update, (seg, text) in zip(self.updates, states):
            context = torch.cat([seg, text], dim=1)
            if self.stop_gradient:
                context = context.detach()
            q = update(q, context)
        return self.head(q[:, 0]).squeeze(-1)
