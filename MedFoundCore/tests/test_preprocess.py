"""Preprocessing per BiomedParse-V §5.2: windows, percentiles, resampling, view selection, modality."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from medfoundcore.errors import InputError
from medfoundcore.io import Volume, load_volume
from medfoundcore.preprocess import (
    CT_WINDOWS,
    content_mask,
    detect_modality,
    normalize_intensity,
    parse_modality,
    resample_like,
    resample_to_spacing,
    select_view,
    training_views,
    window_ct,
)


@pytest.mark.parametrize("name,width,level", [("soft_tissue", 400, 40), ("lung", 1500, -160), ("brain", 80, 40), ("bone", 1800, 400)])
def test_ct_windows_map_edges_to_0_and_255(name: str, width: float, level: float) -> None:
    assert CT_WINDOWS[name] == (width, level)
    hu = np.array([level - width / 2 - 10, level - width / 2, level, level + width / 2, level + width / 2 + 10], np.float32)
    np.testing.assert_allclose(window_ct(hu, name), [0, 0, 127.5, 255, 255], atol=1e-4)


def test_mri_percentile_clipping(shared_data: Path) -> None:
    mri = load_volume(shared_data / "msd_hippocampus/hippocampus_001_img.nii.gz")
    out = normalize_intensity(mri.array.astype(np.float32) * 1000.0, "MRI")
    low, high = np.percentile(mri.array.astype(np.float32) * 1000.0, [0.5, 99.5])
    assert out.min() == 0 and out.max() == pytest.approx(255)
    assert (out == 255).mean() == pytest.approx((mri.array * 1000.0 >= high).mean(), abs=0.002)
    assert out.dtype == np.float32 and low < high


def test_uint8_images_are_left_as_they_are() -> None:
    array = np.arange(0, 200, dtype=np.uint8).reshape(2, 10, 10)
    np.testing.assert_array_equal(normalize_intensity(array, "MRI"), array.astype(np.float32))


@pytest.mark.parametrize(
    "case,expected",
    [
        ("totalsegmentator/ts_ct_sm_img.nii.gz", "CT"),
        ("cip_chest_ct64/ct-64_img.nii.gz", "CT"),
        ("openkbp/test_pt_243_img.nii.gz", "CT"),
        ("totalsegmentator/ts_mr_sm_img.nii.gz", "MRI"),
        ("mni152_nilearn/mni152_2009a_t1_img.nii.gz", "MRI"),
        ("brats2013/" , "MRI"),
        ("msd_hippocampus/hippocampus_004_img.nii.gz", "MRI"),
    ],
)
def test_detect_modality_on_real_volumes(shared_data: Path, case: str, expected: str) -> None:
    path = shared_data / case
    if path.is_dir():
        path = sorted(path.glob("*_img.nii.gz"))[0]
    assert detect_modality(load_volume(path)) == expected


def test_modality_metadata_and_override() -> None:
    assert detect_modality(Volume(np.zeros((2, 2, 2)), meta={"modality": "MR"})) == "MRI"
    assert parse_modality("ct") == "CT" and parse_modality("auto") is None
    with pytest.raises(InputError):
        parse_modality("ultrasound")


def test_resample_keeps_extent_and_labels(shared_data: Path) -> None:
    label = load_volume(shared_data / "totalsegmentator/ts_ct_sm_lab.nii.gz", label=True)
    fine = resample_to_spacing(label, 1.5, label=True)
    assert fine.spacing == (1.5, 1.5, 1.5)
    assert fine.shape == tuple(int(round(n * 2)) for n in label.shape)
    assert set(np.unique(fine.array)) <= set(np.unique(label.array)), "nearest neighbour invents no labels"
    back = resample_like(fine, label, label=True)
    assert back.shape == label.shape and np.allclose(back.affine_ras, label.affine_ras)
    assert (back.array == label.array).mean() > 0.99
    image = load_volume(shared_data / "totalsegmentator/ts_ct_sm_img.nii.gz")
    smooth = resample_to_spacing(image, (6.0, 6.0, 6.0))
    assert smooth.array.mean() == pytest.approx(image.array.mean(), rel=0.05)


def test_view_selection_rule() -> None:
    assert select_view((200, 512, 512)) == 0  # axial slices are square
    assert select_view((300, 64, 160)) == 1 or select_view((300, 64, 160)) == 2
    shape = (40, 40, 200)  # axial slices 40x200 (ratio 1.33): choose the roundest view
    assert select_view(shape) in (1, 2)
    assert training_views((100, 100, 100), (1.0, 1.0, 1.05)) == [0, 1, 2]
    assert training_views((100, 100, 100), (1.0, 1.0, 3.0)) == [0]


def test_content_is_the_body_not_the_padding(shared_data: Path) -> None:
    from medfoundcore.preprocess import model_slices

    ct = load_volume(shared_data / "openkbp" / "test_pt_243_img.nii.gz")  # head-and-neck CT, zero-padded above the head
    labels = load_volume(shared_data / "openkbp" / "test_pt_243_lab.nii.gz", label=True).array
    content = content_mask(model_slices(ct.array, 0, "CT", 128))
    padding = np.flatnonzero((ct.array == ct.array.min()).all(axis=(1, 2)))
    assert padding.size > 10 and not content[padding].any()
    structures = model_slices(labels, 0, None, 128, label=True) > 0
    assert content[structures].all()  # every labelled voxel, the masked-out slices' spinal cord included
    assert content.mean() < 0.2  # ... yet most of this image is air


def test_lungs_inside_the_body_are_content(shared_data: Path) -> None:
    from medfoundcore.preprocess import model_slices

    ct = load_volume(shared_data / "totalsegmentator" / "ts_ct_full_img.nii.gz")
    stack = model_slices(ct.array, 0, "CT", 128)  # soft-tissue window: lung is as black as air
    lung = model_slices((ct.array < -500).astype(np.uint8), 0, None, 128, label=True) > 0
    body = content_mask(stack, margin=0)
    inside = lung & ndimage.binary_erosion(body, iterations=1)
    assert inside.sum() > 1000  # lung voxels (black) counted as content: they lie inside the body outline
    assert not content_mask(stack)[:, -2:, :].any()  # while the air behind the body (last rows) is not


def test_a_tiny_speck_makes_no_content() -> None:
    stack = np.zeros((3, 128, 128), np.float32)
    stack[1, :10, :10] = 200  # 100 pixels = 0.6 % of the slice
    stack[2, 0, :10] = 200  # 10 pixels: a speck on padding
    assert content_mask(stack).any(axis=(1, 2)).tolist() == [False, True, False]
    grown = content_mask(stack, margin=2)[1]
    assert grown[:12, :10].all() and grown[:10, :12].all() and not grown[12:, :].any() and not grown[:, 12:].any()
