"""3DME progressive block masking (§IV-A): ratios, block alignment, seeds, stage boundaries."""

from __future__ import annotations

import pytest
import torch

from medfoundcore.errors import InputError
from medfoundcore.masking.progressive import DEFAULT_STAGES, ProgressiveMaskingSchedule, block_mask


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("block,ratio", DEFAULT_STAGES)
def test_realised_ratio_matches_target_over_many_seeds(block: int, ratio: float) -> None:
    # 100 is not a multiple of 8, 12 or 16: edge cells are cropped, yet every voxel keeps P(masked) = k/n.
    shape = (100, 100, 100)
    ratios = torch.tensor([block_mask(shape, block, ratio, _gen(s)).float().mean().item() for s in range(30)])
    assert abs(ratios.mean().item() - ratio) < 0.01
    assert (ratios - ratio).abs().max().item() < 0.06


@pytest.mark.parametrize("block", [4, 8, 12, 16])
def test_masks_are_whole_blocks_on_the_block_grid(block: int) -> None:
    shape = (40, 56, 48)
    m = block_mask(shape, block, 0.5, _gen(3))
    assert m.shape == shape and m.dtype == torch.bool
    for z0 in range(0, shape[0], block):
        for y0 in range(0, shape[1], block):
            for x0 in range(0, shape[2], block):
                cell = m[z0 : z0 + block, y0 : y0 + block, x0 : x0 + block]
                assert cell.all() or not cell.any(), f"block at {(z0, y0, x0)} is partly masked"


def test_exact_number_of_blocks_is_masked() -> None:
    m = block_mask((32, 32, 32), 8, 0.45, _gen(0))
    cells = m[::8, ::8, ::8]
    assert int(cells.sum()) == round(0.45 * 64)


def test_same_seed_same_mask_different_seed_different_mask() -> None:
    sched = ProgressiveMaskingSchedule(boundaries=[10, 20, 30])
    a = sched.sample((64, 64, 64), 15, _gen(7))
    b = sched.sample((64, 64, 64), 15, _gen(7))
    c = sched.sample((64, 64, 64), 15, _gen(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_stage_boundaries_are_inclusive_starts() -> None:
    sched = ProgressiveMaskingSchedule(boundaries=[100, 200, 300], unit="step")
    expect = {0: 0, 99: 0, 100: 1, 199: 1, 200: 2, 299: 2, 300: 3, 10_000: 3}
    for t, idx in expect.items():
        assert sched.stage_index(t) == idx
    assert (sched.stage_at(0).block, sched.stage_at(0).ratio) == (4, 0.30)
    assert (sched.stage_at(300).block, sched.stage_at(300).ratio) == (16, 0.75)


def test_sampled_mask_follows_the_active_stage() -> None:
    sched = ProgressiveMaskingSchedule(total=40, unit="epoch")
    assert sched.boundaries == (10, 20, 30)
    late = sched.sample((64, 64, 64), 35, _gen(1))
    # stage 4 uses 16³ blocks: each 16³ cell is uniform, and 4×4×4 = 64 cells of which 48 are masked.
    assert int(late[::16, ::16, ::16].sum()) == 48
    early = sched.sample((64, 64, 64), 0, _gen(1))
    assert abs(early.float().mean().item() - 0.30) < 0.01


def test_batch_masks_are_independent_and_config_round_trips() -> None:
    sched = ProgressiveMaskingSchedule(boundaries=[1, 2, 3])
    batch = sched.sample_batch(3, (32, 32, 32), 0, _gen(0))
    assert batch.shape == (3, 32, 32, 32)
    assert not torch.equal(batch[0], batch[1])
    again = ProgressiveMaskingSchedule.from_dict(sched.to_dict())
    assert again.boundaries == sched.boundaries and again.stages == sched.stages


def test_bad_schedules_are_rejected_with_clear_errors() -> None:
    with pytest.raises(InputError, match="boundaries"):
        ProgressiveMaskingSchedule()
    with pytest.raises(InputError, match="increase"):
        ProgressiveMaskingSchedule(boundaries=[5, 5, 9])
    with pytest.raises(InputError, match="3 boundaries"):
        ProgressiveMaskingSchedule(boundaries=[5])
    with pytest.raises(InputError, match="ratio"):
        block_mask((8, 8, 8), 4, 1.5)
