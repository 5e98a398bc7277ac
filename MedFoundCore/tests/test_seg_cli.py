"""``medfound segment`` / ``train-seg`` command lines: outputs, reports and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medfoundcore.cli import build_parser, main
from medfoundcore.commands import segment as segment_command
from medfoundcore.errors import Cancelled
from medfoundcore.io import load_volume
from medfoundcore.progress import CancelToken


@pytest.fixture()
def ct_path(shared_data):
    return shared_data / "totalsegmentator" / "ts_ct_sm_img.nii.gz"


def test_segment_writes_labels_and_report(ct_path, tmp_path, capsys):
    out, report = tmp_path / "seg.nii.gz", tmp_path / "seg.json"
    code = main(["segment", str(ct_path), "-p", "liver", "-p", "grey matter", "-o", str(out), "--json", str(report), "--device", "cpu", "--quiet", "--model", "starter-v2"])
    assert code == 0
    labels, image = load_volume(out, label=True), load_volume(ct_path)
    assert labels.shape == image.shape and np.allclose(labels.affine_ras, image.affine_ras)
    data = json.loads(report.read_text())
    assert [p["structure_key"] for p in data["prompts"]] == ["liver", "grey_matter"]
    assert data["prompts"][0]["found"] and data["model"] == "starter-v2"
    assert any("grey matter" in w for w in data["warnings"])  # MRI structure prompted on CT
    assert "warning" in capsys.readouterr().err


def test_unknown_and_empty_prompts(ct_path, tmp_path, capsys):
    out = tmp_path / "x.nii.gz"
    assert main(["segment", str(ct_path), "-p", "spleeen", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "unknown structure" in err and "spleen" in err
    assert main(["segment", str(ct_path), "-p", " ", "-o", str(out)]) == 2
    assert "empty prompt" in capsys.readouterr().err
    assert not out.exists()


def test_existing_output_and_input_are_never_overwritten(ct_path, tmp_path, capsys):
    out = tmp_path / "taken.nii.gz"
    out.write_bytes(b"user data")
    assert main(["segment", str(ct_path), "-p", "liver", "-o", str(out)]) == 2
    assert out.read_bytes() == b"user data"
    assert main(["segment", str(ct_path), "-p", "liver", "-o", str(ct_path), "--overwrite"]) == 2
    assert "input image" in capsys.readouterr().err


def test_cancellation_leaves_no_file(ct_path, tmp_path):
    out, report = tmp_path / "seg.nii.gz", tmp_path / "seg.json"
    args = build_parser().parse_args(["segment", str(ct_path), "-p", "liver", "-o", str(out), "--json", str(report), "--device", "cpu", "--quiet"])
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        segment_command.run(args, cancel=token)
    assert list(tmp_path.iterdir()) == []


def test_train_seg_refuses_to_mix_runs_without_resume(shared_data, tmp_path, medfound_home, capsys):
    work = tmp_path / "run"
    work.mkdir()
    (work / "step-00000005.pt").write_bytes(b"")
    code = main(["train-seg", str(shared_data / "totalsegmentator" / "ts_ct_sm_img.nii.gz"), "--out-name", "x", "--work-dir", str(work)])
    assert code == 2
    assert "--resume" in capsys.readouterr().err


def test_train_seg_progress_json_reports_progress_and_metrics_on_stdout(shared_data, tmp_path, medfound_home, capsys, one_thread):
    """What the Slicer module reads from the child process: JSON progress and metrics lines, then the model folder."""
    work = tmp_path / "run"
    args = ["train-seg", str(shared_data / "dcmqi_ct3slice"), "--out-name", "json-run", "--work-dir", str(work),
            "--steps", "2", "--log-every", "1", "--checkpoint-every", "1", "--preset", "tiny", "--image-size", "64",
            "--batch-size", "2", "--device", "cpu", "--progress-json"]
    assert main(args) == 0
    *lines, last = capsys.readouterr().out.splitlines()
    events = [json.loads(line) for line in lines]  # every line before the model folder is JSON
    assert [e["metrics"]["step"] for e in events if "metrics" in e] == [1, 2]
    training = [e["progress"] for e in events if e.get("progress", {}).get("stage") == "training"]
    assert [(p["done"], p["total"]) for p in training] == [(1, 2), (2, 2)]
    assert last == str(medfound_home / "models" / "json-run") and (medfound_home / "models" / "json-run" / "card.json").is_file()
    # the same command again resumes the finished run (with --resume) and keeps its model
    assert main(args + ["--resume"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == last
