"""CI smoke run of ``medfound benchmark msd-hippocampus``: one fold, tiny models, seconds of training.

It must produce a complete table — every method trained, scored on the same test cases and costed —
and refuse to write a second split into the same folder.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib.image
import pytest

from medfoundcore.benchmark.methods import METHODS
from medfoundcore.benchmark.protocol import load_manifest
from medfoundcore.benchmark.scoring import SUMMARY_KEYS
from medfoundcore.cli import main

BUDGET_MINUTES = 0.2


@pytest.fixture(scope="module")
def smoke_run(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], Path]:
    out = tmp_path_factory.mktemp("benchmark")
    args = [
        "benchmark", "msd-hippocampus", "--out", str(out), "--data", str(shared_data / "msd_hippocampus"),
        "--folds", "5", "--fold-limit", "1", "--max-cases", "10", "--budget-minutes", str(BUDGET_MINUTES),
        "--size", "tiny", "--device", "cpu", "--methods", "all",
    ]  # fmt: skip
    assert main(args) == 0
    return args, out


def test_table_is_complete_for_every_method(smoke_run: tuple[list[str], Path]) -> None:
    _, out = smoke_run
    results = json.loads((out / "results.json").read_text())
    assert list(results["methods"]) == list(METHODS)
    manifest = load_manifest(out / "split_manifest.json")
    test_cases = sorted(manifest.fold(0).test)
    assert results["split"]["sha256"] == manifest.sha256
    for key, method in results["methods"].items():
        assert method["status"] == "ok", f"{key}: {method['status']}"
        assert sorted(c["case"] for c in method["per_case"]) == test_cases  # same test cases for everyone
        for name in SUMMARY_KEYS:
            for metric in ("dice", "hd95"):
                stat = method["summary"][name][metric]
                assert math.isfinite(stat["mean"]) and math.isfinite(stat["sd"]) and stat["n"] == len(test_cases)
            assert 0.0 <= method["summary"][name]["dice"]["mean"] <= 1.0
        assert method["parameters"] > 0 and method["iterations"] >= 1 and method["epochs"] > 0
        assert method["train_seconds"] > 0 and method["infer_seconds_per_case"] > 0 and method["peak_rss_mb"] > 0
        job = json.loads((out / "jobs" / "fold0" / key / "result.json").read_text())
        assert job["job"]["split_sha256"] == manifest.sha256
        assert job["job"]["budget_seconds"] == pytest.approx(BUDGET_MINUTES * 60)


def test_markdown_and_plot(smoke_run: tuple[list[str], Path]) -> None:
    _, out = smoke_run
    markdown = (out / "results.md").read_text()
    for cls in METHODS.values():
        assert f"| {cls.title} | " in markdown
    assert "| SwinUNETR | 0.872 | 6.023 |" in markdown  # the paper's Table I beside ours
    assert "MedFound's best method in this run" in markdown
    image = matplotlib.image.imread(out / "dice_boxplot.png")
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_rerun_reuses_results_and_refuses_another_split(smoke_run: tuple[list[str], Path], capsys: pytest.CaptureFixture[str]) -> None:
    args, out = smoke_run
    before = json.loads((out / "results.json").read_text())
    assert main(args) == 0  # every job is stored with the same identity: nothing is retrained
    after = json.loads((out / "results.json").read_text())
    for key in METHODS:
        assert after["methods"][key]["per_case"] == before["methods"][key]["per_case"]
        assert after["methods"][key]["train_seconds"] == before["methods"][key]["train_seconds"]
    capsys.readouterr()
    assert main([*args, "--seed", "1"]) == 2
    assert "mixing splits" in capsys.readouterr().err
