"""Datasets (shared and nnU-Net/MSD layouts, subject split), synthesis and augmentation on real data."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from medfoundcore.data.augment import SliceAugment
from medfoundcore.data.datasets import find_cases, split_by_subject
from medfoundcore.data.synth import synthesize
from medfoundcore.errors import InputError


def test_subjects_link_sequences_and_crops(shared_data):
    refs = find_cases([shared_data / "brats2013", shared_data / "totalsegmentator"])
    subject = {r.case_id: r.subject for r in refs}
    assert subject["brats_2013_pat0001_1_FLAIR"] == subject["brats_2013_pat0001_1_T1c"]
    assert subject["brats_2013_pat0001_1_FLAIR"] != subject["brats_2013_pat0002_1_FLAIR"]
    assert subject["ts_ct_sm"] == subject["ts_ct_full"]  # a crop of the same patient
    train, held = split_by_subject(refs, 0.3, seed=1)
    assert held and train
    assert not {r.subject for r in train} & {r.subject for r in held}
    assert len(train) + len(held) == len(refs)


def test_split_by_named_subjects(shared_data):
    refs = find_cases([shared_data / "spinegeneric_ivadomed", shared_data / "sct_example_data"])
    train, held = split_by_subject(refs, ["unf01"])
    assert {r.case_id for r in held} == {"unf01_T1w", "unf01_T2star", "unf01_T2w"}
    with pytest.raises(InputError, match="nobody"):
        split_by_subject(refs, ["nobody"])


def _nnunet_dataset(root, shared_data, msd: bool):
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    src = shared_data / "spinegeneric_ivadomed" / "unf01_T2w"
    image_name = "unf01.nii.gz" if msd else "unf01_0000.nii.gz"
    shutil.copy(f"{src}_img.nii.gz", root / "imagesTr" / image_name)
    shutil.copy(f"{src}_lab.nii.gz", root / "labelsTr" / "unf01.nii.gz")
    if msd:
        info = {"name": "spine", "modality": {"0": "MRI"}, "labels": {"0": "background", "1": "spinal cord"},
                "training": [{"image": "./imagesTr/unf01.nii.gz", "label": "./labelsTr/unf01.nii.gz"}]}
    else:
        info = {"channel_names": {"0": "T2w"}, "labels": {"background": 0, "spinal cord": 1}, "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(info))


@pytest.mark.parametrize("msd", [False, True])
def test_nnunet_and_msd_layouts(tmp_path, shared_data, msd):
    _nnunet_dataset(tmp_path / "ds", shared_data, msd)
    (ref,) = find_cases([tmp_path / "ds"])
    case = ref.load()
    assert case.names == {1: "spinal cord"}
    assert case.modality == "MRI"
    assert case.image.shape == case.labels.shape
    assert (case.labels.array == 1).sum() > 100


def test_label_grid_mismatch_is_reported(tmp_path, shared_data):
    for suffix in ("_img.nii.gz", "_labels.json"):
        shutil.copy(shared_data / "spinegeneric_ivadomed" / f"unf01_T2w{suffix}", tmp_path / f"x{suffix}")
    shutil.copy(shared_data / "sct_example_data" / "errsm30_t1w_lab.nii.gz", tmp_path / "x_lab.nii.gz")
    (ref,) = find_cases([tmp_path / "x_img.nii.gz"])
    with pytest.raises(InputError, match="differs from image shape"):
        ref.load()


def test_synthesis_keeps_anatomy_but_changes_contrast(shared_data):
    (ref,) = find_cases([shared_data / "totalsegmentator" / "ts_ct_sm_img.nii.gz"])
    case = ref.load()
    image = np.clip(case.image.array.astype(np.float32) + 160, 0, 400) / 400 * 255
    labels = case.labels.array
    liver, spleen = labels == 5, labels == 1
    a = synthesize(image, labels, np.random.default_rng(0))
    b = synthesize(image, labels, np.random.default_rng(1))
    assert a.shape == image.shape and a.min() >= 0 and a.max() <= 255
    assert abs(a[liver].mean() - b[liver].mean()) > 1.0  # a new random contrast per draw
    for synth in (a, b):  # each label is one tissue: its spread is small next to the contrast between labels
        within = max(synth[liver].std(), synth[spleen].std())
        assert within < 255 / 4


def _kidney_slice(shared_data):
    (ref,) = find_cases([shared_data / "totalsegmentator" / "ts_ct_sm_img.nii.gz"])
    case = ref.load()
    k = int(np.argmax((case.labels.array == 3).sum(axis=(1, 2))))
    crop = (slice(0, 96), slice(0, 96))
    slab = np.clip(case.image.array[k - 1 : k + 2][(slice(None), *crop)] + 160, 0, 400).astype(np.float32) / 400 * 255
    mask = (case.labels.array[k][crop] == 3)[None].astype(np.float32)
    return slab, mask


def _side(mask):
    return np.argwhere(mask[0] > 0)[:, 1].mean() > mask.shape[-1] / 2


def test_augmentation_never_flips_lateral_structures(shared_data):
    slab, mask = _kidney_slice(shared_data)
    augment = SliceAugment(96)
    rng = np.random.default_rng(0)
    side = _side(mask)
    kept = [_side(augment(slab, mask, rng, allow_lr_flip=False)[1]) == side for _ in range(25)]
    flipped = [_side(augment(slab, mask, rng, allow_lr_flip=True)[1]) != side for _ in range(25)]
    assert all(kept)
    assert any(flipped)


def test_scale_range_shrinks_the_anatomy_as_documented(shared_data):
    """+0.6 in MONAI's scale shows the kidney at 1/1.6 of its size: the area falls to about 0.39 where
    the affine step fires, so over many draws the median area is well below the default's."""
    slab, mask = _kidney_slice(shared_data)
    area = mask.sum()

    def median_area(scale_range):
        augment = SliceAugment(96, scale_range=scale_range)
        rng = np.random.default_rng(1)
        return np.median([augment(slab, mask, rng, allow_lr_flip=False)[1].sum() / area for _ in range(30)])

    assert 0.85 < median_area((-0.15, 0.15)) < 1.15
    assert median_area((0.6, 0.6)) < 0.6
