"""Mask queries from prompt text, shared by the text-prompted 3D models (``ct-v1``, ``mri-v1``).

A prompt's query is its MiniLM embedding through a small MLP (``text_query``) plus, for each structure
the model was trained on, a learned vector (``key_query``, row ``key_index[key]``); a FiLM of the
embedding (``text_film``) modulates the pixel features. FiLM is folded into the query,
<(1 + γ) ⊙ p + β, q> = <p, (1 + γ) ⊙ q> + <β, q>, so K prompts cost K dot products per voxel and no
K-fold copy of the features. A mixin (methods only), so each model keeps its own parameter names.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class TextQueries:
    """Call :meth:`init_text_queries` in ``__init__`` (after ``nn.Module.__init__``); needs ``self.cfg.width``."""

    def init_text_queries(self, text_dim: int, width: int, keys: Sequence[str]) -> None:
        self.text_query = nn.Sequential(nn.Linear(text_dim, width), nn.GELU(), nn.Linear(width, width))
        self.text_film = nn.Linear(text_dim, 2 * width)
        nn.init.zeros_(self.text_film.weight)
        nn.init.zeros_(self.text_film.bias)
        self.mask_bias = nn.Parameter(torch.tensor(-2.0))
        # Random, not zero: MiniLM embeddings of organ names are close to one another (cosine ~0.5), so
        # text-only queries start almost equal and the pixel features get one shared gradient; with 60+
        # structures that symmetry did not break in 200 steps (coarse loss flat at 1.03, docs/ct.md).
        # Near-orthogonal random queries separate the structures from the first step.
        self.key_index = {key: i for i, key in enumerate(keys)}
        self.key_query = nn.Parameter(torch.randn(len(keys), width))

    def queries(self, text: torch.Tensor, keys: Sequence[str | None]) -> torch.Tensor:
        """Mask queries [K, C] of prompts given as MiniLM embeddings [K, D] and their vocabulary keys:
        the text MLP's output plus the learned query of each trained structure (an untrained one,
        ``None`` or unknown key, has the text path alone)."""
        if len(keys) != len(text):
            raise ValueError(f"{len(text)} text embeddings but {len(keys)} keys")
        query = self.text_query(text)
        rows = [self.key_index.get(k, -1) if k is not None else -1 for k in keys]
        table = torch.cat([self.key_query, query.new_zeros(1, query.shape[1])])  # last row: untrained
        return query + table[torch.tensor(rows, device=text.device)]

    def folded_queries(self, text: torch.Tensor, keys: Sequence[str | None]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per prompt, the weights [K, C] and offset [K] of its mask logit: <pixel, weights> + offset."""
        gamma, beta = self.text_film(text).chunk(2, dim=-1)
        query = self.queries(text, keys)
        scale = self.cfg.width**0.5
        return (1 + gamma) * query / scale, (beta * query).sum(-1) / scale


def with_new_keys(init: dict[str, torch.Tensor], net: TextQueries) -> dict[str, torch.Tensor]:
    """A base model's weights with its learned queries extended by the fresh rows ``net`` drew for
    structures the base was not trained on (fine-tuning on a user's new structure). ``net``'s keys
    must list the base's keys first, in the base's order."""
    old = init["key_query"]
    return {**init, "key_query": torch.cat([old, net.key_query.detach()[len(old):]])}
