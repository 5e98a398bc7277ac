"""The CLI: discovered subcommands, help, convert on real DICOM, and the FVE benchmark report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from medfoundcore.cli import main
from medfoundcore.io import load_volume


def test_help_lists_foundation_commands() -> None:
    result = subprocess.run([sys.executable, "-m", "medfoundcore.cli", "--help"], capture_output=True, text=True, check=True)
    for command in ("evaluate", "convert", "bench", "models"):
        assert command in result.stdout


def test_convert_dicom_series_to_nifti_with_resampling(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "ct.nii.gz"
    assert main(["convert", str(shared_data / "totalsegmentator/ts_ct_dicom20_series"), str(out), "--spacing", "2"]) == 0
    volume = load_volume(out)
    assert volume.spacing == (2.0, 2.0, 2.0) and volume.shape == (20, 250, 250)


def test_bench_fve_reports_ratio(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["bench", "fve", "--shape", "12,64,64", "--repeats", "1", "--json", str(tmp_path / "fve.json")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [r["k"] for r in report["results"]] == [1, 2, 3]
    assert all(r["ratio_to_copy"] > 0 and r["encode_s"] > 0 for r in report["results"])
    assert json.loads((tmp_path / "fve.json").read_text()) == report


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: medfound" in capsys.readouterr().out
