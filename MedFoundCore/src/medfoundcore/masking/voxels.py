"""Voxel masks shared by the masking schemes, the MAE and the SSL losses."""

from __future__ import annotations

import torch

from ..errors import InputError


def broadcast_mask(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[D,H,W], [B,D,H,W] or [B,1,D,H,W] boolean mask → expanded to ``like`` [B, C, D, H, W]."""
    m = mask.to(device=like.device, dtype=torch.bool)
    if m.dim() == 3:
        m = m[None, None]
    elif m.dim() == 4:
        m = m[:, None]
    if m.dim() != 5 or m.shape[-3:] != like.shape[-3:]:
        raise InputError(f"mask shape {tuple(mask.shape)} does not match volume shape {tuple(like.shape)}")
    return m.expand_as(like)


