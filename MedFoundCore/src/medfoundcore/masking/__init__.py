"""Masking schemes for self-supervised 3D pretraining, one per module.

- :mod:`.progressive` — 3DME progressive cubic block masking (4³/30 % → 16³/75 %).
- :mod:`.mim` — MiM nested multi-level masked volumes + cross-level InfoNCE.
- :mod:`.dual_axis` — NEMESIS/MAESIL superpatch plane-/axis-wise dual masking + noise-enhanced input.

All masks are boolean with True = hidden, and every sampler takes a ``torch.Generator`` so that a seed
reproduces the mask exactly.
"""

from .dual_axis import DualMask, axis_mask, dual_mask, noise_enhanced, plane_mask, remove_tokens, restore_tokens, superpatch_slices
from .mim import MiMVolume, cross_level_infonce, generate_mim_levels, multi_level_reconstruction
from .progressive import DEFAULT_STAGES, MaskingStage, ProgressiveMaskingSchedule, block_mask
from .voxels import broadcast_mask

__all__ = [
    "DEFAULT_STAGES",
    "DualMask",
    "MaskingStage",
    "MiMVolume",
    "ProgressiveMaskingSchedule",
    "axis_mask",
    "block_mask",
    "broadcast_mask",
    "cross_level_infonce",
    "dual_mask",
    "generate_mim_levels",
    "multi_level_reconstruction",
    "noise_enhanced",
    "plane_mask",
    "remove_tokens",
    "restore_tokens",
    "superpatch_slices",
]
