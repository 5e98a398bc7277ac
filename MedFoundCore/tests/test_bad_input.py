"""Every bad input gives one clear error line naming the file and the problem, exit code 2, and no output."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from medfoundcore.cli import main
from medfoundcore.errors import InputError
from medfoundcore.io import load_volume


def _nifti(path: Path, array: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(array, np.diag([1.0, 1.0, 2.0, 1.0])), str(path))
    return path


def _bad_inputs(tmp: Path, shared_data: Path) -> dict[str, tuple[Path, str, bool]]:
    """name -> (file, expected message fragment, read as label)."""
    corrupt = tmp / "corrupt.nii.gz"
    corrupt.write_bytes(b"\x1f\x8b\x08\x00garbage" + bytes(range(200)))
    truncated = tmp / "truncated.nii.gz"
    truncated.write_bytes((shared_data / "totalsegmentator/ts_ct_sm_img.nii.gz").read_bytes()[:5000])
    empty = tmp / "empty.nrrd"
    empty.write_bytes(b"")
    flat = tmp / "flat.nii.gz"
    sitk.WriteImage(sitk.Image(32, 24, sitk.sitkInt16), str(flat))
    nan = np.zeros((8, 8, 8), np.float32)
    nan[2, 3, 4] = np.nan
    nan[1, 1, 1] = np.inf
    zero = tmp / "zero.nii.gz"
    header = nib.Nifti1Image(np.zeros((4, 4, 1), np.int16), np.eye(4))
    header.header.set_data_shape((4, 4, 0))
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 0), np.int16), np.eye(4)), str(zero))
    fractional = np.zeros((6, 6, 6), np.float32)
    fractional[2:4, 2:4, 2:4] = 0.37
    return {
        "missing": (tmp / "does-not-exist.nii.gz", "file not found", False),
        "corrupt": (corrupt, "cannot be read", False),
        "truncated": (truncated, "cannot be read", False),
        "empty": (empty, "empty", False),
        "2d": (flat, "2D image", False),
        "4d": (_nifti(tmp / "four.nii.gz", np.zeros((6, 6, 6, 3), np.float32)), "4D image", False),
        "nan": (_nifti(tmp / "nan.nii.gz", nan), "2 NaN/Inf voxels", False),
        "zero-axis": (zero, "zero-length axis", False),
        "float-label": (_nifti(tmp / "prob.nii.gz", fractional), "not a label map", True),
    }


CASES = ["missing", "corrupt", "truncated", "empty", "2d", "4d", "nan", "zero-axis", "float-label"]


@pytest.mark.parametrize("case", CASES)
def test_load_volume_raises_clear_error(case: str, tmp_path: Path, shared_data: Path) -> None:
    path, fragment, label = _bad_inputs(tmp_path, shared_data)[case]
    with pytest.raises(InputError) as info:
        load_volume(path, label=label)
    message = str(info.value)
    assert str(path) in message and fragment in message
    assert "\n" not in message


@pytest.mark.parametrize("case", CASES)
def test_cli_convert_reports_and_writes_nothing(case: str, tmp_path: Path, shared_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, fragment, label = _bad_inputs(tmp_path, shared_data)[case]
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    argv = ["convert", str(path), str(out_dir / "result.nii.gz")] + (["--label"] if label else [])
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("medfound: error: ") and str(path) in err[0] and fragment in err[0]
    assert list(out_dir.iterdir()) == [], "no partial output may be left behind"


@pytest.mark.parametrize("case", ["corrupt", "2d", "float-label"])
def test_cli_evaluate_reports_and_writes_nothing(case: str, tmp_path: Path, shared_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, fragment, _ = _bad_inputs(tmp_path, shared_data)[case]
    report = tmp_path / "report.json"
    reference = shared_data / "totalsegmentator/ts_ct_sm_lab.nii.gz"
    assert main(["evaluate", str(path), str(reference), "--json", str(report)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and fragment in err
    assert not report.exists()


def test_unwritable_format_is_refused_before_reading(tmp_path: Path, shared_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["convert", str(shared_data / "totalsegmentator/ts_ct_sm_img.nii.gz"), str(tmp_path / "x.png")]) == 2
    assert "cannot write this format" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
