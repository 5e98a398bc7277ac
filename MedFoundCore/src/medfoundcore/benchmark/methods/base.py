"""What a benchmarked method must offer: train under a wall-clock budget, predict a label map, count parameters."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ...io import Volume
from ...progress import CancelToken, ProgressCallback
from ..cases import BenchCase

Size = Literal["tiny", "small", "standard"]
SIZES: tuple[str, ...] = ("tiny", "small", "standard")


@dataclass(frozen=True)
class MethodSettings:
    """What the harness fixes for every method of a run: device, seed and model size profile.

    ``tiny`` is for the CI smoke run, ``small`` for CPU runs, ``standard`` for the published recipes (GPU).
    """

    device: torch.device
    seed: int = 0
    size: Size = "standard"


@dataclass
class FitResult:
    """How training went: wall time, how much data was seen, and anything a reader must know."""

    train_seconds: float
    epochs: float
    iterations: int
    notes: list[str] = field(default_factory=list)


class Deadline:
    """A wall-clock budget started at construction; training loops stop once it has expired."""

    def __init__(self, seconds: float) -> None:
        self.seconds = float(seconds)
        self._start = time.perf_counter()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self._start

    @property
    def remaining(self) -> float:
        return max(0.0, self.seconds - self.elapsed)

    @property
    def expired(self) -> bool:
        return self.elapsed >= self.seconds


class Method(ABC):
    """One benchmarked method. Instances live in one worker process for one fold."""

    #: CLI key (``--methods``) and JSON key.
    key: str = ""
    #: Row label in the tables.
    title: str = ""
    #: Column of the 3DME paper's Table I this method corresponds to, if any.
    paper_column: str | None = None
    #: One-line description of exactly what is run (printed under the table).
    description: str = ""

    def __init__(self, settings: MethodSettings) -> None:
        self.settings = settings

    def unavailable_reason(self) -> str | None:
        """Why this method cannot run here (missing component), or None when it can."""
        return None

    @abstractmethod
    def fit(
        self,
        cases: Sequence[BenchCase],
        deadline: Deadline,
        work_dir: Path,
        progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
    ) -> FitResult:
        """Train on ``cases`` and stop when ``deadline`` expires (or earlier when the recipe ends)."""

    @abstractmethod
    def predict(self, image: Volume) -> np.ndarray:
        """Label map (0 background, 1 anterior, 2 posterior) on ``image``'s grid, shape ``image.shape``."""

    @abstractmethod
    def parameter_count(self) -> int:
        """Number of parameters of the model used at inference (trainable or frozen)."""


def count_parameters(module: torch.nn.Module) -> int:
    return int(sum(p.numel() for p in module.parameters()))
