"""3D deformable cross-attention (3DME eq. 8): each query reads K learned points of a value volume.

``DeformAttn(Q, V) = W [ sum_k A_k · V(p + Δp_k) ]`` where ``p`` is the query's own position, the
offsets ``Δp_k`` and weights ``A_k`` (softmax over the K points, per head) are linear functions of the
query, and ``V(·)`` is read with trilinear interpolation (``grid_sample``). Cost is O(N·K) instead of
the O(N²) of full attention, which is what makes fusing two 16³ feature volumes affordable.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

Grid = tuple[int, int, int]


def reference_points(grid: Grid, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Voxel centres of a (d, h, w) grid in grid_sample's normalised (x, y, z) order, shape [N, 3].

    Uses the ``align_corners=False`` convention (centre of voxel i is ``(2i + 1)/n − 1``) so that a
    query grid and a value grid of different sizes that cover the same field of view line up.
    """
    axes = [(2 * torch.arange(n, device=device, dtype=dtype) + 1) / n - 1 for n in grid]
    zz, yy, xx = torch.meshgrid(*axes, indexing="ij")
    return torch.stack((xx, yy, zz), dim=-1).reshape(-1, 3)


def _spread_bias(heads: int, points: int) -> torch.Tensor:
    """Initial offsets (voxels): the K points of each head start 1, 2, … voxels out along ±x, ±y, ±z.

    Heads cycle through the six directions with different phases so that, before any training, the
    module already looks at a neighbourhood rather than K copies of the same voxel.
    """
    directions = torch.tensor(
        [[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], dtype=torch.float32
    )
    bias = torch.zeros(heads, points, 3)
    for h in range(heads):
        for k in range(points):
            bias[h, k] = directions[(h + k) % 6] * (k // 6 + 1)
    return bias.flatten()


class DeformableCrossAttention3D(nn.Module):
    """Multi-head single-scale deformable cross-attention between two 3D token grids.

    Args:
        dim: token width (query and value).
        heads: attention heads; each has its own offsets and weights. ``dim`` must divide by it.
        points: K, sampling points per head and query.
    """

    def __init__(self, dim: int, heads: int = 8, points: int = 4) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.dim, self.heads, self.points = dim, heads, points
        self.offsets = nn.Linear(dim, heads * points * 3)
        self.weights = nn.Linear(dim, heads * points)
        self.value_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.offsets.weight)
        with torch.no_grad():
            self.offsets.bias.copy_(_spread_bias(self.heads, self.points))
        nn.init.zeros_(self.weights.weight)
        nn.init.zeros_(self.weights.bias)
        for lin in (self.value_proj, self.out_proj):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def sampling_locations(self, query: torch.Tensor, query_grid: Grid, value_grid: Grid) -> torch.Tensor:
        """Normalised sampling points ``p + Δp_k``: [B, heads, Nq, K, 3] in (x, y, z) order, float32.

        Kept in float32 even under bf16/fp16 autocast: bf16 has ~3 significant digits, i.e. positions
        off by a few hundredths of a voxel on a 16³ grid, and the offsets' gradient is a position slope.
        """
        b, nq, _ = query.shape
        ref = reference_points(query_grid, query.device, torch.float32)  # [Nq, 3]
        off = self.offsets(query).float().view(b, nq, self.heads, self.points, 3)
        d, h, w = value_grid
        voxel = torch.tensor([2.0 / w, 2.0 / h, 2.0 / d], device=query.device)  # one value-grid voxel
        loc = ref[None, :, None, None, :] + off * voxel
        return loc.permute(0, 2, 1, 3, 4)

    def forward(self, query: torch.Tensor, query_grid: Grid, value: torch.Tensor, value_grid: Grid) -> torch.Tensor:
        """Attend from ``query`` [B, Nq, C] (laid out on ``query_grid``) into ``value`` [B, Nv, C]."""
        b, nq, c = query.shape
        d, h, w = value_grid
        if value.shape[1] != d * h * w or query.shape[1] != math.prod(query_grid):
            raise ValueError("token counts do not match the given grids")
        ch = c // self.heads
        v = self.value_proj(value).view(b, d, h, w, self.heads, ch)
        v = v.permute(0, 4, 5, 1, 2, 3).reshape(b * self.heads, ch, d, h, w)
        loc = self.sampling_locations(query, query_grid, value_grid).reshape(b * self.heads, nq, self.points, 1, 3)
        attn = self.weights(query).float().view(b, nq, self.heads, self.points).softmax(-1)
        attn = attn.permute(0, 2, 1, 3).reshape(b * self.heads, 1, nq, self.points, 1)
        with torch.autocast(device_type=query.device.type, enabled=False):
            sampled = F.grid_sample(v.float(), loc, mode="bilinear", padding_mode="zeros", align_corners=False)
            out = (sampled * attn).sum(dim=(3, 4))  # [B*heads, ch, Nq]
        out = out.view(b, self.heads, ch, nq).permute(0, 3, 1, 2).reshape(b, nq, c)
        return self.out_proj(out.to(query.dtype))
