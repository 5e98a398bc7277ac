"""Published MSD Hippocampus numbers to print beside ours.

3DME paper, Table I, row "MSD Hippocampus" (mean Dice over both structures, HD95 in mm). The paper
states neither its split, its training budget nor its hardware for this row.
"""

from __future__ import annotations

SOURCE = "3DME (dual-branch encoder, progressive masking) paper, Table I, MSD Hippocampus row"

#: column -> (Dice, HD95 mm)
TABLE_I: dict[str, tuple[float, float]] = {
    "nnU-Net": (0.696, 12.298),
    "TransBTS": (0.710, 11.046),
    "UNETR": (0.788, 8.008),
    "SwinUNETR": (0.872, 6.023),
    "3D UX-Net": (0.890, 6.033),
    "MedNeXt": (0.885, 5.987),
    "3DME-S0": (0.798, 7.226),
    "3DME-S10": (0.898, 6.012),
}

LEADERBOARD_NOTE = (
    "For scale: nnU-Net reaches about 0.90 mean Dice on the MSD Task04 leaderboard, far above the 0.696 "
    "Table I gives it, so Table I's baseline numbers are not a ceiling for this task."
)
