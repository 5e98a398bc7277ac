"""``medfoundcore.segment`` with the shipped starter model on real CT and MRI from the shared data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import medfoundcore
from medfoundcore.errors import Cancelled, InputError
from medfoundcore.inference.segment import label_map
from medfoundcore.io import Volume, load_volume
from medfoundcore.metrics import dice
from medfoundcore.progress import CancelToken
from medfoundcore.registry import load_model


def test_starter_model_card_is_complete():
    _, card = load_model("default")
    keys = {s["key"] for s in card.structures}
    required = {"liver", "spleen", "kidney_left", "kidney_right", "pancreas", "stomach", "gallbladder", "aorta",
                "inferior_vena_cava", "vertebrae", "spinal_cord", "grey_matter", "white_matter"}
    assert required <= keys
    assert card.kind == "prompted-segmenter" and card.name == "starter-v2"
    assert card.preprocessing["ct_window"] == "soft_tissue"
    assert card.training_data["cases"] and card.metrics


def test_ct_labels_on_input_grid_with_named_reports(shared_data):
    ct = load_volume(shared_data / "totalsegmentator" / "ts_ct_sm_img.nii.gz")
    result = medfoundcore.segment(ct, ["liver", "spleen in abdominal CT"], device="cpu")
    assert result.labels.shape == ct.shape
    assert np.allclose(result.labels.affine_ras, ct.affine_ras)
    assert set(np.unique(result.labels.array)) <= {0, 1, 2}
    names = [r.structure_name for r in result.reports]
    assert names == ["liver", "spleen"]
    liver = result.reports[0]
    assert liver.found and liver.label == 1 and liver.slices_present > 0 and 0.5 < liver.mean_presence <= 1
    assert liver.volume_ml == pytest.approx((result.labels.array == 1).sum() * ct.voxel_volume_ml, rel=1e-3)
    gt = load_volume(shared_data / "totalsegmentator" / "ts_ct_sm_lab.nii.gz", label=True)
    assert dice(result.labels.array == 1, gt.array == 5) > 0.5


def test_isd_gates_an_absent_structure(shared_data):
    ct = load_volume(shared_data / "totalsegmentator" / "ts_ct_sm_img.nii.gz")  # abdomen: no brain
    gated = medfoundcore.segment(ct, ["grey matter"], device="cpu")
    raw = medfoundcore.segment(ct, ["grey matter"], device="cpu", use_isd=False)
    assert (raw.labels.array == 1).sum() > 0  # the raw mask head fires somewhere ...
    assert not gated.reports[0].found and (gated.labels.array == 0).all()  # ... the ISD removes every slice


def test_blank_slices_stay_empty(shared_data):
    """Without the blank-slice rule the starter model drew the same 1 787-pixel "liver" on every empty slice."""
    mri = load_volume(shared_data / "colin27_mricron" / "colin27_ch2_img.nii.gz")  # held-out brain MRI
    padded = np.concatenate([mri.array, np.zeros((12, *mri.shape[1:]), mri.array.dtype)], axis=0)
    raw = medfoundcore.segment(Volume(padded, mri.spacing, mri.origin, mri.direction), ["liver"], device="cpu", use_isd=False)
    assert (raw.labels.array[-12:] == 0).all()
    assert raw.reports[0].found  # the raw masks do fire inside the head: only the empty slices are ruled out


def test_mri_geometry_and_reports(shared_data):
    mri = load_volume(shared_data / "totalsegmentator" / "ts_mr_sm_img.nii.gz")
    result = medfoundcore.segment(mri, ["liver", "right kidney"], device="cpu")
    assert result.labels.shape == mri.shape
    assert np.allclose(result.labels.affine_ras, mri.affine_ras)
    assert [r.structure_key for r in result.reports] == ["liver", "kidney_right"]
    assert [r.label for r in result.reports] == [1, 2]
    assert not result.warnings  # both are MRI structures


def test_volume_thinner_than_fve_window(shared_data):
    ct = load_volume(shared_data / "dcmqi_ct3slice" / "ct3slice_img.nii.gz")  # 3 slices: edges are repeated
    one = Volume(ct.array[1:2], ct.spacing, ct.origin, ct.direction, ct.meta)
    result = medfoundcore.segment(one, ["liver"], device="cpu")
    assert result.labels.shape == (1, 512, 512)


def test_prompt_errors_and_cancellation(shared_data):
    ct = load_volume(shared_data / "totalsegmentator" / "ts_ct_sm_img.nii.gz")
    with pytest.raises(InputError, match="Did you mean.*liver"):
        medfoundcore.segment(ct, ["livr"], device="cpu")
    with pytest.raises(InputError, match="empty prompt"):
        medfoundcore.segment(ct, ["  "], device="cpu")
    token = CancelToken()

    def cancel_when_segmenting(p) -> None:
        if p.stage == "segmenting":
            token.cancel()

    with pytest.raises(Cancelled):
        medfoundcore.segment(ct, ["liver"], device="cpu", progress=cancel_when_segmenting, cancel=token)


def test_mismatch_warning_for_mri_structure_on_ct(shared_data):
    ct = load_volume(shared_data / "totalsegmentator" / "ts_ct_sm_img.nii.gz")
    small = Volume(ct.array[:8], ct.spacing, ct.origin, ct.direction, ct.meta)
    result = medfoundcore.segment(small, ["grey matter"], device="cpu")
    assert any("grey matter" in w and "CT" in w for w in result.warnings)


@pytest.mark.parametrize("native", [(512, 512), (101, 122), (130, 77)])
def test_label_map_equals_argmax_of_fully_resized_probabilities(native):
    """Resizing each prompt only inside its box gives exactly the full-size argmax (up- and down-sampling)."""
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(128.0), torch.arange(128.0), indexing="ij")
    probs = torch.zeros(4, 3, 128, 128)
    for b in range(4):
        for p in range(3):  # overlapping soft discs, so prompts compete at their borders
            cy, cx = (torch.rand(2, generator=g) * 128).tolist()
            radius = 5 + 30 * float(torch.rand(1, generator=g))
            probs[b, p] = torch.sigmoid((radius - ((yy - cy) ** 2 + (xx - cx) ** 2).sqrt()) / 3)
    keep = torch.rand(4, 3, generator=g) > 0.2
    resized = F.interpolate(probs, size=native, mode="bilinear", align_corners=False) * keep[..., None, None]
    best, index = resized.max(dim=1)
    expected = torch.where(best > 0.5, index + 1, torch.zeros_like(index)).to(torch.uint8)
    labels = label_map(probs, keep, native)
    assert labels.shape == (4, *native) and (expected > 0).sum() > 1000
    assert torch.equal(labels, expected)
