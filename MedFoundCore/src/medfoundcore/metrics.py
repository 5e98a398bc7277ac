"""Spacing-aware segmentation metrics (Dice, HD95, normalised surface Dice) computed with MONAI."""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance, compute_surface_dice

from .errors import InputError
from .io import Volume

DEFAULT_TOLERANCE_MM = 2.0
# MONAI 1.5+ warns about its own internal argument on every surface-distance call.
warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*", category=FutureWarning)


def _as_tensor(mask: np.ndarray) -> torch.Tensor:
    """(D, H, W) boolean mask → MONAI's one-channel batch (1, 1, D, H, W)."""
    return torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]


def _array_spacing(spacing_ijk: tuple[float, float, float]) -> tuple[float, float, float]:
    """Spacing in array axis order (K, J, I) from the (i, j, k) spacing of a Volume."""
    return tuple(float(s) for s in spacing_ijk[::-1])  # type: ignore[return-value]


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice overlap of two binary masks; 1.0 when both are empty (nothing to find, nothing found)."""
    if not pred.any() and not gt.any():
        return 1.0
    return float(compute_dice(_as_tensor(pred), _as_tensor(gt), include_background=True, ignore_empty=False).item())


def hd95(pred: np.ndarray, gt: np.ndarray, spacing_ijk: tuple[float, float, float]) -> float:
    """95th-percentile symmetric Hausdorff distance in mm; 0 when both are empty, inf when only one is."""
    if not pred.any() and not gt.any():
        return 0.0
    if not pred.any() or not gt.any():
        return math.inf
    value = compute_hausdorff_distance(_as_tensor(pred), _as_tensor(gt), include_background=True, percentile=95, spacing=_array_spacing(spacing_ijk))
    return float(value.item())


def surface_dice(pred: np.ndarray, gt: np.ndarray, spacing_ijk: tuple[float, float, float], tolerance_mm: float = DEFAULT_TOLERANCE_MM) -> float:
    """Normalised surface Dice: share of both surfaces within ``tolerance_mm`` of the other."""
    if not pred.any() and not gt.any():
        return 1.0
    if not pred.any() or not gt.any():
        return 0.0
    value = compute_surface_dice(
        _as_tensor(pred), _as_tensor(gt), class_thresholds=[tolerance_mm], include_background=True, spacing=_array_spacing(spacing_ijk)
    )
    return float(value.item())


def check_same_grid(pred: Volume, gt: Volume, *, atol_mm: float = 1e-3) -> None:
    """Raise unless both volumes share shape and geometry (metrics compare voxels one to one)."""
    if pred.shape != gt.shape:
        raise InputError(f"prediction grid {pred.shape} differs from reference grid {gt.shape}; resample the prediction onto the reference first")
    if not np.allclose(pred.affine_ras, gt.affine_ras, atol=atol_mm):
        raise InputError("prediction and reference have the same shape but different geometry (origin/spacing/direction); resample first")


def evaluate(pred: Volume, gt: Volume, labels: dict[int, str] | None = None, tolerance_mm: float = DEFAULT_TOLERANCE_MM) -> list[dict[str, Any]]:
    """Per-label Dice, HD95 (mm), surface Dice and volumes (ml) of two label maps on the same grid."""
    check_same_grid(pred, gt)
    if labels is None:
        values = np.union1d(np.unique(gt.array), np.unique(pred.array))
        labels = {int(v): str(int(v)) for v in values if v != 0}
    rows = []
    for value, name in sorted(labels.items()):
        p, g = pred.array == value, gt.array == value
        rows.append(
            {
                "label": int(value),
                "name": name,
                "dice": dice(p, g),
                "hd95_mm": hd95(p, g, gt.spacing),
                "surface_dice": surface_dice(p, g, gt.spacing, tolerance_mm),
                "pred_ml": float(p.sum()) * gt.voxel_volume_ml,
                "ref_ml": float(g.sum()) * gt.voxel_volume_ml,
            }
        )
    return rows


def read_label_names(path: str | os.PathLike[str]) -> dict[int, str]:
    """Label names from JSON: ``{"1": "liver"}`` or a dataset file with a ``"labels"`` mapping."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: not valid JSON ({error})") from None
    mapping = data.get("labels", data) if isinstance(data, dict) else None
    if not isinstance(mapping, dict):
        raise InputError(f"{path}: expected an object mapping label values to names")
    try:
        return {int(k): str(v) for k, v in mapping.items() if int(k) != 0}
    except ValueError:
        raise InputError(f"{path}: label keys must be integers") from None


def format_table(rows: list[dict[str, Any]]) -> str:
    """A fixed-width text table of :func:`evaluate` rows with a mean line."""
    header = f"{'label':>5}  {'name':<28} {'Dice':>6} {'HD95mm':>8} {'NSD':>6} {'pred ml':>9} {'ref ml':>9}"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r['label']:>5}  {r['name'][:28]:<28} {r['dice']:6.3f} {r['hd95_mm']:8.2f} {r['surface_dice']:6.3f} {r['pred_ml']:9.2f} {r['ref_ml']:9.2f}")
    if rows:
        finite = [r["hd95_mm"] for r in rows if math.isfinite(r["hd95_mm"])]
        mean_hd = float(np.mean(finite)) if finite else math.inf
        lines.append("-" * len(header))
        lines.append(f"{'':>5}  {'mean':<28} {np.mean([r['dice'] for r in rows]):6.3f} {mean_hd:8.2f} {np.mean([r['surface_dice'] for r in rows]):6.3f}")
    return "\n".join(lines)
