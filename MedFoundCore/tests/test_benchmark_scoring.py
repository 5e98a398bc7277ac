"""Per-case scores of the benchmark on real MSD labels, including the empty-prediction rule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from medfoundcore.benchmark.scoring import diagonal_mm, score_case, summarise
from medfoundcore.io import load_volume


@pytest.fixture(scope="module")
def reference(shared_data: Path):
    return load_volume(shared_data / "msd_hippocampus" / "hippocampus_001_lab.nii.gz", label=True)


def test_perfect_prediction(reference) -> None:
    scores = score_case("hippocampus_001", reference.with_array(reference.array.copy()), reference)
    assert scores["overall"] == {"dice": 1.0, "hd95": 0.0}
    assert scores["empty"] == []


def test_shifted_prediction_scores_between(reference) -> None:
    shifted = reference.with_array(ndimage.shift(reference.array, (0, 2, 0), order=0))
    scores = score_case("hippocampus_001", shifted, reference)
    for key in ("anterior", "posterior"):
        assert 0.2 < scores[key]["dice"] < 0.95
        assert 1.0 <= scores[key]["hd95"] <= 3.0  # a 2-voxel shift at 1 mm spacing
    assert scores["overall"]["dice"] == pytest.approx((scores["anterior"]["dice"] + scores["posterior"]["dice"]) / 2)


def test_missing_structure_gets_the_worst_distance(reference) -> None:
    only_anterior = reference.with_array(np.where(reference.array == 1, 1, 0).astype(np.uint8))
    scores = score_case("hippocampus_001", only_anterior, reference)
    assert scores["empty"] == ["posterior"]
    assert scores["posterior"] == {"dice": 0.0, "hd95": pytest.approx(diagonal_mm(reference))}
    assert scores["anterior"]["dice"] == 1.0
    summary = summarise([scores, score_case("x", reference.with_array(reference.array.copy()), reference)])
    assert summary["cases_with_empty_structure"] == 1
    assert summary["posterior"]["dice"]["mean"] == pytest.approx(0.5)
    assert summary["posterior"]["dice"]["sd"] == pytest.approx(np.std([0.0, 1.0], ddof=1))
