"""Atomic training checkpoints that survive a kill at any moment and load with ``weights_only=True``."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

from ..io import atomic_path

CHECKPOINT_PATTERN = re.compile(r"^step-(\d+)\.pt$")
PARTIAL_PATTERN = re.compile(r"^\.step-\d+\.pt\..+\.part\.pt$")  # atomic_path's temp names


def checkpoint_path(directory: str | os.PathLike[str], step: int) -> Path:
    return Path(directory) / f"step-{step:08d}.pt"


def save_checkpoint(path: str | os.PathLike[str], **state: Any) -> Path:
    """Write ``state`` (tensors, state dicts, numbers, strings) to ``path`` via a temp file + rename."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` without executing pickled code."""
    return torch.load(Path(path), map_location=map_location, weights_only=True)


def latest_checkpoint(directory: str | os.PathLike[str]) -> Path | None:
    """The checkpoint with the highest step in ``directory`` (ignores partial temp files)."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    steps = [(int(m.group(1)), p) for p in directory.iterdir() if (m := CHECKPOINT_PATTERN.match(p.name))]
    return max(steps)[1] if steps else None


def prune_checkpoints(directory: str | os.PathLike[str], keep: int = 2) -> None:
    """Delete all but the ``keep`` newest checkpoints."""
    directory = Path(directory)
    steps = sorted((int(m.group(1)), p) for p in directory.iterdir() if (m := CHECKPOINT_PATTERN.match(p.name)))
    for _, path in steps[:-keep] if keep > 0 else steps:
        path.unlink(missing_ok=True)


def remove_partial_checkpoints(directory: str | os.PathLike[str]) -> list[Path]:
    """Delete temp files of checkpoints whose writer was killed (they are never complete); returns them."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    stale = [p for p in directory.iterdir() if PARTIAL_PATTERN.match(p.name)]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale
