"""``medfound bench segment --heldout``: the evaluation behind docs/segmentation.md, on a real held-out case."""

from __future__ import annotations

import json

from medfoundcore.bench.segment import heldout_report, summarize_absent
from medfoundcore.cli import main
from medfoundcore.data.datasets import find_cases


def test_heldout_report_scores_present_and_prompts_distant_structures(shared_data):
    refs = find_cases([shared_data / "msd_hippocampus" / "hippocampus_203_img.nii.gz"])  # held out of starter-v2
    report = heldout_report(refs, "starter-v2", ["hippocampus", "liver", "grey_matter", "spleen"])
    (row,) = report["rows"]  # the crop labels only the hippocampus (anterior + posterior merged)
    assert row["case"] == "hippocampus_203" and row["name"] == "hippocampus"
    assert row["dice"] > 0.75  # measured 0.868
    # liver and spleen are abdominal, two or more regions from the head: each is prompted alone;
    # grey matter is in the head (not distant), so it is neither scored nor counted as absent.
    assert sorted(r["name"] for r in report["absent"]) == ["liver", "spleen"]
    assert report["absent_summary"]["n"] == 2 and report["absent_summary"]["n_not_empty"] == 0


def test_absent_summary_counts_and_ranks_false_volumes():
    rows = [
        {"case": "a", "name": "liver", "volume_ml": 12.5, "slices": 3},
        {"case": "a", "name": "spleen", "volume_ml": 0.0, "slices": 0},
        {"case": "b", "name": "liver", "volume_ml": 146.0, "slices": 5},
    ]
    summary = summarize_absent(rows)
    assert summary["n"] == 3 and summary["n_not_empty"] == 2 and summary["total_ml"] == 158.5
    assert [r["case"] for r in summary["worst"]] == ["b", "a"]


def test_evaluate_scores_the_model_and_a_baseline_trained_in_the_same_run(shared_data, tmp_path, capsys):
    hippocampus = shared_data / "msd_hippocampus"
    report = tmp_path / "eval.json"
    code = main(["evaluate", "--heldout", str(hippocampus / "hippocampus_203_img.nii.gz"), "--structures", "hippocampus", "liver",
                 "--baseline", str(hippocampus / "hippocampus_001_img.nii.gz"), "--minutes", "0.05", "--json", str(report), "--model", "starter-v2"])
    assert code == 0
    data = json.loads(report.read_text())
    assert data["baseline"]["steps"] > 0 and data["baseline"]["train_minutes"] == 0.05
    comparison = data["comparison"]
    assert comparison["pairs"] == 1  # the same (case, structure) pair scored for both models
    assert comparison["model"]["hippocampus"]["dice"] > 0.75  # the shipped model (measured 0.868) ...
    assert comparison["baseline"]["hippocampus"]["dice"] < comparison["model"]["hippocampus"]["dice"]  # ... vs 3 s of UNet
    printed = capsys.readouterr().out
    assert "| hippocampus | 1 | 0.8" in printed and "baseline Dice" in printed and "0 of 1 returned something" in printed


def test_evaluate_needs_label_maps_or_heldout_cases(capsys):
    assert main(["evaluate"]) != 0
    assert "--heldout" in capsys.readouterr().err
