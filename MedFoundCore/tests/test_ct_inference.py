"""ct-v1 end to end on CT patients it never saw in training (split by subject: ts_ct_dicom20 and the
MSD spleen_8 are not among its training cases): default model for CT, any orientation, features
computed once per window, unknown structures refused, cancel, held-out quality floors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

import medfoundcore
from medfoundcore.cli import main
from medfoundcore.errors import Cancelled, InputError
from medfoundcore.inference.windows import FEATURES
from medfoundcore.io import Volume, load_volume
from medfoundcore.metrics import dice
from medfoundcore.preprocess import resample_onto
from medfoundcore.progress import CancelToken
from medfoundcore.registry import load_model


@pytest.fixture(scope="module")
def abdomen(shared_data):
    return load_volume(shared_data / "totalsegmentator" / "ts_ct_dicom20_img.nii.gz")


def test_ct_v1_card_credits_the_encoder_and_lists_its_training_subjects():
    _, card = load_model("ct-v1")
    assert card.kind == "ct-text-segmenter" and "Merlin" in card.description and "Astra" in card.description
    subjects = set(card.training_data["subjects"])
    assert "ts_ct_full" in subjects and not {"ts_ct_dicom20", "spleen_8"} & subjects  # held-out patients
    keys = {s["key"] for s in card.structures}
    assert {"liver", "spleen", "kidney_left", "kidney_right", "aorta", "spinal_cord", "brainstem", "mandible"} <= keys


def test_cli_uses_ct_v1_for_a_ct_and_writes_on_the_input_grid(shared_data, tmp_path):
    image = shared_data / "totalsegmentator" / "ts_ct_dicom20_img.nii.gz"
    out, report = tmp_path / "seg.nii.gz", tmp_path / "seg.json"
    assert main(["segment", str(image), "-p", "liver", "-p", "spleen", "-o", str(out), "--json", str(report), "--quiet", "--device", "cpu"]) == 0
    data = json.loads(report.read_text())
    labels, ct = load_volume(out, label=True), load_volume(image)
    assert data["model"] == "ct-v1" and labels.shape == ct.shape and np.allclose(labels.affine_ras, ct.affine_ras)
    assert [p["structure_key"] for p in data["prompts"]] == ["liver", "spleen"] and data["prompts"][0]["found"]


def test_same_result_in_any_orientation(abdomen):
    """Axes permuted and flipped (same physical image): the label map, brought back, is the same."""
    image = abdomen.to_sitk()
    turned = Volume.from_sitk(sitk.Flip(sitk.PermuteAxes(image, [1, 0, 2]), [True, False, True]))
    first = medfoundcore.segment(abdomen, ["liver"], device="cpu").labels
    second = medfoundcore.segment(turned, ["liver"], device="cpu").labels
    back = resample_onto(second, first, label=True)
    assert first.array.sum() > 0 and dice(back.array == 1, first.array == 1) > 0.98


def test_features_are_computed_once_per_window_and_shared_by_prompts(abdomen):
    FEATURES.clear()
    alone = medfoundcore.segment(abdomen, ["liver"], device="cpu").labels.array
    misses = FEATURES.misses
    together = medfoundcore.segment(abdomen, ["liver", "stomach"], device="cpu").labels.array
    assert FEATURES.misses == misses and FEATURES.hits >= misses  # every window came from the cache
    assert ((together == 1) <= (alone == 1)).all()  # a second prompt can only take voxels, never add liver


def test_a_structure_the_model_does_not_know_is_refused_with_the_known_ones(abdomen):
    with pytest.raises(InputError, match="liver|spleen"):
        medfoundcore.segment(abdomen, ["hippocampus"], device="cpu")


def test_cancel_stops_between_windows(abdomen):
    token = CancelToken()

    def cancel_when_segmenting(p):
        if p.stage == "segmenting":
            token.cancel()

    with pytest.raises(Cancelled):
        medfoundcore.segment(abdomen, ["liver"], device="cpu", progress=cancel_when_segmenting, cancel=token)
