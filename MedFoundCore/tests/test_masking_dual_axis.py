"""NEMESIS/MAESIL dual masking: whole planes / whole axis lines removed; superpatches; noisy input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medfoundcore.errors import InputError
from medfoundcore.io import load_volume
from medfoundcore.masking.dual_axis import (
    axis_mask,
    dual_mask,
    noise_enhanced,
    plane_mask,
    remove_tokens,
    restore_tokens,
    superpatch_slices,
)

GRID = (8, 6, 10)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_plane_mask_removes_whole_planes(axis: int) -> None:
    m = plane_mask(GRID, 0.5, axis, torch.Generator().manual_seed(axis))
    other = tuple(a for a in range(3) if a != axis)
    per_plane = m.float().mean(dim=other)  # 1 for a removed plane, 0 for a kept one
    assert set(per_plane.tolist()) <= {0.0, 1.0}
    assert int(per_plane.sum()) == round(0.5 * GRID[axis])


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_axis_mask_removes_whole_lines_along_the_axis(axis: int) -> None:
    m = axis_mask(GRID, 0.3, axis, torch.Generator().manual_seed(10 + axis))
    along = m.float().mean(dim=axis)  # each line is all-removed or all-kept
    assert set(along.unique().tolist()) <= {0.0, 1.0}
    n_lines = along.numel()
    assert int(along.sum()) == round(0.3 * n_lines)
    # and no plane perpendicular to the axis is removed whole (it is not a plane mask)
    assert not m.all(dim=tuple(a for a in range(3) if a != axis)).any()


def test_dual_mask_is_seeded_and_ratios_hold_over_seeds() -> None:
    a = dual_mask(GRID, 0.5, 0.4, generator=torch.Generator().manual_seed(3))
    b = dual_mask(GRID, 0.5, 0.4, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.plane, b.plane) and torch.equal(a.axis, b.axis)
    ratios = [dual_mask(GRID, 0.5, 0.4, generator=torch.Generator().manual_seed(s)).axis.float().mean() for s in range(20)]
    assert abs(float(torch.stack(ratios).mean()) - round(0.4 * 60) / 60) < 1e-6


def test_remove_and_restore_tokens_round_trip() -> None:
    tokens = torch.arange(2 * 480 * 3, dtype=torch.float32).view(2, 480, 3)
    m = plane_mask(GRID, 0.25, 0, torch.Generator().manual_seed(0))
    visible, keep = remove_tokens(tokens, m)
    assert visible.shape == (2, 480 - int(m.sum()), 3)
    fill = torch.full((3,), -1.0)
    back = restore_tokens(visible, keep, 480, fill)
    flat = m.reshape(-1)
    assert torch.equal(back[:, ~flat], tokens[:, ~flat])
    assert (back[:, flat] == -1).all()
    with pytest.raises(InputError, match="tokens"):
        remove_tokens(tokens[:, :100], m)


def test_superpatches_tile_a_real_ct(shared_data) -> None:
    vol = load_volume(shared_data / "totalsegmentator" / "ts_ct_full_img.nii.gz")
    shape = vol.array.shape  # (112, 101, 122)
    tiles = superpatch_slices(shape, 64)
    covered = np.zeros(shape, dtype=bool)
    for sl in tiles:
        assert tuple(s.stop - s.start for s in sl) == (64, 64, 64)
        covered[sl] = True
    assert covered.all()
    small = superpatch_slices((30, 101, 122), 64)
    assert all(sl[0] == slice(0, 30) for sl in small)  # clipped on the short axis


def test_noise_enhanced_adds_seeded_gaussian_noise_of_sigma() -> None:
    x = torch.zeros(1, 1, 32, 32, 32)
    n1 = noise_enhanced(x, 0.1, torch.Generator().manual_seed(0))
    n2 = noise_enhanced(x, 0.1, torch.Generator().manual_seed(0))
    assert torch.equal(n1, n2)
    assert float(n1.std()) == pytest.approx(0.1, rel=0.03)
    assert abs(float(n1.mean())) < 0.005
    with pytest.raises(InputError):
        noise_enhanced(x, -1.0)
