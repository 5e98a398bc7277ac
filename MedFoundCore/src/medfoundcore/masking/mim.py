"""MiM (Mask in Mask, §3.2–3.3): nested multi-level masked volumes and the cross-level InfoNCE loss.

Level 1 is a crop of the input, cut into a ``grid``³ token grid of which a fraction ``ratio`` is
masked. Each level-(l+1) volume is one of the *masked* patches of a level-l volume (γ of them drawn
without replacement per parent), re-cut from the source at full resolution and resized to the network
input size, then masked in turn. A finer volume and the coarse patch it came from show the same
anatomy, so their embeddings form the positive pair of the cross-level alignment loss (eq. 4–7);
the parent's other patches are the negatives.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import InputError

Box = tuple[int, int, int, int, int, int]  # (z0, y0, x0, z1, y1, x1), half-open, source voxels


def patch_edges(lo: int, hi: int, grid: int) -> list[int]:
    """Integer cut points splitting [lo, hi) into ``grid`` near-equal parts (sizes differ by ≤ 1)."""
    return [lo + (hi - lo) * i // grid for i in range(grid + 1)]


def patch_boxes(box: Box, grid: int) -> list[Box]:
    """The ``grid``³ patches of ``box``, row-major over (z, y, x) like the token mask's ``flatten()``."""
    ez, ey, ex = (patch_edges(box[a], box[a + 3], grid) for a in range(3))
    return [
        (ez[i], ey[j], ex[k], ez[i + 1], ey[j + 1], ex[k + 1])
        for i in range(grid)
        for j in range(grid)
        for k in range(grid)
    ]


def token_mask(grid: int, ratio: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Bool [grid, grid, grid] with exactly ``round(ratio·grid³)`` True (masked) tokens."""
    n = grid**3
    flat = torch.zeros(n, dtype=torch.bool)
    flat[torch.randperm(n, generator=generator)[: int(round(ratio * n))]] = True
    return flat.view(grid, grid, grid)


@dataclass
class MiMVolume:
    """One masked volume of one level.

    volume: [C, *out_size] crop of the source at ``box``, resized to the network input size.
    token_mask: bool [g, g, g], True = masked token (hidden from the encoder, target of reconstruction).
    parent / parent_patch: index of the coarser volume in the previous level's list and the flat index
        of its masked patch this volume was cut from (None on level 1) — the positive of eq. 5.
    """

    level: int
    box: Box
    volume: torch.Tensor
    token_mask: torch.Tensor
    parent: int | None = None
    parent_patch: int | None = None

    def voxel_mask(self) -> torch.Tensor:
        """The token mask on the voxels of ``volume`` (bool [*out_size]), same patch cut points."""
        g = self.token_mask.shape[0]
        out = torch.zeros(self.volume.shape[1:], dtype=torch.bool)
        full: Box = (0, 0, 0, *self.volume.shape[1:])  # type: ignore[assignment]
        for flat, (z0, y0, x0, z1, y1, x1) in enumerate(patch_boxes(full, g)):
            if self.token_mask.view(-1)[flat]:
                out[z0:z1, y0:y1, x0:x1] = True
        return out

    def masked_patches(self) -> list[int]:
        return torch.nonzero(self.token_mask.view(-1)).flatten().tolist()


def _crop_resize(x: torch.Tensor, box: Box, out_size: Sequence[int]) -> torch.Tensor:
    z0, y0, x0, z1, y1, x1 = box
    crop = x[:, z0:z1, y0:y1, x0:x1].float()  # every level float32, so levels stack into one batch
    if tuple(crop.shape[1:]) == tuple(out_size):
        return crop.clone()
    return F.interpolate(crop[None], size=tuple(out_size), mode="trilinear", align_corners=False)[0]


def _random_box(shape: Sequence[int], size: Sequence[int], generator: torch.Generator | None) -> Box:
    starts = []
    for s, c in zip(shape, size):
        if c > s:
            raise InputError(f"MiM level-1 crop {tuple(size)} is larger than the volume {tuple(shape)}")
        starts.append(int(torch.randint(0, s - c + 1, (1,), generator=generator)))
    return (*starts, *(st + c for st, c in zip(starts, size)))  # type: ignore[return-value]


def generate_mim_levels(
    x: torch.Tensor,
    levels: int = 3,
    grid: int = 6,
    ratio: float = 0.6,
    gamma: int | Sequence[int] = 4,
    out_size: Sequence[int] | None = None,
    level1_size: Sequence[int] | None = None,
    generator: torch.Generator | None = None,
) -> list[list[MiMVolume]]:
    """Multi-level masked volumes of one image ``x`` [C, D, H, W]: ``result[l-1]`` lists level l.

    ``gamma`` (one value, or one per level transition) is how many masked patches of each parent
    become children; level l therefore holds ``prod(gamma[:l-1])`` volumes. ``out_size`` defaults to
    the level-1 crop size; ``level1_size`` defaults to the whole image.
    """
    if x.dim() != 4:
        raise InputError(f"MiM expects one image [C, D, H, W], got shape {tuple(x.shape)}")
    if levels < 1 or grid < 1:
        raise InputError(f"MiM needs levels >= 1 and grid >= 1, got levels={levels}, grid={grid}")
    gammas = [gamma] * (levels - 1) if isinstance(gamma, int) else list(gamma)
    if len(gammas) < levels - 1:
        raise InputError(f"MiM: {levels} levels need {levels - 1} gamma values, got {gammas}")
    shape = tuple(x.shape[1:])
    l1 = tuple(level1_size) if level1_size is not None else shape
    out = tuple(out_size) if out_size is not None else l1
    box = _random_box(shape, l1, generator)
    result = [[MiMVolume(1, box, _crop_resize(x, box, out), token_mask(grid, ratio, generator))]]
    for level in range(2, levels + 1):
        children: list[MiMVolume] = []
        for p_idx, parent in enumerate(result[-1]):
            boxes = patch_boxes(parent.box, grid)
            masked = parent.masked_patches()
            pick = torch.randperm(len(masked), generator=generator)[: gammas[level - 2]].tolist()
            for flat in (masked[i] for i in pick):
                child = boxes[flat]
                if min(child[3] - child[0], child[4] - child[1], child[5] - child[2]) < grid:
                    raise InputError(
                        f"MiM level {level}: patch {child} is smaller than the {grid}³ token grid; "
                        "use a larger level-1 crop, a smaller grid or fewer levels"
                    )
                children.append(
                    MiMVolume(level, child, _crop_resize(x, child, out), token_mask(grid, ratio, generator), p_idx, flat)
                )
        result.append(children)
    return result


def cross_level_infonce(
    context: torch.Tensor, patches: torch.Tensor, positive: torch.Tensor, temperature: float = 0.1
) -> torch.Tensor:
    """Cross-level alignment (MiM eq. 4–6): InfoNCE between context vectors and coarse-level patches.

    context: [M, D] embeddings of M finer-level volumes; patches: [N, D] (shared) or [M, N, D] (each
    context's own parent) embeddings of the coarser volume's patches; positive: [M] long, index of
    the patch each context was cut from. With cosine similarity s (eq. 4), the loss is the mean over
    contexts of ``−log( exp(s_pos/τ) / Σ_j exp(s_j/τ) )``.
    """
    c = F.normalize(context, dim=-1)
    p = F.normalize(patches, dim=-1)
    if p.dim() == 2:
        sim = c @ p.t()
    else:
        sim = torch.einsum("md,mnd->mn", c, p)
    return F.cross_entropy(sim / temperature, positive.to(sim.device).long())


def multi_level_reconstruction(losses: Sequence[torch.Tensor]) -> torch.Tensor:
    """MiM eq. 3: the mean of the per-level reconstruction losses."""
    if not losses:
        raise InputError("multi-level reconstruction needs at least one level loss")
    return torch.stack(list(losses)).mean()
