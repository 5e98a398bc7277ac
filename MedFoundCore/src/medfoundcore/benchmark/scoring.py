"""Per-case scores and their summary (mean ± sd), with one explicit rule for missing structures.

Scores come from :func:`medfoundcore.metrics.evaluate` (spacing-aware, MONAI underneath). HD95 is
undefined when a method predicts nothing for a structure that is present; such a case gets the image
diagonal in mm (the largest distance possible on that grid) so that predicting nothing is never
rewarded, and the number of such cases is reported next to the means.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..io import Volume
from ..metrics import evaluate
from .cases import STRUCTURES

STRUCTURE_KEYS: tuple[str, ...] = tuple(key for key, _ in STRUCTURES.values())
SUMMARY_KEYS: tuple[str, ...] = (*STRUCTURE_KEYS, "overall")


def diagonal_mm(volume: Volume) -> float:
    return float(np.linalg.norm(np.array(volume.shape[::-1]) * np.array(volume.spacing)))


def score_case(case_id: str, prediction: Volume, reference: Volume) -> dict[str, Any]:
    """Dice and HD95 per structure and their mean over structures ("overall") for one case."""
    rows = evaluate(prediction, reference, {value: key for value, (key, _) in STRUCTURES.items()})
    penalty = diagonal_mm(reference)
    scores: dict[str, Any] = {"case": case_id, "empty": []}
    for row in rows:
        hd = row["hd95_mm"]
        if not math.isfinite(hd):
            scores["empty"].append(row["name"])
            hd = penalty
        scores[row["name"]] = {"dice": row["dice"], "hd95": hd}
    scores["overall"] = {
        "dice": float(np.mean([scores[k]["dice"] for k in STRUCTURE_KEYS])),
        "hd95": float(np.mean([scores[k]["hd95"] for k in STRUCTURE_KEYS])),
    }
    return scores


def mean_sd(values: Sequence[float]) -> dict[str, float | int]:
    array = np.asarray(values, dtype=np.float64)
    sd = float(array.std(ddof=1)) if array.size > 1 else 0.0
    return {"mean": float(array.mean()), "sd": sd, "n": int(array.size)}


def summarise(per_case: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean ± sd of Dice and HD95 per structure and overall, over all scored cases (all folds)."""
    summary: dict[str, Any] = {}
    for key in SUMMARY_KEYS:
        summary[key] = {metric: mean_sd([c[key][metric] for c in per_case]) for metric in ("dice", "hd95")}
    summary["cases_with_empty_structure"] = sum(1 for c in per_case if c["empty"])
    return summary
