"""MedFound's text-prompted MRI model (the ``mri-v1`` family) as a benchmarked method.

Trained from scratch on the fold's training cases with the ``mri-v1`` recipe
(``medfoundcore.train.mri_segment``: 1 mm RAS grid, text head on a residual 3D UNet, presence head),
for the wall-clock budget, then asked ``segment(volume, ["anterior hippocampus", "posterior
hippocampus"])``: label i of the result is the i-th prompt, which is exactly the MSD label convention.
The loop checks the clock before every step, so it ends within one step of the budget; case loading
(seconds) is taken off the budget first.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ...io import Volume
from ...progress import CancelToken, Progress, ProgressCallback
from ..cases import STRUCTURES, BenchCase
from .base import Deadline, FitResult, Method

OUTPUT_NAME = "benchmark-medfound-text"
PROMPTS = [prompt for _, prompt in STRUCTURES.values()]
LABEL_NAMES = {1: "hippocampus_anterior (head)", 2: "hippocampus_posterior (body+tail)"}
UNREACHABLE_STEPS = 10**7  # the deadline, not the step count, ends training
#: size profile -> (trunk channels, feature width, crop (Z, X, Y) mm). ``small`` is the shipped mri-v1;
#: an MSD crop is about 35 x 35 x 51 mm on the RAS grid, so the tiny crop still holds a whole hippocampus.
PROFILES: dict[str, tuple[list[int], int, tuple[int, int, int]]] = {
    "tiny": ([8, 16, 32, 64], 16, (40, 40, 56)),
    "small": ([16, 32, 64, 128], 32, (40, 40, 56)),
    "standard": ([32, 64, 128, 256], 32, (48, 48, 64)),
}


class MedFoundText(Method):
    key, title = "medfound-text", "MedFound text-prompted (mri-v1 recipe)"
    description = (
        "medfoundcore.train.mri_segment.train_mri_segmenter from scratch on the fold's training cases (the mri-v1 recipe: "
        "1 mm grid, residual 3D UNet + MiniLM text head + presence head), inference medfoundcore.inference.segment.segment "
        "with prompts 'anterior hippocampus', 'posterior hippocampus'"
    )

    def __init__(self, settings) -> None:
        super().__init__(settings)
        self.model_dir: Path | None = None

    def fit(
        self,
        cases: Sequence[BenchCase],
        deadline: Deadline,
        work_dir: Path,
        progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
    ) -> FitResult:
        from ...data.datasets import Case
        from ...models.mri_segmenter import MRISegmenterConfig
        from ...train.mri_segment import MRITrainConfig, prepare_case, ship, train_mri_segmenter
        from ...vocabulary import load_vocabulary

        vocab = load_vocabulary()
        prepared = [prepare_case(Case(c.case_id, c.case_id, c.image, c.label, dict(LABEL_NAMES), "MRI"), vocab) for c in cases]
        channels, width, crop = PROFILES[self.settings.size]
        cfg = MRITrainConfig(steps=UNREACHABLE_STEPS, max_minutes=deadline.remaining / 60.0, seed=self.settings.seed, crop_zxy=crop,
                             model=MRISegmenterConfig(width=width, channels=channels))  # fmt: skip
        net, history = train_mri_segmenter(
            prepared, Path(work_dir) / "train", cfg, device=str(self.settings.device), progress=self._relabel(progress, deadline), cancel=cancel
        )
        history["crop_zxy"] = list(cfg.crop_zxy)
        self.model_dir = ship(net, history, OUTPUT_NAME, Path(work_dir) / "model", training_data={"cases": [c.case_id for c in cases]},
                              overwrite=True)  # fmt: skip
        steps = int(history["steps_done"])
        notes = [f"{steps} steps x {cfg.batch_size} crops of {cfg.crop_zxy} voxels, lr {cfg.lr:g}; trunk channels {channels}, width {width}"]
        return FitResult(deadline.elapsed, steps * cfg.batch_size / max(1, len(cases)), steps, notes)

    @staticmethod
    def _relabel(progress: ProgressCallback | None, deadline: Deadline) -> ProgressCallback | None:
        """Training reports steps; the table's runs are bounded by the clock, so progress is time."""
        if progress is None:
            return None
        return lambda p: progress(Progress("train medfound-text", int(deadline.elapsed), int(deadline.seconds), f"step {p.done} {p.message}"))

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
