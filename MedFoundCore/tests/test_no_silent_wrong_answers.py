"""Issue 16: bad input that used to give a wrong answer with exit 0 now gives exit 2 or a warned, correct result.

Every bad input is built from real data: the 20-slice DICOM series with slices removed or re-issued
under a new SeriesInstanceUID, a TotalSegmentator label map given as the image, real prompts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medfoundcore.cli import main
from medfoundcore.errors import InputError
from medfoundcore.inference.prompts import plan_prompts
from medfoundcore.io import atomic_outputs, label_map_reason, load_volume, refuse_label_map, save_volume
from medfoundcore.vocabulary import load_vocabulary

MODEL = "starter-v2"  # the slice model, named so that the default's dispatch cannot change what is tested


@pytest.fixture()
def ct_path(shared_data: Path) -> Path:
    return shared_data / "totalsegmentator" / "ts_ct_sm_img.nii.gz"


@pytest.fixture()
def series_dir(shared_data: Path) -> Path:
    return shared_data / "totalsegmentator" / "ts_ct_dicom20_series"


def _segment(*args: str) -> int:
    return main(["segment", *args, "--device", "cpu", "--quiet", "--model", MODEL])


# ----------------------------------------------------------------------------------------- DICOM
def _copy_series(source: Path, target: Path, keep=lambda i: True, uid: str | None = None, shift_mm: float = 0.0) -> list[Path]:
    """Copy the series' slices (sorted by position) that ``keep(i)`` accepts, optionally re-issued
    under a new SeriesInstanceUID and moved ``shift_mm`` along z."""
    target.mkdir(parents=True, exist_ok=True)
    files = sorted(source.iterdir(), key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]))
    out = []
    for i, path in enumerate(files):
        if not keep(i):
            continue
        if uid is None and not shift_mm:
            shutil.copy(path, target / path.name)
        else:
            ds = pydicom.dcmread(path)
            ds.SeriesInstanceUID = uid or ds.SeriesInstanceUID
            ds.SeriesDescription = f"{ds.SeriesDescription} copy"
            ds.SOPInstanceUID = pydicom.uid.generate_uid()
            ds.ImagePositionPatient[2] = float(ds.ImagePositionPatient[2]) + shift_mm
            ds.save_as(target / f"copy-{path.name}")
        out.append(target / path.name)
    return out


def test_dicom_gaps_are_resampled_at_true_positions_and_reported(series_dir: Path, tmp_path: Path) -> None:
    missing = {3, 4, 9, 10, 15}  # 5 of 20 slices, first and last kept
    _copy_series(series_dir, tmp_path / "gappy", keep=lambda i: i not in missing)
    full, gappy = load_volume(series_dir), load_volume(tmp_path / "gappy")
    assert gappy.shape == full.shape and np.allclose(gappy.spacing, full.spacing)  # 2 mm, not 38/14 = 2.714
    assert np.allclose(gappy.affine_lps, full.affine_lps)
    kept = [i for i in range(20) if i not in missing]
    assert np.array_equal(gappy.array[kept], full.array[kept].astype(np.float32))  # acquired slices at their true place
    assert any("not evenly spaced" in w and "5 of them interpolated" in w for w in gappy.meta["warnings"])
    assert not full.meta["warnings"]


def test_dicom_gap_warning_reaches_the_json(series_dir: Path, tmp_path: Path) -> None:
    _copy_series(series_dir, tmp_path / "gappy", keep=lambda i: i not in {5, 6, 12})
    out, report = tmp_path / "seg.nii.gz", tmp_path / "seg.json"
    assert _segment(str(tmp_path / "gappy"), "-p", "liver", "-o", str(out), "--json", str(report)) == 0
    data = json.loads(report.read_text())
    assert any("not evenly spaced" in w for w in data["warnings"])
    assert load_volume(out, label=True).spacing[2] == pytest.approx(2.0)


def test_folder_with_two_series_is_refused_unless_one_is_picked(series_dir: Path, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "two"
    _copy_series(series_dir, folder)
    _copy_series(series_dir, folder, keep=lambda i: i < 12, uid="1.2.826.0.1.3680043.8.498.16", shift_mm=1000.0)
    with pytest.raises(InputError) as error:
        load_volume(folder)
    message = str(error.value)
    assert "2 DICOM series" in message and "1.2.826.0.1.3680043.8.498.16" in message
    assert "20 slices" in message and "12 slices" in message and "axial" in message and "copy" in message
    picked = load_volume(folder, series="1.2.826.0.1.3680043.8.498.16")
    assert picked.shape[0] == 12 and picked.origin[2] > load_volume(series_dir).origin[2] + 999
    assert load_volume(folder, series="1").shape[0] == 20
    original, copy = sorted(folder.glob("CT.*"))[0], sorted(folder.glob("copy-*"))[0]
    assert load_volume(original).shape[0] == 20 and load_volume(copy).shape[0] == 12  # a file reads its own series
    assert any("read [2]" in w for w in picked.meta["warnings"])
    out = tmp_path / "seg.nii.gz"
    assert _segment(str(folder), "-p", "liver", "-o", str(out)) == 2
    assert "--series" in capsys.readouterr().err and not out.exists()


# ----------------------------------------------------------------------------------------- prompts
def test_duplicate_prompts_share_one_label_and_one_report(ct_path: Path, tmp_path: Path) -> None:
    out, report = tmp_path / "seg.nii.gz", tmp_path / "seg.json"
    assert _segment(str(ct_path), "-p", "liver", "-p", "spleen", "-p", "liver in MRI", "-o", str(out), "--json", str(report)) == 0
    data = json.loads(report.read_text())
    assert [p["structure_key"] for p in data["prompts"]] == ["liver", "spleen"]
    assert data["prompts"][0]["prompts"] == ["liver", "liver in MRI"] and data["prompts"][0]["found"]
    assert all(p["status"] == "found" for p in data["prompts"])
    assert any("'liver', 'liver in MRI'" in w for w in data["warnings"])
    assert set(np.unique(load_volume(out, label=True).array)) <= {0, 1, 2}


def test_plan_prompts_labels_each_original_prompt() -> None:
    plan = plan_prompts(["liver", "L kidney", "the liver", "left kidney in CT"], load_vocabulary(), {"liver", "kidney_left"})
    assert [s.key for s in plan.structures] == ["liver", "kidney_left"]
    assert plan.label_of == [1, 2, 1, 2] and len(plan.warnings) == 2


def test_a_structure_and_its_part_are_refused_together(ct_path: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "seg.nii.gz"
    assert _segment(str(ct_path), "-p", "kidney", "-p", "left kidney", "-p", "right kidney", "-o", str(out)) == 2
    err = capsys.readouterr().err
    assert "'kidney' and 'left kidney' overlap" in err and "separate runs" in err and not out.exists()


def test_untrained_structure_is_refused_then_marked_in_the_json(ct_path: Path, tmp_path: Path, capsys) -> None:
    out, report = tmp_path / "seg.nii.gz", tmp_path / "seg.json"
    assert _segment(str(ct_path), "-p", "lung", "-o", str(out)) == 2
    err = capsys.readouterr().err
    assert "not trained on 'lung'" in err and "liver" in err and "--best-effort" in err and not out.exists()
    assert _segment(str(ct_path), "-p", "liver", "-p", "prostate", "-o", str(out), "--json", str(report), "--best-effort") == 0
    liver, prostate = json.loads(report.read_text())["prompts"]
    assert liver["known_to_model"] and liver["status"] == "found"
    assert not prostate["known_to_model"] and "not known to this model" in prostate["status"]


# ----------------------------------------------------------------------------------------- label maps
def test_a_label_map_given_as_image_is_refused(shared_data: Path, tmp_path: Path, capsys) -> None:
    label = shared_data / "totalsegmentator" / "ts_ct_sm_lab.nii.gz"
    out = tmp_path / "seg.nii.gz"
    assert _segment(str(label), "-p", "liver", "-o", str(out)) == 2
    assert "looks like a label map" in capsys.readouterr().err and not out.exists()
    refuse_label_map(load_volume(label), force=True)  # forced: accepted


@pytest.mark.parametrize("case", ["totalsegmentator/ts_ct_sm", "colin27_mricron/colin27_ch2", "pyradiomics/breast1", "mni152_nilearn/mni152_2009a_t1", "openkbp/test_pt_250"])
def test_label_maps_are_told_from_real_images(shared_data: Path, case: str) -> None:
    assert label_map_reason(load_volume(shared_data / f"{case}_img.nii.gz")) is None
    assert label_map_reason(load_volume(shared_data / f"{case}_lab.nii.gz")) is not None


# ----------------------------------------------------------------------------------------- outputs
def test_unwritable_json_fails_before_inference_and_leaves_nothing(ct_path: Path, tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    out = tmp_path / "seg.nii.gz"
    assert _segment(str(ct_path), "-p", "liver", "-o", str(out), "--json", str(blocker / "report.json")) == 2
    assert "cannot be written" in capsys.readouterr().err
    assert _segment(str(ct_path), "-p", "liver", "-o", str(tmp_path / "seg.png")) == 2
    assert "cannot write this format" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_outputs_appear_together_and_a_concurrent_result_is_never_replaced(ct_path: Path, tmp_path: Path) -> None:
    volume = load_volume(ct_path)
    image, report = tmp_path / "seg.nii.gz", tmp_path / "seg.json"
    with pytest.raises(InputError, match="another process"):
        with atomic_outputs([image, report]) as (tmp_image, tmp_report):
            save_volume(volume, tmp_image)
            tmp_report.write_text("{}")
            report.write_text("the other run's report")  # another writer wins the race for one name
    assert not image.exists() and report.read_text() == "the other run's report"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seg.json"]  # no temp files either


# ----------------------------------------------------------------------------------------- errors
def test_long_prompts_are_shortened_and_foie_suggests_no_spleen(ct_path: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "seg.nii.gz"
    assert _segment(str(ct_path), "-p", "x" * 10_000, "-o", str(out)) == 2
    err = capsys.readouterr().err
    assert len(err) < 400 and "10000 characters" in err
    assert _segment(str(ct_path), "-p", "foie", "-o", str(out)) == 2
    err = capsys.readouterr().err
    assert "unknown structure" in err and "spleen" not in err
    assert _segment(str(ct_path), "-p", "spleeen", "-o", str(out)) == 2
    assert "'spleen'" in capsys.readouterr().err  # a real typo still gets its suggestion


@pytest.mark.parametrize("delay_s", [0.5, 1.5, 4.0])  # during the imports of the package and its commands, then while running
def test_ctrl_c_at_any_moment_exits_130_with_one_line(ct_path: Path, tmp_path: Path, delay_s: float) -> None:
    import signal
    import subprocess
    import sys
    import time

    script = Path(sys.executable).with_name("medfound")
    proc = subprocess.Popen(
        [str(script), "segment", str(ct_path), "-p", "liver", "-o", str(tmp_path / "seg.nii.gz"), "--device", "cpu", "--quiet", "--model", MODEL],
        stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    time.sleep(delay_s)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.fail(f"finished within {delay_s} s: the interrupt came too late to test anything")
    assert proc.returncode == 130, err
    assert err.strip().splitlines() == ["medfound: interrupted; no output was written"]
    assert not (tmp_path / "seg.nii.gz").exists()


# ----------------------------------------------------------------------------------------- train-seg provenance
def _tiny_train(**overrides):
    from medfoundcore.train.segment import TrainConfig

    base = dict(
        preset="tiny", image_size=64, fve_k=1, steps=6, lr=2e-3, warmup_steps=2, batch_size=2, prompts_per_image=2,
        synth_fraction=0.0, augment=False, device="cpu", checkpoint_every=3, log_every=1, seed=0, structures=["liver", "spleen"],
    )
    return TrainConfig(**{**base, **overrides})


@pytest.fixture(scope="module")
def two_cases(shared_data: Path):
    from medfoundcore.data.datasets import find_cases

    refs = find_cases([shared_data / "totalsegmentator" / "ts_ct_sm_img.nii.gz", shared_data / "totalsegmentator" / "ts_mr_sm_img.nii.gz"])
    return [r.load() for r in refs]


def test_resume_refuses_other_data_and_cleans_partial_checkpoints(two_cases, tmp_path: Path, medfound_home: Path, one_thread) -> None:
    from medfoundcore.errors import Cancelled
    from medfoundcore.progress import CancelToken
    from medfoundcore.train.checkpoint import latest_checkpoint
    from medfoundcore.train.segment import train_segmenter

    ct, mr = two_cases
    token = CancelToken()
    with pytest.raises(Cancelled):
        train_segmenter([ct], _tiny_train(), "prov", tmp_path / "run", cancel=token, on_metrics=lambda m: m["step"] == 4 and token.cancel())
    last = latest_checkpoint(tmp_path / "run")
    partial = tmp_path / "run" / ".step-00000006.pt.k1ll3d.part.pt"  # what a kill -9 during a save leaves
    partial.write_bytes(last.read_bytes()[:1000])
    with pytest.raises(InputError, match="different training data"):
        train_segmenter([mr], _tiny_train(), "prov", tmp_path / "run")
    with pytest.raises(InputError, match="different training data"):
        train_segmenter([ct, mr], _tiny_train(), "prov", tmp_path / "run")
    assert latest_checkpoint(tmp_path / "run") == last and not partial.exists()


def test_resuming_a_finished_run_keeps_its_card(two_cases, tmp_path: Path, medfound_home: Path, one_thread) -> None:
    from medfoundcore.train.segment import train_segmenter

    ct, _ = two_cases
    out = tmp_path / "model"
    train_segmenter([ct], _tiny_train(), "done", tmp_path / "run", output_dir=out)
    card = (out / "card.json").read_bytes()
    assert json.loads(card)["metrics"]["train_history"]
    again = train_segmenter([ct], _tiny_train(), "done", tmp_path / "run", output_dir=out)
    assert again == out and (out / "card.json").read_bytes() == card


def test_convert_picks_a_series_and_warns_about_gaps(series_dir: Path, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "two"
    _copy_series(series_dir, folder, keep=lambda i: i != 7)
    _copy_series(series_dir, folder, keep=lambda i: i < 12, uid="1.2.826.0.1.3680043.8.498.17", shift_mm=1000.0)
    out = tmp_path / "ct.nii.gz"
    assert main(["convert", str(folder), str(out)]) == 2 and not out.exists()
    assert "2 DICOM series" in capsys.readouterr().err
    assert main(["convert", str(folder), str(out), "--series", "1"]) == 0
    assert "not evenly spaced" in capsys.readouterr().err
    assert load_volume(out).shape[0] == 20


def test_a_structure_that_lost_every_voxel_is_reported_outvoted_not_absent(ct_path: Path) -> None:
    from medfoundcore.inference.segment import segment

    volume = load_volume(ct_path)
    raw = dict(model=MODEL, device="cpu", use_isd=False, region_check=False, keep_islands=True)  # no gate: mandible is drawn somewhere
    alone = segment(volume, ["mandible"], **raw).reports[0]
    assert alone.found and alone.status == "found"
    result = segment(volume, ["liver", "hippocampus", "brainstem", "mandible", "grey matter"], **raw)
    mandible = next(r for r in result.reports if r.structure_key == "mandible")
    assert not mandible.found and mandible.status == "outvoted"
    assert any("'mandible' was seen but lost every voxel" in w for w in result.warnings)
