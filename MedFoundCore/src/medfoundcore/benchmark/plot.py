"""Box plot of per-case Dice per method (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..io import atomic_path

PLOT_NAME = "dice_boxplot.png"


def write_dice_boxplot(summary: dict[str, Any], path: Path) -> Path | None:
    """Per-case mean Dice over both structures for each method with scores; None if no method has any."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [m for m in summary["methods"].values() if m["status"] == "ok"]
    if not rows:
        return None
    data = [[c["overall"]["dice"] for c in m["per_case"]] for m in rows]
    figure, axes = plt.subplots(figsize=(1.6 * len(rows) + 2.0, 4.2), dpi=120)
    axes.boxplot(data, showmeans=True)
    axes.set_xticks(range(1, len(rows) + 1), [m["title"] for m in rows], rotation=20, ha="right")
    axes.set_ylabel("Dice (mean of anterior, posterior)")
    axes.set_ylim(0.0, 1.0)
    axes.grid(axis="y", alpha=0.3)
    split = summary["split"]
    axes.set_title(
        f"MSD Hippocampus, folds {split['folds_run']} of {split['n_folds']}, {split['n_test_cases']} test cases, "
        f"{summary['config']['budget_minutes']:g} min/method",
        fontsize=9,
    )
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
    plt.close(figure)
    return path
