"""Volume I/O: exact geometry and values through NIfTI/NRRD on every real case, DICOM series, oblique grids."""

from __future__ import annotations

import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from medfoundcore.data.paths import shared_data_dir
from medfoundcore.io import Volume, load_volume, save_volume

AFFINE_TOL_MM = 1e-4


def _all_cases() -> list[Path]:
    root = shared_data_dir(required=False)
    return sorted(root.glob("**/*_img.nii.gz")) if root.is_dir() else []


def test_every_case_is_found(shared_data: Path) -> None:
    cases = _all_cases()
    assert len(cases) >= 467, "expected every case of ../shared/data (README lists 467 images)"
    assert all(Path(str(c).replace("_img.nii.gz", "_lab.nii.gz")).exists() for c in cases)


def _roundtrip(volume: Volume, path: Path, label: bool) -> Volume:
    save_volume(volume, path, compress=False)
    return load_volume(path, label=label)


@pytest.mark.parametrize("image_path", _all_cases(), ids=lambda p: p.name.removesuffix("_img.nii.gz"))
def test_roundtrip_every_case(image_path: Path, tmp_path: Path) -> None:
    """Image and label of each case survive a write/read (NIfTI or NRRD alternately) with identical geometry and voxels."""
    suffix = ".nrrd" if zlib.crc32(image_path.name.encode()) % 2 else ".nii"
    for path, label in ((image_path, False), (Path(str(image_path).replace("_img.nii.gz", "_lab.nii.gz")), True)):
        original = load_volume(path, label=label)
        # our RAS affine is the one nibabel reads from the file header
        assert np.abs(original.affine_ras - nib.load(path).affine).max() < AFFINE_TOL_MM
        again = _roundtrip(original, tmp_path / f"x{suffix}", label)
        assert np.abs(again.affine_ras - original.affine_ras).max() < AFFINE_TOL_MM
        assert again.array.dtype == original.array.dtype
        np.testing.assert_array_equal(again.array, original.array)


def test_dicom_series_matches_nifti(shared_data: Path) -> None:
    """The 20-slice DICOM series reads sorted by position, in HU, on the same grid as its NIfTI export."""
    series = load_volume(shared_data / "totalsegmentator/ts_ct_dicom20_series")
    nifti = load_volume(shared_data / "totalsegmentator/ts_ct_dicom20_img.nii.gz")
    assert series.meta["modality"] == "CT" and series.meta["dicom_files"] == 20
    assert np.abs(series.affine_ras - nifti.affine_ras).max() < AFFINE_TOL_MM
    np.testing.assert_array_equal(series.array.astype(np.int32), nifti.array.astype(np.int32))


def test_dicom_order_does_not_depend_on_file_names(shared_data: Path, tmp_path: Path) -> None:
    """Files renamed in reverse order still load in slice-position order."""
    source = sorted((shared_data / "totalsegmentator/ts_ct_dicom20_series").iterdir())
    for rank, path in enumerate(reversed(source)):
        (tmp_path / f"{rank:03d}.dcm").write_bytes(path.read_bytes())
    shuffled = load_volume(tmp_path)
    original = load_volume(shared_data / "totalsegmentator/ts_ct_dicom20_series")
    np.testing.assert_array_equal(shuffled.array, original.array)
    assert np.abs(shuffled.affine_ras - original.affine_ras).max() < AFFINE_TOL_MM


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_oblique_roundtrip(shared_data: Path, tmp_path: Path, suffix: str) -> None:
    """An oblique, anisotropic grid keeps its affine to < 1e-4 mm and its labels exactly."""
    label = load_volume(shared_data / "totalsegmentator/ts_ct_sm_lab.nii.gz", label=True)
    angle = np.deg2rad(23.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    tilt = np.array([[1, 0, 0], [0, np.cos(0.3), -np.sin(0.3)], [0, np.sin(0.3), np.cos(0.3)]])
    oblique = Volume(label.array, (0.7, 1.3, 2.9), (-12.25, 40.5, 101.125), rotation @ tilt)
    again = _roundtrip(oblique, tmp_path / f"oblique{suffix}", label=True)
    assert np.abs(again.affine_ras - oblique.affine_ras).max() < AFFINE_TOL_MM
    np.testing.assert_array_equal(again.array, oblique.array)


def test_a_crop_keeps_every_voxel_at_its_world_position(shared_data: Path) -> None:
    """On an oblique, anisotropic grid a voxel of the crop and the same voxel of the whole volume map to
    one RAS point (SimpleITK's own physical point checks the whole volume's mapping)."""
    label = load_volume(shared_data / "totalsegmentator/ts_ct_sm_lab.nii.gz", label=True)
    angle = np.deg2rad(23.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    volume = Volume(label.array, (0.7, 1.3, 2.9), (-12.25, 40.5, 101.125), rotation)
    box = (slice(4, 20), slice(10, 60), slice(30, 90))
    crop = volume.crop(box)
    assert crop.shape == (16, 50, 60)
    np.testing.assert_array_equal(crop.array, volume.array[box])
    ijk_in_crop = np.array([[0, 0, 0], [7, 11, 5]])
    ijk_in_volume = ijk_in_crop + [30, 10, 4]
    assert np.allclose(crop.index_to_ras(ijk_in_crop), volume.index_to_ras(ijk_in_volume), atol=1e-9)
    point_lps = crop.to_sitk().TransformIndexToPhysicalPoint((7, 11, 5))
    assert np.allclose(volume.index_to_ras([37, 21, 9])[0], [-point_lps[0], -point_lps[1], point_lps[2]])


def test_affine_conversions_are_inverse(shared_data: Path) -> None:
    volume = load_volume(shared_data / "openkbp/test_pt_243_img.nii.gz")
    rebuilt = Volume.from_affine_ras(volume.array, volume.affine_ras)
    assert np.allclose(rebuilt.affine_lps, volume.affine_lps, atol=1e-9)
    ijk = np.array([[0, 0, 0], [3.5, 7.25, 1.0], [10, 20, 5]])
    assert np.allclose(volume.ras_to_index(volume.index_to_ras(ijk)), ijk)
    # index (i, j, k) addresses array[k, j, i]: its RAS position agrees with SimpleITK's LPS point
    point_lps = volume.to_sitk().TransformContinuousIndexToPhysicalPoint((3.5, 7.25, 1.0))
    assert np.allclose(volume.index_to_ras([3.5, 7.25, 1.0])[0], [-point_lps[0], -point_lps[1], point_lps[2]])


def test_write_is_atomic_on_failure(tmp_path: Path) -> None:
    """A failed write leaves neither the target nor a temporary file behind."""
    target = tmp_path / "out.nii.gz"
    volume = Volume(np.zeros((2, 3, 4), np.uint8))
    object.__setattr__(volume, "spacing", (1.0, 1.0, -1.0))  # impossible geometry makes SimpleITK refuse
    with pytest.raises(Exception):
        save_volume(volume, target)
    assert list(tmp_path.iterdir()) == []


def test_sitk_geometry_matches_volume(shared_data: Path) -> None:
    path = shared_data / "sct_tutorial_data/sub-05_MTon_img.nii.gz"
    image = sitk.ReadImage(str(path))
    volume = load_volume(path)
    assert volume.spacing == pytest.approx(image.GetSpacing())
    assert volume.shape == tuple(reversed(image.GetSize()))


def test_written_files_follow_the_umask(tmp_path: Path) -> None:
    import os

    previous = os.umask(0o022)
    try:
        path = save_volume(Volume(np.zeros((2, 3, 4), np.uint8)), tmp_path / "m.nii.gz")
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == 0o644
