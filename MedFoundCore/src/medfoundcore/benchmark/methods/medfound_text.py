"""MedFound's text-prompted segmenter (BiomedParse-V style) as a benchmarked method.

Trained from scratch on the fold's training cases with ``train_segmenter`` (structures restricted to the
two hippocampus parts), then asked ``segment(volume, ["anterior hippocampus", "posterior hippocampus"])``:
label i of the result is the i-th prompt, which is exactly the MSD label convention.

Budget: ``TrainConfig.max_minutes`` (set to the time left) ends the training loop and saves the model.
Its clock starts after case preparation, so this method's reported training time exceeds the budget by
that preparation (seconds; visible in the table). As a safety net the harness cancels training
``GRACE`` after its own deadline and finalises the newest checkpoint into the model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import Cancelled
from ...io import Volume
from ...progress import CancelToken, Progress, ProgressCallback
from ..cases import STRUCTURES, BenchCase
from .base import Deadline, FitResult, Method

OUTPUT_NAME = "benchmark-medfound-text"
PROMPTS = [prompt for _, prompt in STRUCTURES.values()]
TRAIN_STRUCTURES = ["hippocampus_anterior", "hippocampus_posterior"]
LABEL_NAMES = {1: "hippocampus_anterior (head)", 2: "hippocampus_posterior (body+tail)"}
CHECKPOINT_EVERY = 20
#: size profile -> TrainConfig overrides. MSD crops are ~35x50x40 voxels, so 64 px slices lose nothing.
PROFILES: dict[str, dict[str, Any]] = {
    "tiny": {"preset": "tiny", "image_size": 64, "batch_size": 4},
    "small": {"preset": "small", "image_size": 64, "batch_size": 8},
    "standard": {"preset": "base", "image_size": 128, "batch_size": 16},
}
LR = 1e-3  # the shipped starter model's training rate (TrainConfig's 3e-4 default suits longer runs)
UNREACHABLE_STEPS = 10**7  # the deadline, not the step count, ends training
GRACE_FRACTION, GRACE_S = 0.25, 30.0  # the safety-net cancel fires at deadline + 25 % + 30 s


class MedFoundText(Method):
    key, title = "medfound-text", "MedFound text-prompted"
    description = (
        "medfoundcore.train.segment.train_segmenter from scratch on the fold's training cases (structures "
        "hippocampus_anterior/posterior), inference medfoundcore.inference.segment.segment with prompts "
        "'anterior hippocampus', 'posterior hippocampus'"
    )

    def __init__(self, settings) -> None:
        super().__init__(settings)
        self.model_dir: Path | None = None

    def unavailable_reason(self) -> str | None:
        try:
            from ...inference.segment import segment  # noqa: F401
            from ...models.prompted_segmenter import build_segmenter  # noqa: F401
            from ...train.segment import TrainConfig, train_segmenter  # noqa: F401
        except ImportError as error:
            return f"text-prompted pipeline not importable ({error})"
        return None

    def fit(
        self,
        cases: Sequence[BenchCase],
        deadline: Deadline,
        work_dir: Path,
        progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
    ) -> FitResult:
        from ...registry import load_model
        from ...train.segment import TrainConfig, train_segmenter

        config = self._config(TrainConfig, deadline)
        train_dir, self.model_dir = Path(work_dir) / "train", Path(work_dir) / "model"
        stop = CancelToken()
        notes = [f"from scratch, preset {config.preset}, {config.image_size} px slices, batch {config.batch_size}, lr {config.lr:g}"]
        try:
            train_segmenter(
                self._cases(cases), config, OUTPUT_NAME, train_dir, output_dir=self.model_dir,
                progress=self._watch(deadline, stop, progress, cancel), cancel=stop,
            )  # fmt: skip
        except Cancelled:
            if cancel is not None and cancel.cancelled:
                raise
            notes.append(self._finalise(cases, config, train_dir))
        _, card = load_model(str(self.model_dir))
        steps = int(card.metrics.get("steps_done", 0))
        slices = int(card.training_data.get("n_slices", 0)) or sum(c.image.shape[0] for c in cases)
        return FitResult(deadline.elapsed, steps * config.batch_size / slices, steps, notes)

    def _finalise(self, cases: Sequence[BenchCase], config: Any, train_dir: Path) -> str:
        """Turn the newest checkpoint into the model after a safety-net cancel; returns a note for the table."""
        from ...train.checkpoint import latest_checkpoint, load_checkpoint
        from ...train.segment import train_segmenter

        checkpoint = latest_checkpoint(train_dir)
        if checkpoint is None:
            raise Cancelled("training overran its budget before the first checkpoint") from None
        steps = int(load_checkpoint(checkpoint)["step"])
        train_segmenter(self._cases(cases), dataclasses.replace(config, steps=steps), OUTPUT_NAME, train_dir, output_dir=self.model_dir)
        return f"overran the budget: cancelled, checkpoint of step {steps} finalised (checkpoints every {CHECKPOINT_EVERY} steps)"

    def _config(self, config_type: type, deadline: Deadline) -> Any:
        overrides = {
            **PROFILES[self.settings.size],
            "max_minutes": max(1.0, deadline.remaining) / 60.0,
            "lr": LR,
            "steps": UNREACHABLE_STEPS,
            "device": str(self.settings.device),
            "seed": self.settings.seed,
            "structures": TRAIN_STRUCTURES,
            "checkpoint_every": CHECKPOINT_EVERY,
        }
        known = {f.name for f in dataclasses.fields(config_type)}
        return config_type(**{k: v for k, v in overrides.items() if k in known})

    @staticmethod
    def _cases(cases: Sequence[BenchCase]) -> list[Any]:
        from ...data.datasets import Case

        return [Case(c.case_id, c.case_id, c.image, c.label, dict(LABEL_NAMES), "MRI") for c in cases]

    @staticmethod
    def _watch(deadline: Deadline, stop: CancelToken, progress: ProgressCallback | None, cancel: CancelToken | None) -> ProgressCallback:
        """Forward progress; trip ``stop`` when the user cancels or training runs far past the deadline."""
        shown = [-1]
        hard_stop = deadline.seconds * (1 + GRACE_FRACTION) + GRACE_S

        def callback(p: Progress) -> None:
            if deadline.elapsed > hard_stop or (cancel is not None and cancel.cancelled):
                stop.cancel()
            elapsed = int(deadline.elapsed)
            if progress is not None and elapsed != shown[0]:
                shown[0] = elapsed
                progress(Progress("train medfound-text", elapsed, int(deadline.seconds), f"{p.stage} {p.done}"))

        return callback

    def predict(self, image: Volume) -> np.ndarray:
        from ...inference.segment import segment

        assert self.model_dir is not None, "fit() first"
        result = segment(image, PROMPTS, model=str(self.model_dir), device=str(self.settings.device))
        return np.asarray(result.labels.array, dtype=np.uint8)

    def parameter_count(self) -> int:
        """Tensors in the saved segmenter (the frozen sentence encoder that embeds the prompts is not counted)."""
        from ...registry import load_model

        state, _ = load_model(str(self.model_dir))
        return int(sum(t.numel() for t in state.values() if t.is_floating_point()))

