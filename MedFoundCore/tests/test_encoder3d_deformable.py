"""Deformable cross-attention (3DME eq. 8): the sampling maths against independent interpolation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from medfoundcore.models.deformable_attention import DeformableCrossAttention3D, reference_points

GRID = (5, 6, 7)
N = 5 * 6 * 7


def _module(dim=8, heads=2, points=3, seed=0) -> DeformableCrossAttention3D:
    torch.manual_seed(seed)
    return DeformableCrossAttention3D(dim, heads, points)


def _projected_values(m: DeformableCrossAttention3D, value: torch.Tensor) -> np.ndarray:
    """value_proj(value) as [heads, ch, d, h, w] numpy (batch 1)."""
    v = m.value_proj(value)[0].detach().numpy()  # [N, C]
    return v.reshape(*GRID, m.heads, m.dim // m.heads).transpose(3, 4, 0, 1, 2)


def test_reference_points_are_voxel_centres() -> None:
    ref = reference_points((2, 1, 4), torch.device("cpu"), torch.float32)
    assert ref.shape == (8, 3)
    # x of the 4 columns: (2i+1)/4 - 1; z of the 2 slices: ±0.5; single y row at 0
    np.testing.assert_allclose(ref[:4, 0].numpy(), [-0.75, -0.25, 0.25, 0.75])
    np.testing.assert_allclose(ref[[0, 4], 2].numpy(), [-0.5, 0.5])
    assert (ref[:, 1] == 0).all()


def test_zero_offsets_read_the_value_at_the_query_position() -> None:
    m = _module()
    with torch.no_grad():
        m.offsets.bias.zero_()
    q, v = torch.randn(1, N, 8), torch.randn(1, N, 8)
    out = m(q, GRID, v, GRID)
    expect = m.out_proj(m.value_proj(v))  # Σ_k A_k = 1 and every point sits on its own voxel
    torch.testing.assert_close(out, expect, atol=1e-5, rtol=1e-5)


def test_fractional_offsets_equal_trilinear_interpolation_by_scipy() -> None:
    m = _module(seed=1)
    g = torch.Generator().manual_seed(0)
    offsets = (torch.rand(m.heads, m.points, 3, generator=g) - 0.5) * 3.0  # voxels, (x, y, z), some leave the grid
    logits = torch.randn(m.heads, m.points, generator=g)
    with torch.no_grad():
        m.offsets.bias.copy_(offsets.flatten())
        m.weights.bias.copy_(logits.flatten())
    q, v = torch.randn(1, N, 8), torch.randn(1, N, 8)
    out = m(q, GRID, v, GRID)

    vals = _projected_values(m, v)
    att = logits.softmax(-1).numpy()
    zz, yy, xx = np.meshgrid(*(np.arange(n) for n in GRID), indexing="ij")
    heads = []
    for h in range(m.heads):
        acc = np.zeros((m.dim // m.heads, N))
        for k in range(m.points):
            ox, oy, oz = offsets[h, k].numpy()
            coords = np.stack([(zz + oz).ravel(), (yy + oy).ravel(), (xx + ox).ravel()])
            for c in range(m.dim // m.heads):
                sampled = ndimage.map_coordinates(vals[h, c], coords, order=1, mode="grid-constant", cval=0.0)
                acc[c] += att[h, k] * sampled
        heads.append(acc)
    mixed = torch.from_numpy(np.concatenate(heads, axis=0).T[None]).float()
    expect = m.out_proj(mixed)
    torch.testing.assert_close(out, expect, atol=1e-4, rtol=1e-4)


def test_offsets_and_weights_receive_gradients() -> None:
    m = _module()
    q = torch.randn(1, N, 8)
    v = torch.randn(1, N, 8)
    with torch.no_grad():
        m.offsets.bias.add_(0.3)  # off the voxel centres, where trilinear sampling has a slope
    m(q, GRID, v, GRID).pow(2).sum().backward()
    assert m.offsets.weight.grad.abs().sum() > 0
    assert m.weights.weight.grad.abs().sum() > 0


def test_query_and_value_grids_may_differ() -> None:
    m = _module()
    out = m(torch.randn(2, 8, 8), (2, 2, 2), torch.randn(2, N, 8), GRID)
    assert out.shape == (2, 8, 8)
    with pytest.raises(ValueError):
        m(torch.randn(2, 9, 8), (2, 2, 2), torch.randn(2, N, 8), GRID)
