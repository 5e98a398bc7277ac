"""``medfound bench segment --heldout``: the evaluation behind docs/segmentation.md, on a real held-out case."""

from __future__ import annotations

from medfoundcore.bench.segment import heldout_report, summarize_absent
from medfoundcore.data.datasets import find_cases


def test_heldout_report_scores_present_and_prompts_distant_structures(shared_data):
    refs = find_cases([shared_data / "msd_hippocampus" / "hippocampus_203_img.nii.gz"])  # held out of starter-v2
    report = heldout_report(refs, "default", ["hippocampus", "liver", "grey_matter", "spleen"])
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
