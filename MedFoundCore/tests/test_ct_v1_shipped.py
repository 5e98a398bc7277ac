"""The packaged ``ct-v1`` on a patient it never saw (OpenKBP ``test_pt_243``: head and neck, manual
contours): the default model for a CT, its card's sha256 checked on load, organs found where the
radiotherapist drew them, and an organ that cannot be in a head-and-neck CT left empty.

Thresholds sit below the held-out figures of docs/ct.md for this patient, so that they catch a broken
model or pipeline, not noise."""

from __future__ import annotations

import pytest

import medfoundcore
from medfoundcore.bench.segment import reference_map
from medfoundcore.data.datasets import find_cases
from medfoundcore.metrics import dice
from medfoundcore.registry import read_card, resolve_default

PATIENT = "test_pt_243"
MIN_DICE = {"brainstem": 0.6, "mandible": 0.6, "parotid_gland_left": 0.55, "parotid_gland_right": 0.55}


@pytest.fixture(scope="module")
def patient(shared_data):
    (ref,) = find_cases([shared_data / "openkbp" / f"{PATIENT}_img.nii.gz"])
    return ref.load()


def test_the_packaged_ct_v1_never_saw_this_patient():
    card = read_card("ct-v1")
    assert card.kind == "ct-text-segmenter" and card.config["encoder_init"] == "pretrained"
    subjects = card.training_data["subjects"]
    assert len(subjects) > 50 and PATIENT not in subjects and not any(s.startswith("test_pt") for s in subjects)


def test_default_on_an_unseen_head_and_neck_ct_finds_the_organs(patient, one_thread):
    assert resolve_default("default", patient.image) == "default-ct"
    truth, keys = reference_map(patient, list(MIN_DICE))
    assert keys == list(MIN_DICE)  # the patient has every one of them
    result = medfoundcore.segment(patient.image, keys, device="cpu")
    assert result.model == "ct-v1"
    for label, key in enumerate(keys, start=1):
        assert dice(result.labels.array == label, truth.array == label) >= MIN_DICE[key], key


def test_an_organ_that_cannot_be_in_a_head_and_neck_ct_comes_back_empty(patient, one_thread):
    result = medfoundcore.segment(patient.image, ["liver"], device="cpu")
    assert result.model == "ct-v1" and (result.labels.array == 1).sum() <= 50

