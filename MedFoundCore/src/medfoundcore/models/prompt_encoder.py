"""Prompt encoder of the interactive model: include / exclude points, strokes (scribbles), a box and
the current mask → dense prompt maps on the decoder's 6 mm grid, embedded by a 1×1×1 convolution.

Prompts are dense maps (as nnInteractive feeds them, rather than SAM's sparse tokens) because the
mask decoder is a 3D convolutional network: a map puts each prompt where it acts. Every map is
computed in millimetres, so the same prompt means the same thing whatever the grid.

Coordinates are the window's full-resolution voxel indices ``(Z, X, Y)`` (floats) on the CT
encoder's grid (3 × 1.5 × 1.5 mm); a stroke reaches here as the points along it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

#: Full-resolution voxel size (Z, X, Y) in mm on the CT encoder's grid.
VOXEL_MM_ZXY = (3.0, 1.5, 1.5)
#: Gaussian radius of a point's "here" map and decay length of its "towards here" map, in mm.
NEAR_MM = 6.0
FAR_MM = 30.0
#: Raw prompt maps, in channel order.
CHANNELS = ("include_near", "exclude_near", "include_far", "exclude_far", "box", "previous", "has_previous")
#: Spacing of points laid along a stroke, in full-resolution voxels of the in-plane axes (3 mm).
STROKE_STEP = 2.0


@dataclass
class Prompts:
    """One interaction state: every point so far (strokes as their points), the box, and whether the
    current mask is given. ``points`` is ``(N, 3)`` window voxel indices, ``include`` ``(N,)`` bool."""

    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    include: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    box: np.ndarray | None = None  # (2, 3): the two corners, inclusive voxel indices

    def __post_init__(self) -> None:
        self.points = np.asarray(self.points, dtype=np.float64).reshape(-1, 3)
        self.include = np.asarray(self.include, dtype=bool).reshape(-1)
        if len(self.points) != len(self.include):
            raise ValueError(f"{len(self.points)} points but {len(self.include)} include/exclude flags")
        if self.box is not None:
            box = np.asarray(self.box, dtype=np.float64).reshape(2, 3)
            self.box = np.stack([box.min(0), box.max(0)])

    @property
    def empty(self) -> bool:
        return len(self.points) == 0 and self.box is None

    def added(self, points: np.ndarray, include: bool) -> Prompts:
        """These prompts plus ``points`` (all include or all exclude)."""
        points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        return Prompts(np.concatenate([self.points, points]), np.concatenate([self.include, np.full(len(points), include)]), self.box)

    def shifted(self, offset: Sequence[float]) -> Prompts:
        """The same prompts in a grid whose first voxel is at ``offset`` of this one."""
        offset = np.asarray(offset, dtype=np.float64)
        return Prompts(self.points - offset, self.include.copy(), None if self.box is None else self.box - offset)

    def extent(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Lowest and highest voxel index any prompt touches (``None`` without prompts)."""
        parts = [self.points] + ([self.box] if self.box is not None else [])
        every = np.concatenate(parts) if parts else np.zeros((0, 3))
        return (every.min(0), every.max(0)) if len(every) else None


def stroke_points(vertices: np.ndarray, step: float = STROKE_STEP) -> np.ndarray:
    """Points every ``step`` voxels along a polyline of ``(M, 3)`` vertices (a scribble)."""
    vertices = np.asarray(vertices, dtype=np.float64).reshape(-1, 3)
    if len(vertices) < 2:
        return vertices
    out = [vertices[:1]]
    for a, b in zip(vertices[:-1], vertices[1:]):
        n = max(1, int(np.ceil(np.linalg.norm(b - a) / step)))
        out.append(a + (b - a) * (np.arange(1, n + 1)[:, None] / n))
    return np.concatenate(out)


def _centres(shape: Sequence[int], stride: Sequence[int], device: torch.device) -> list[torch.Tensor]:
    """Full-resolution coordinates (mm) of the voxel centres of a grid with ``stride``, per axis."""
    return [((torch.arange(n, device=device, dtype=torch.float32) + 0.5) * s - 0.5) * mm
            for n, s, mm in zip(shape, stride, VOXEL_MM_ZXY)]


def _nearest_distance(points: np.ndarray, axes: list[torch.Tensor]) -> torch.Tensor:
    """Distance (mm) from every grid voxel to the nearest of ``points`` (voxel indices); +inf if none."""
    z, x, y = axes
    best = torch.full((len(z), len(x), len(y)), float("inf"), device=z.device)
    mm = torch.tensor(VOXEL_MM_ZXY, device=z.device)
    for p in torch.as_tensor(points, dtype=torch.float32, device=z.device) * mm:
        d2 = (z - p[0])[:, None, None] ** 2 + (x - p[1])[None, :, None] ** 2 + (y - p[2])[None, None, :] ** 2
        best = torch.minimum(best, d2)
    return best.sqrt()


def _box_map(box: np.ndarray | None, axes: list[torch.Tensor]) -> torch.Tensor:
    """1 where a voxel centre lies in the box (corners widened by half a full-resolution voxel)."""
    z, x, y = axes
    if box is None:
        return torch.zeros(len(z), len(x), len(y), device=z.device)
    mm = np.asarray(VOXEL_MM_ZXY)
    lo, hi = (box[0] - 0.5) * mm, (box[1] + 0.5) * mm
    inside = [((a >= float(l)) & (a <= float(h))).float() for a, l, h in zip(axes, lo, hi)]
    return inside[0][:, None, None] * inside[1][None, :, None] * inside[2][None, None, :]


def prompt_maps(
    prompts: Prompts, shape: Sequence[int], stride: Sequence[int], previous: torch.Tensor | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """The raw maps of :data:`CHANNELS` on a grid of ``shape`` whose voxels are ``stride``
    full-resolution voxels: ``[len(CHANNELS), *shape]``. ``previous`` is the current mask as a
    fraction per voxel of that grid (``None``: no mask yet)."""
    device = torch.device(device)
    axes = _centres(shape, stride, device)
    maps = []
    for include in (True, False):
        d = _nearest_distance(prompts.points[prompts.include == include], axes)
        maps.append(torch.exp(-0.5 * (d / NEAR_MM) ** 2))
    for include in (True, False):
        d = _nearest_distance(prompts.points[prompts.include == include], axes)
        maps.append(torch.exp(-d / FAR_MM))
    maps.append(_box_map(prompts.box, axes))
    if previous is None:
        maps += [torch.zeros(tuple(shape), device=device)] * 2
    else:
        maps += [previous.to(device, torch.float32).reshape(tuple(shape)), torch.ones(tuple(shape), device=device)]
    return torch.stack(maps)


def point_features(pixel: torch.Tensor, points: np.ndarray, stride: Sequence[int]) -> torch.Tensor:
    """Pixel features ``[C, z, x, y]`` read (trilinearly) at full-resolution ``points`` → ``[N, C]``."""
    if len(points) == 0:
        return pixel.new_zeros(0, pixel.shape[0])
    shape = pixel.shape[-3:]
    coarse = (torch.as_tensor(points, dtype=torch.float32, device=pixel.device) + 0.5) / torch.tensor(stride, device=pixel.device) - 0.5
    # grid_sample wants (x, y, z) = (last, middle, first) axis, normalised to [-1, 1] (align_corners=True)
    norm = 2 * coarse / (torch.tensor(shape, device=pixel.device) - 1).clamp_min(1) - 1
    grid = norm.flip(-1)[None, :, None, None]  # 1 N 1 1 3
    sampled = F.grid_sample(pixel[None], grid, mode="bilinear", padding_mode="border", align_corners=True)
    return sampled[0, :, :, 0, 0].T


#: Encoder stages whose (frozen, pretrained) features the similarity maps read: layer2 (12 mm grid)
#: and layer3 (24 mm). Measured on cached training features, the cosine similarity of standardised
#: layer3 features to one click's separates the clicked structure from the rest of the body with
#: ROC AUC 0.79 (liver) to 0.99 (kidney, aorta, brainstem) before any training.
SIMILARITY_LEVELS = (2, 3)
#: Per level: include, exclude and current-mask similarity.
SIMILARITY_CHANNELS = 3 * len(SIMILARITY_LEVELS)


def similarity_maps(
    keys: Sequence[torch.Tensor], strides: Sequence[Sequence[int]], prompts: Prompts, shape: Sequence[int],
    previous: torch.Tensor | None,
) -> torch.Tensor:
    """How much each voxel looks like what was included / excluded / segmented so far, per encoder
    level: cosine similarity of its features (``keys``: standardised, unit-length ``[C, z, x, y]`` of
    one region, one per level, with full-resolution ``strides``) to the mean feature at the include
    points, the best-matching exclude point, and the mean feature of the current mask (``previous``,
    a fraction per voxel of the ``shape`` grid). Computed on each level's own grid, then brought to
    ``shape``: ``[SIMILARITY_CHANNELS, *shape]``; a map without its prompt is 0. They give a click reach
    across the whole region at once, through the pretrained features."""
    levels = []
    for key, stride in zip(keys, strides):
        grid = key.shape[1:]
        out = []
        for include in (True, False):
            feats = point_features(key, prompts.points[prompts.include == include], stride)
            if len(feats) == 0:
                out.append(key.new_zeros(grid))
            elif include:
                out.append(torch.einsum("czxy,c->zxy", key, F.normalize(feats.mean(0), dim=0)))
            else:
                out.append(torch.einsum("czxy,nc->nzxy", key, F.normalize(feats, dim=1)).amax(0))
        weight = None if previous is None else F.adaptive_avg_pool3d(previous.to(key).reshape(1, *shape), grid)[0]
        if weight is None or float(weight.sum()) < 1e-3:
            out.append(key.new_zeros(grid))
        else:
            proto = (key * weight).sum(dim=(1, 2, 3)) / weight.sum()
            out.append(torch.einsum("czxy,c->zxy", key, F.normalize(proto, dim=0)))
        levels.append(F.interpolate(torch.stack(out)[None], size=tuple(shape), mode="trilinear", align_corners=False)[0])
    return torch.cat(levels)


class PromptEncoder(nn.Module):
    """Raw prompt maps (:func:`prompt_maps`) and similarity maps → a ``width``-channel embedding."""

    def __init__(self, width: int):
        super().__init__()
        self.embed = nn.Sequential(nn.Conv3d(len(CHANNELS) + SIMILARITY_CHANNELS, width, 1), nn.GELU(), nn.Conv3d(width, width, 1))

    def forward(self, maps: torch.Tensor, similarity: torch.Tensor) -> torch.Tensor:
        """``maps`` [B, 7, z, x, y], ``similarity`` [B, 6, z, x, y] → [B, width, z, x, y]."""
        return self.embed(torch.cat([maps, similarity], dim=1))
