"""``medfoundcore.segment`` with the shipped starter model on real CT and MRI from the shared data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

import medfoundcore
from medfoundcore.errors import Cancelled, InputError
from medfoundcore.inference.segment import label_map
from medfoundcore.io import Volume, load_volume
from medfoundcore.progress import CancelToken
from medfoundcore.registry import load_model

#: The BiomedParse-V slice model: these tests are about its gating, veto and island rules (ct-v1 is in test_ct_inference.py).
SLICE_MODEL = "starter-v2"


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
    result = medfoundcore.segment(ct, ["liver", "spleen in abdominal CT"], model=SLICE_MODEL, device="cpu")
    assert result.labels.shape == ct.shape
    assert np.allclose(result.labels.affine_ras, ct.affine_ras)
    assert set(np.unique(result.labels.array)) <= {0, 1, 2}
    names = [r.structure_name for r in result.reports]
    assert names == ["liver", "spleen"]
    liver = result.reports[0]
    assert liver.found and liver.label == 1 and liver.slices_present > 0 and 0.5 < liver.mean_presence <= 1
    assert liver.volume_ml == pytest.approx((result.labels.array == 1).sum() * ct.voxel_volume_ml, rel=1e-3)


def test_isd_gates_an_absent_structure(shared_data):
    ct = load_volume(shared_data / "totalsegmentator" / "ts_ct_sm_img.nii.gz")  # abdomen: no brain
    gated = medfoundcore.segment(ct, ["grey matter"], model=SLICE_MODEL, device="cpu", region_check=False)  # the ISD alone
    raw = medfoundcore.segment(ct, ["grey matter"], model=SLICE_MODEL, device="cpu", use_isd=False, region_check=False)
    assert (raw.labels.array == 1).sum() > 0  # the raw mask head fires somewhere ...
    assert not gated.reports[0].found and (gated.labels.array == 0).all()  # ... the ISD removes every slice


def test_blank_slices_stay_empty(shared_data):
    """Without the blank-slice rule the starter model drew the same 1 787-pixel "liver" on every empty slice."""
    mri = load_volume(shared_data / "colin27_mricron" / "colin27_ch2_img.nii.gz")  # held-out brain MRI
    padded = np.concatenate([mri.array, np.zeros((12, *mri.shape[1:]), mri.array.dtype)], axis=0)
    volume = Volume(padded, mri.spacing, mri.origin, mri.direction)
    raw = medfoundcore.segment(volume, ["liver"], model=SLICE_MODEL, device="cpu", use_isd=False, region_check=False)
    assert (raw.labels.array[-12:] == 0).all()
    assert raw.reports[0].found  # the raw masks do fire inside the head: only the empty slices are ruled out


def test_no_liver_on_a_brain_mri_veto_first_then_the_one_slice_rule(shared_data):
    """Held-out post-contrast brain MRI (6.5 mm slices): the ISD alone lets a 146 ml "liver" through on
    five slices. On four of them the model is sure (ω ≥ 0.9) of a brain structure, so the anatomical
    veto drops those pieces; the fifth is a liver on one inner slice, thinner than any liver, which the
    one-slice rule removes. The brain tumour, prompted alongside, is untouched by both."""
    mri = load_volume(shared_data / "pyradiomics" / "brain1_img.nii.gz")
    prompts = ["liver", "brain tumor"]
    unchecked = medfoundcore.segment(mri, prompts, model=SLICE_MODEL, device="cpu", region_check=False, keep_islands=True)
    vetoed = medfoundcore.segment(mri, prompts, model=SLICE_MODEL, device="cpu", keep_islands=True)
    checked = medfoundcore.segment(mri, prompts, model=SLICE_MODEL, device="cpu")
    before, after_veto, liver = unchecked.reports[0], vetoed.reports[0], checked.reports[0]
    assert before.volume_ml > 50 and before.slices_ruled_out == 0
    assert after_veto.slices_ruled_out >= 3 and after_veto.slices_present + after_veto.slices_ruled_out == before.slices_present
    assert after_veto.volume_ml < 0.5 * before.volume_ml
    assert any("'liver' was dropped from" in w for w in vetoed.warnings)
    dropped = vetoed.scores.dropped[:, 0]  # 6.5 mm slices: each "liver" piece is one slice, vetoed
    assert vetoed.scores.vetoed[dropped, 0].all() and (vetoed.scores.rival[dropped, 0] >= 0.9).all()
    assert not (vetoed.labels.array[dropped] == 1).any()
    assert after_veto.slices_present == 1  # the slice without a sure witness ...
    assert not liver.found and liver.volume_ml == 0 and not (checked.labels.array == 1).any()  # ... goes too
    assert any("'liver' was found on one axial slice only" in w and "6.5 mm" in w for w in checked.warnings)
    for result in (vetoed, checked):  # a brain structure: untouched
        assert result.reports[1].volume_ml == unchecked.reports[1].volume_ml and result.reports[1].slices_ruled_out == 0


def test_one_piece_organs_come_back_without_small_islands(shared_data):
    """Held-out head-and-neck CT: slice-by-slice decisions leave islands of spinal cord and mandible;
    the default result keeps no piece smaller than a tenth of each structure's largest."""
    ct = load_volume(shared_data / "openkbp" / "test_pt_246_img.nii.gz")
    prompts = ["spinal cord", "mandible"]
    raw = medfoundcore.segment(ct, prompts, model=SLICE_MODEL, device="cpu", keep_islands=True)
    clean = medfoundcore.segment(ct, prompts, model=SLICE_MODEL, device="cpu")
    everywhere = np.ones((3, 3, 3), bool)
    raw_pieces = [np.bincount(ndimage.label(raw.labels.array == v, everywhere)[0].ravel())[1:] for v in (1, 2)]
    assert any((sizes < 0.1 * sizes.max()).any() for sizes in raw_pieces)  # the islands exist ...
    for value in (1, 2):
        sizes = np.bincount(ndimage.label(clean.labels.array == value, everywhere)[0].ravel())[1:]
        assert sizes.size and (sizes >= 0.1 * sizes.max()).all()  # ... and are gone
        assert ((clean.labels.array == value) <= (raw.labels.array == value)).all()  # nothing added
        assert clean.reports[value - 1].volume_ml == pytest.approx(sizes.sum() * ct.voxel_volume_ml, rel=1e-3)


def test_mri_geometry_and_reports(shared_data):
    mri = load_volume(shared_data / "totalsegmentator" / "ts_mr_sm_img.nii.gz")
    result = medfoundcore.segment(mri, ["liver", "right kidney"], model=SLICE_MODEL, device="cpu")
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
    result = medfoundcore.segment(small, ["grey matter"], model="starter-v2", device="cpu")  # the slice model knows it
    assert any("grey matter" in w and "CT" in w for w in result.warnings)
    with pytest.raises(InputError, match="not trained on 'brain grey matter'"):  # ct-v1, the default for a CT, does not
        medfoundcore.segment(small, ["grey matter"], device="cpu")


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
