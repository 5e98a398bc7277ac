"""MiM multi-level masked volumes (§3.2) and cross-level InfoNCE (§3.3, eq. 4–6)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from medfoundcore.errors import InputError
from medfoundcore.io import load_volume
from medfoundcore.masking.mim import (
    cross_level_infonce,
    generate_mim_levels,
    multi_level_reconstruction,
    patch_boxes,
    token_mask,
)


@pytest.fixture(scope="module")
def ct(shared_data) -> torch.Tensor:
    arr = load_volume(shared_data / "totalsegmentator" / "ts_ct_full_img.nii.gz").array.astype(np.float32)
    return torch.from_numpy(arr)[None]  # [1, 112, 101, 122]


def _inside(child, parent) -> bool:
    return all(child[a] >= parent[a] and child[a + 3] <= parent[a + 3] for a in range(3))


def test_levels_nest_inside_masked_parent_patches(ct: torch.Tensor) -> None:
    g = torch.Generator().manual_seed(0)
    levels = generate_mim_levels(ct, levels=3, grid=4, ratio=0.6, gamma=2, out_size=(16, 16, 16), generator=g)
    assert [len(lv) for lv in levels] == [1, 2, 4]
    for lower, upper in zip(levels[1:], levels[:-1]):
        for child in lower:
            parent = upper[child.parent]
            assert child.box == patch_boxes(parent.box, 4)[child.parent_patch]
            assert parent.token_mask.view(-1)[child.parent_patch], "level l+1 must come from a MASKED patch"
            assert _inside(child.box, parent.box)
        # gamma draws without replacement: siblings never share a parent patch
        pairs = [(c.parent, c.parent_patch) for c in lower]
        assert len(set(pairs)) == len(pairs)


def test_child_volume_is_the_source_region_at_full_resolution(ct: torch.Tensor) -> None:
    g = torch.Generator().manual_seed(1)
    # a 112×100×120 level-1 crop cut 4 ways gives 28×25×30 patches: with out_size equal to that, the
    # level-2 volume must be the source voxels of its box, copied verbatim (no resampling).
    levels = generate_mim_levels(
        ct, levels=2, grid=4, ratio=0.5, gamma=1, out_size=(28, 25, 30), level1_size=(112, 100, 120), generator=g
    )
    top, child = levels[0][0], levels[1][0]
    assert top.volume.shape == (1, 28, 25, 30)  # level 1 is resized down to the network size
    z0, y0, x0, z1, y1, x1 = child.box
    assert (z1 - z0, y1 - y0, x1 - x0) == (28, 25, 30)
    assert torch.equal(child.volume, ct[:, z0:z1, y0:y1, x0:x1])


def test_token_mask_ratio_voxel_mask_and_determinism(ct: torch.Tensor) -> None:
    assert int(token_mask(6, 0.6, torch.Generator().manual_seed(0)).sum()) == round(0.6 * 216)
    a = generate_mim_levels(ct, 2, grid=6, gamma=3, out_size=(24, 24, 24), generator=torch.Generator().manual_seed(5))
    b = generate_mim_levels(ct, 2, grid=6, gamma=3, out_size=(24, 24, 24), generator=torch.Generator().manual_seed(5))
    assert [v.box for lv in a for v in lv] == [v.box for lv in b for v in lv]
    vm = a[0][0].voxel_mask()
    assert vm.shape == (24, 24, 24)
    # 24/6 = 4-voxel tokens: the voxel mask is the token mask repeated 4× per axis
    expect = a[0][0].token_mask.repeat_interleave(4, 0).repeat_interleave(4, 1).repeat_interleave(4, 2)
    assert torch.equal(vm, expect)


def test_too_deep_levels_raise_an_actionable_error(ct: torch.Tensor) -> None:
    with pytest.raises(InputError, match="fewer levels"):
        generate_mim_levels(ct, levels=4, grid=6, gamma=1, out_size=(8, 8, 8))


def test_infonce_matches_hand_computation() -> None:
    c = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    p = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    pos = torch.tensor([0, 1])
    tau = 0.5
    # context 0: cos = (1, 0, -1); context 1: cos = (0, 1, 0)
    l0 = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + math.exp(0) + math.exp(-1 / tau)))
    l1 = -math.log(math.exp(1 / tau) / (math.exp(0) + math.exp(1 / tau) + math.exp(0)))
    got = cross_level_infonce(c, p, pos, temperature=tau)
    assert got.item() == pytest.approx((l0 + l1) / 2, rel=1e-6)


def test_infonce_identical_pairs_beat_shuffled_pairs() -> None:
    g = torch.Generator().manual_seed(0)
    patches = torch.randn(8, 216, 32, generator=g)  # each context has its own parent's 216 patches
    pos = torch.randint(0, 216, (8,), generator=g)
    ctx = patches[torch.arange(8), pos] + 0.01 * torch.randn(8, 32, generator=g)
    aligned = cross_level_infonce(ctx, patches, pos)
    shuffled = cross_level_infonce(ctx, patches, (pos + 1) % 216)
    assert aligned.item() < 0.05
    assert shuffled.item() > 5.0
    assert multi_level_reconstruction([aligned, shuffled]).item() == pytest.approx((aligned + shuffled).item() / 2)
