"""Metrics are spacing-aware and agree with values computed by hand."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from medfoundcore.cli import main
from medfoundcore.errors import InputError
from medfoundcore.io import Volume, load_volume, save_volume
from medfoundcore.metrics import dice, evaluate, hd95, read_label_names, surface_dice


def _cube(shape=(20, 20, 20), lo=(5, 5, 5), size=8) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[lo[0] : lo[0] + size, lo[1] : lo[1] + size, lo[2] : lo[2] + size] = True
    return mask


def test_dice_by_hand() -> None:
    a = _cube()
    b = _cube(lo=(5, 5, 7))  # shifted 2 voxels along I: overlap 8*8*6
    assert dice(a, b) == pytest.approx(2 * 384 / 1024)
    assert dice(a, a) == 1.0
    assert dice(np.zeros_like(a), np.zeros_like(a)) == 1.0
    assert dice(a, np.zeros_like(a)) == 0.0


def test_hd95_uses_spacing_per_axis() -> None:
    a, b = _cube(), _cube(lo=(5, 5, 7))  # 2-voxel shift along the I axis (last array axis)
    assert hd95(a, b, (0.5, 1.0, 3.0)) == pytest.approx(1.0)  # 2 * 0.5 mm
    c = _cube(lo=(7, 5, 5))  # 2-voxel shift along K (first array axis)
    assert hd95(a, c, (0.5, 1.0, 3.0)) == pytest.approx(6.0)  # 2 * 3 mm
    assert math.isinf(hd95(a, np.zeros_like(a), (1, 1, 1)))


def test_surface_dice_tolerance() -> None:
    a, b = _cube(), _cube(lo=(5, 5, 7))
    assert surface_dice(a, b, (1, 1, 1), tolerance_mm=2.5) == pytest.approx(1.0)
    assert surface_dice(a, b, (1, 1, 1), tolerance_mm=0.5) < 0.9


def test_evaluate_real_labels(shared_data: Path) -> None:
    gt = load_volume(shared_data / "totalsegmentator/ts_ct_sm_lab.nii.gz", label=True)
    eroded = gt.array.copy()
    eroded[:, :, :2] = 0
    rows = evaluate(gt.with_array(eroded), gt, {1: "spleen", 5: "liver"})
    by_name = {r["name"]: r for r in rows}
    assert by_name["liver"]["ref_ml"] == pytest.approx((gt.array == 5).sum() * np.prod(gt.spacing) / 1000)
    assert all(0 < r["dice"] <= 1 for r in rows)
    assert evaluate(gt, gt, {1: "spleen"})[0]["dice"] == 1.0


def test_grid_mismatch_is_refused() -> None:
    with pytest.raises(InputError, match="resample"):
        evaluate(Volume(np.zeros((4, 4, 4), np.uint8)), Volume(np.zeros((4, 4, 5), np.uint8)))
    with pytest.raises(InputError, match="geometry"):
        evaluate(Volume(np.zeros((4, 4, 4), np.uint8)), Volume(np.zeros((4, 4, 4), np.uint8), spacing=(2, 1, 1)))


def test_cli_evaluate_table_and_json(shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gt_path = shared_data / "totalsegmentator/ts_ct_sm_lab.nii.gz"
    gt = load_volume(gt_path, label=True)
    pred = gt.with_array(np.where(gt.array == 1, 0, gt.array))  # spleen missing
    save_volume(pred, tmp_path / "pred.nii.gz")
    labels = shared_data / "totalsegmentator/ts_ct_sm_labels.json"
    report = tmp_path / "report.json"
    assert main(["evaluate", str(tmp_path / "pred.nii.gz"), str(gt_path), "--labels", str(labels), "--json", str(report)]) == 0
    out = capsys.readouterr().out
    assert "spleen" in out and "liver" in out and "mean" in out
    rows = {r["name"]: r for r in json.loads(report.read_text())["labels"]}
    assert rows["spleen"]["dice"] == 0.0 and rows["liver"]["dice"] == 1.0
    assert len(rows) == len(read_label_names(labels))
