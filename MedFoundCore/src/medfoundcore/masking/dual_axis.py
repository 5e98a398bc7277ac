"""NEMESIS / MAESIL superpatch dual masking and noise-enhanced reconstruction.

Both papers train a 3D MAE on local *superpatches* (e.g. 128³ chunks) instead of whole volumes, and
mask tokens in two complementary, anisotropy-aware ways that run in parallel:
- plane-wise: whole token planes perpendicular to an axis are removed (e.g. entire axial slabs), so
  the model must interpolate across slices;
- axis-wise: whole token lines parallel to an axis are removed (e.g. every token of an (x, y) column
  through all slices), so the model must infer along-axis content from the in-plane neighbourhood.
NEMESIS also reconstructs the clean volume from a noisy input (``noise_enhanced``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from monai.data.utils import dense_patch_slices

from ..errors import InputError



def superpatch_slices(shape: Sequence[int], size: int | Sequence[int] = 128, stride: int | Sequence[int] | None = None) -> list[tuple[slice, ...]]:
    """Slices tiling a volume of ``shape`` (D, H, W) with superpatches of ``size`` (clipped to the volume).

    ``stride`` defaults to ``size`` (no overlap); the last tile on each axis is shifted inwards so that
    every tile lies inside the volume.
    """
    shape = tuple(int(s) for s in shape)
    sizes = (size,) * 3 if isinstance(size, int) else tuple(size)
    sizes = tuple(min(int(c), s) for c, s in zip(sizes, shape))
    strides = sizes if stride is None else ((stride,) * 3 if isinstance(stride, int) else tuple(stride))
    return [tuple(slice(int(s.start), int(s.stop)) for s in sl) for sl in dense_patch_slices(shape, sizes, strides)]


def _choose(n: int, ratio: float, generator: torch.Generator | None) -> torch.Tensor:
    if not 0.0 <= ratio <= 1.0:
        raise InputError(f"mask ratio must be in [0, 1], got {ratio}")
    chosen = torch.zeros(n, dtype=torch.bool)
    chosen[torch.randperm(n, generator=generator)[: int(round(ratio * n))]] = True
    return chosen


def plane_mask(grid: Sequence[int], ratio: float, axis: int = 0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Bool token mask [d, h, w]: ``round(ratio·grid[axis])`` whole planes perpendicular to ``axis`` removed."""
    grid = tuple(int(g) for g in grid)
    planes = _choose(grid[axis], ratio, generator)
    view = [1, 1, 1]
    view[axis] = grid[axis]
    return planes.view(view).expand(grid).contiguous()


def axis_mask(grid: Sequence[int], ratio: float, axis: int = 0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Bool token mask [d, h, w]: ``round(ratio·L)`` whole lines parallel to ``axis`` removed (L lines in all)."""
    grid = tuple(int(g) for g in grid)
    cross = [g for a, g in enumerate(grid) if a != axis]
    lines = _choose(cross[0] * cross[1], ratio, generator).view(cross)
    return lines.unsqueeze(axis).expand(grid).contiguous()


@dataclass
class DualMask:
    """The two parallel token masks of one sample (True = removed)."""

    plane: torch.Tensor
    axis: torch.Tensor


def dual_mask(
    grid: Sequence[int],
    plane_ratio: float = 0.5,
    axis_ratio: float = 0.5,
    axis: int = 0,
    generator: torch.Generator | None = None,
) -> DualMask:
    """Plane-wise and axis-wise masks of a token ``grid`` for the two parallel MAE branches."""
    return DualMask(plane_mask(grid, plane_ratio, axis, generator), axis_mask(grid, axis_ratio, axis, generator))


def remove_tokens(tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop masked tokens: tokens [B, N, C] and mask [d, h, w] (N = d·h·w) → (visible [B, Nv, C], kept indices [Nv])."""
    flat = mask.reshape(-1).to(tokens.device)
    if flat.numel() != tokens.shape[1]:
        raise InputError(f"token mask has {flat.numel()} cells but there are {tokens.shape[1]} tokens")
    keep = torch.nonzero(~flat).flatten()
    return tokens[:, keep], keep


def restore_tokens(visible: torch.Tensor, keep: torch.Tensor, n: int, fill: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`remove_tokens` for the decoder: put ``visible`` back, ``fill`` [C] everywhere else."""
    b, _, c = visible.shape
    out = fill.to(visible.dtype).expand(b, n, c).clone()
    out[:, keep] = visible
    return out


def noise_enhanced(x: torch.Tensor, sigma: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """NEMESIS noise-enhanced input: ``x + σ·N(0, 1)`` (the reconstruction target stays the clean ``x``)."""
    if sigma < 0:
        raise InputError(f"noise sigma must be >= 0, got {sigma}")
    device = generator.device if generator is not None else x.device
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=device)
    return x + sigma * noise.to(x.device)
