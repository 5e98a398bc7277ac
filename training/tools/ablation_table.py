"""Markdown table of the hippocampus ablations written by ``training/ablate_seg_hippocampus.sh``.

Per variant: mean over test cases of the two parts' mean Dice (and HD95), per seed; and the paired
difference to k = 1 of the same seed, averaged over seeds, with a 95 % bootstrap interval over the test
cases (training noise is not in it: compare the seed columns for that).

    python training/tools/ablation_table.py [OUT_DIR]   (default runs/abl2)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

VARIANTS = [
    ("k1", "k = 1 (default)"),
    ("k0", "no FVE (k = 0, focal slice ×3)"),
    ("k2", "k = 2"),
    ("k3", "k = 3"),
    ("k1-noisd", "k = 1, ISD off at inference (raw masks)"),
    ("nocut", "k = 1, no gradient cut-off"),
    ("nosynth", "k = 1, no synthetic data"),
]
SEEDS = (0, 1)


def per_case(out: Path, name: str, seed: int, metric: str) -> dict[str, float] | None:
    """Mean of ``metric`` over the structures of each test case, or None if the run is missing."""
    path = out / f"{name}-s{seed}.eval.json"
    if not path.exists():
        return None
    by_case: dict[str, list[float]] = {}
    for row in json.loads(path.read_text())["rows"]:
        value = row[metric]
        by_case.setdefault(row["case"], []).append(np.nan if value is None else float(value))
    return {case: float(np.mean(v)) for case, v in sorted(by_case.items())}


def bootstrap_interval(values: np.ndarray, n: int = 5000, seed: int = 0) -> tuple[float, float]:
    means = np.random.default_rng(seed).choice(values, size=(n, values.size)).mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def row(out: Path, name: str, label: str) -> str | None:
    dice = [per_case(out, name, s, "dice") for s in SEEDS]
    hd95 = [per_case(out, name, s, "hd95_mm") for s in SEEDS]
    base = [per_case(out, "k1", s, "dice") for s in SEEDS]
    seeds = [i for i in range(len(SEEDS)) if dice[i] is not None and base[i] is not None]
    if not seeds:
        return None
    cases = sorted(dice[seeds[0]])
    delta = np.mean([[dice[i][c] - base[i][c] for c in cases] for i in seeds], axis=0)
    low, high = bootstrap_interval(delta)
    fmt = lambda runs, f: " / ".join(f.format(np.nanmean(list(r.values()))) if r else "–" for r in runs)  # noqa: E731
    change = "—" if name == "k1" else f"{delta.mean():+.3f} ({low:+.3f} … {high:+.3f})"
    return f"| {label} | {fmt(dice, '{:.3f}')} | {fmt(hd95, '{:.1f}')} | {change} |"


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/abl2")
    print("| variant | Dice, seed 0 / seed 1 | HD95 (mm), seed 0 / 1 | Δ Dice vs k = 1 (95 % CI) |")
    print("|---|---|---|---|")
    for name, label in VARIANTS:
        line = row(out, name, label)
        if line:
            print(line)


if __name__ == "__main__":
    main()
