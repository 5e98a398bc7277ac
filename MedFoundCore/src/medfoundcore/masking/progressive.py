"""3DME progressive block masking (§IV-A): an easy-to-hard curriculum of cubic voxel blocks.

Training starts with small 4³ blocks at 30 % (local detail) and ends with 16³ blocks at 75 % (long-range
context): 4³/30 % → 8³/45 % → 12³/60 % → 16³/75 %. The stage is a function of the step or epoch
counter, so a resumed run picks up the same stage.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from ..errors import InputError

DEFAULT_STAGES: tuple[tuple[int, float], ...] = ((4, 0.30), (8, 0.45), (12, 0.60), (16, 0.75))


def block_mask(shape: Sequence[int], block: int, ratio: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Boolean voxel mask [D, H, W] (True = hidden) made of whole ``block``³ cubes on a grid from the origin.

    Exactly ``round(ratio · n_blocks)`` of the ``n_blocks`` grid cells are chosen uniformly without
    replacement, so every voxel is masked with probability ``round(ratio·n)/n ≈ ratio`` (edge cells
    are cropped when a side is not a multiple of ``block``).
    """
    if not 0.0 <= ratio <= 1.0:
        raise InputError(f"mask ratio must be in [0, 1], got {ratio}")
    if block < 1:
        raise InputError(f"mask block size must be >= 1, got {block}")
    d, h, w = (int(s) for s in shape)
    cells = (-(-d // block), -(-h // block), -(-w // block))
    n = cells[0] * cells[1] * cells[2]
    k = int(round(ratio * n))
    flat = torch.zeros(n, dtype=torch.bool)
    flat[torch.randperm(n, generator=generator)[:k]] = True
    m = flat.view(cells)
    for axis in range(3):
        m = m.repeat_interleave(block, dim=axis)
    return m[:d, :h, :w].contiguous()


@dataclass(frozen=True)
class MaskingStage:
    block: int
    ratio: float


class ProgressiveMaskingSchedule:
    """Maps a training counter ``t`` (step or epoch, per ``unit``) to a masking stage and samples masks.

    ``boundaries[i]`` is the first ``t`` of stage ``i+1``; give them explicitly, or give ``total`` to
    split ``[0, total)`` into equal stages.
    """

    def __init__(
        self,
        stages: Sequence[tuple[int, float]] = DEFAULT_STAGES,
        boundaries: Sequence[int] | None = None,
        unit: Literal["step", "epoch"] = "step",
        total: int | None = None,
    ) -> None:
        if not stages:
            raise InputError("masking schedule needs at least one (block, ratio) stage")
        self.stages = tuple(MaskingStage(int(b), float(r)) for b, r in stages)
        if unit not in ("step", "epoch"):
            raise InputError(f"masking schedule unit must be 'step' or 'epoch', got {unit!r}")
        self.unit = unit
        if boundaries is None:
            if total is None:
                if len(self.stages) > 1:
                    raise InputError("masking schedule: give the stage boundaries or the total number of steps/epochs")
                boundaries = ()
            else:
                boundaries = [round(total * i / len(self.stages)) for i in range(1, len(self.stages))]
        self.boundaries = tuple(int(b) for b in boundaries)
        if len(self.boundaries) != len(self.stages) - 1:
            raise InputError(
                f"masking schedule: {len(self.stages)} stages need {len(self.stages) - 1} boundaries, "
                f"got {list(self.boundaries)}"
            )
        if any(b1 >= b2 for b1, b2 in zip(self.boundaries, self.boundaries[1:])):
            raise InputError(f"masking schedule boundaries must increase strictly, got {list(self.boundaries)}")

    def stage_index(self, t: int) -> int:
        """Index of the stage active at counter ``t`` (boundaries are inclusive starts)."""
        return sum(1 for b in self.boundaries if t >= b)

    def stage_at(self, t: int) -> MaskingStage:
        return self.stages[self.stage_index(t)]

    def sample(self, shape_dhw: Sequence[int], t: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Voxel mask [D, H, W] for counter ``t``."""
        stage = self.stage_at(t)
        return block_mask(shape_dhw, stage.block, stage.ratio, generator)

    def sample_batch(
        self, batch: int, shape_dhw: Sequence[int], t: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Independent masks for a batch, [B, D, H, W]."""
        return torch.stack([self.sample(shape_dhw, t, generator) for _ in range(batch)])

    def to_dict(self) -> dict:
        return {
            "stages": [[s.block, s.ratio] for s in self.stages],
            "boundaries": list(self.boundaries),
            "unit": self.unit,
        }

    @classmethod
    def from_dict(cls, data: dict) -> ProgressiveMaskingSchedule:
        return cls([tuple(s) for s in data["stages"]], data["boundaries"], data.get("unit", "step"))
