"""The ct-v1 model family, trained for a few real steps on cached features of a real CT (the frozen
pretrained encoder, real labels): the loss falls, two prompts give two different masks, presence
learns without touching the segmentation path, a run resumes exactly; then the whole-CT inference
path with that small model on a CT of another patient: any orientation gives the same result,
window features are computed once and shared, unknown structures are refused, cancel works, and the
CLI writes on the input grid. (No Dice threshold here: the small model is trained on one patient.)"""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
import torch

import json

import numpy as np
import SimpleITK as sitk

import medfoundcore
from medfoundcore.cli import main
from medfoundcore.errors import Cancelled, InputError
from medfoundcore.inference.windows import FEATURES
from medfoundcore.io import Volume
from medfoundcore.metrics import dice
from medfoundcore.preprocess import resample_onto
from medfoundcore.registry import resolve_default
from medfoundcore.progress import CancelToken
from medfoundcore.io import load_volume
from medfoundcore.models.ct_segmenter import CTSegmenterConfig, build_ct_segmenter
from medfoundcore.train.ct_segment import CTTrainConfig, sample_crop, ship, sample_loss, structure_values, text_table, train_ct_segmenter
from medfoundcore.vocabulary import load_vocabulary

SMALL = CTSegmenterConfig(width=32, image_width=4, refine_width=8)
WHOLE = (64, 64, 64)  # larger than the cached crop: the whole case


def _fixed_sample(case, keys, seed=3):
    vocab = load_vocabulary()
    values = {k: v for k, v in structure_values(case, vocab).items() if k in keys}
    return sample_crop(case, values, [], CTTrainConfig(prompts=len(keys), negatives=0, focus=1.0, crop_zxy=WHOLE), random.Random(seed))


KEYS = ["liver", "spleen"]


@pytest.fixture(scope="module")
def trained(cached_crop, tmp_path_factory):
    """A small decoder trained 150 steps on liver and spleen of the cached crop, and its fixed sample's loss before."""
    (case,) = cached_crop
    sample = _fixed_sample(case, KEYS)
    text = text_table(sample.keys, load_vocabulary())
    cfg = CTTrainConfig(steps=150, lr=3e-3, prompts=2, negatives=0, crop_zxy=WHOLE, structures=KEYS, model=SMALL, checkpoint_every=1000)
    torch.manual_seed(0)
    before, _ = sample_loss(build_ct_segmenter(replace(SMALL, keys=KEYS)), sample, text, cfg)
    before_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    net, history = train_ct_segmenter(cached_crop, tmp_path_factory.mktemp("run"), cfg)
    torch.set_num_threads(before_threads)
    model_dir = ship(net, history, "ct-test", tmp_path_factory.mktemp("model") / "ct-test", training_data={"subjects": ["ts_ct_full"]})
    return net, history, sample, text, cfg, before.item(), model_dir


def test_loss_falls_and_prompts_separate(trained):
    net, history, sample, text, cfg, before, _ = trained
    assert sorted(sample.keys) == KEYS and all(sample.masks[i].sum() > 0 for i in range(2))
    with torch.no_grad():
        after, _ = sample_loss(net, sample, text, cfg)
        coarse = net.coarse_logits(net.pixel_features([f[None] for f in sample.features]), text, sample.keys)[0] > 0
    assert after.item() < 0.7 * before
    liver, spleen = coarse[0], coarse[1]
    assert liver.sum() > 0 and spleen.sum() > 0
    assert (liver & spleen).sum() < 0.2 * min(liver.sum(), spleen.sum())  # two texts, two different masks
    right_of = lambda m: torch.nonzero(m)[:, 1].float().mean()  # axis 1 of (Z, X, Y) points to the patient's right
    assert right_of(liver) > right_of(spleen)  # ... and each where its organ lies: liver right, spleen left
    assert history["steps_done"] == 150 and history["keys"] == KEYS


def test_presence_gradient_never_reaches_the_segmentation_path(cached_crop):
    (case,) = cached_crop
    sample = _fixed_sample(case, ["liver"])
    net = build_ct_segmenter(replace(SMALL, keys=["liver"]))
    pixel = net.pixel_features([f[None] for f in sample.features])
    net.presence_logits(pixel, text_table(["liver"], load_vocabulary()), ["liver"]).sum().backward()
    assert all(p.grad is None for p in net.pixel_decoder.parameters())
    assert all(p.grad is None for p in [net.key_query, *net.text_query.parameters()])
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.presence.parameters())


def test_resume_continues_exactly_where_it_stopped(cached_crop, tmp_path, one_thread):
    """Cancelled after 4 steps, resumed to 8 == 8 steps in one go (data order, optimiser and weights restored)."""
    cfg = CTTrainConfig(steps=8, model=SMALL, checkpoint_every=4)
    token = CancelToken()

    def stop_at_four(p):
        if p.done == 4:
            token.cancel()

    with pytest.raises(Cancelled):
        train_ct_segmenter(cached_crop, tmp_path / "a", cfg, progress=stop_at_four, cancel=token)
    resumed, history = train_ct_segmenter(cached_crop, tmp_path / "a", cfg)
    straight, _ = train_ct_segmenter(cached_crop, tmp_path / "b", cfg)
    assert history["steps_done"] == 8
    for (name, a), b in zip(resumed.state_dict().items(), straight.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name


def test_unions_train_on_their_parts(cached_crop):
    (case,) = cached_crop
    values = structure_values(case, load_vocabulary())
    assert sorted(values["kidney"]) == sorted(values["kidney_left"] + values["kidney_right"])


# ------------------------------------------------------------------ whole-CT inference, another patient
@pytest.fixture(scope="module")
def other_patient(shared_data):
    return load_volume(shared_data / "totalsegmentator" / "ts_ct_dicom20_img.nii.gz")


def test_same_result_in_any_orientation(trained, other_patient, one_thread):
    """Axes permuted and flipped (the same physical image): the label map, brought back, is the same."""
    model = str(trained[-1])
    turned = Volume.from_sitk(sitk.Flip(sitk.PermuteAxes(other_patient.to_sitk(), [1, 0, 2]), [True, False, True]))
    first = medfoundcore.segment(other_patient, ["liver"], model=model, device="cpu").labels
    second = medfoundcore.segment(turned, ["liver"], model=model, device="cpu").labels
    assert first.shape == other_patient.shape and np.allclose(first.affine_ras, other_patient.affine_ras)
    back = resample_onto(second, first, label=True)
    assert (first.array == 1).sum() > 0 and dice(back.array == 1, first.array == 1) > 0.98


def test_window_features_are_computed_once_and_shared_by_prompts(trained, other_patient, one_thread):
    model = str(trained[-1])
    FEATURES.clear()
    alone = medfoundcore.segment(other_patient, ["liver"], model=model, device="cpu", keep_islands=True).labels.array
    misses = FEATURES.misses
    together = medfoundcore.segment(other_patient, ["liver", "spleen"], model=model, device="cpu", keep_islands=True).labels.array
    assert misses > 0 and FEATURES.misses == misses and FEATURES.hits >= misses  # every window from the cache
    assert ((together == 1) <= (alone == 1)).all()  # a second prompt can only take voxels, never add liver
    # (islands kept: island removal is relative to the largest piece, which a rival prompt can shrink)


def test_a_structure_the_model_was_not_trained_on_is_refused_naming_the_known_ones(trained, other_patient):
    with pytest.raises(InputError, match="liver"):
        medfoundcore.segment(other_patient, ["brainstem"], model=str(trained[-1]), device="cpu")


def test_cancel_stops_between_windows(trained, other_patient):
    token = CancelToken()

    def cancel_when_segmenting(p):
        if p.stage == "segmenting":
            token.cancel()

    with pytest.raises(Cancelled):
        medfoundcore.segment(other_patient, ["liver"], model=str(trained[-1]), device="cpu", progress=cancel_when_segmenting, cancel=token)


def test_cli_writes_the_label_map_on_the_input_grid(trained, shared_data, tmp_path, one_thread):
    image = shared_data / "totalsegmentator" / "ts_ct_dicom20_img.nii.gz"
    out, report = tmp_path / "seg.nii.gz", tmp_path / "seg.json"
    args = ["segment", str(image), "-p", "spleen", "-p", "liver", "-o", str(out), "--json", str(report), "--quiet", "--device", "cpu"]
    assert main([*args, "--model", str(trained[-1])]) == 0
    data = json.loads(report.read_text())
    labels, ct = load_volume(out, label=True), load_volume(image)
    assert data["model"] == "ct-test" and labels.shape == ct.shape and np.allclose(labels.affine_ras, ct.affine_ras)
    assert [p["structure_key"] for p in data["prompts"]] == ["spleen", "liver"]
    assert set(np.unique(labels.array)) <= {0, 1, 2}


def test_default_means_the_ct_model_for_a_ct_once_it_is_installed(trained, other_patient, medfound_home, shared_data, monkeypatch, tmp_path):
    from medfoundcore import registry

    mri = load_volume(shared_data / "totalsegmentator" / "ts_mr_sm_img.nii.gz")
    assert resolve_default("default", other_patient) == "default-ct"  # the packaged ct-v1
    assert resolve_default("default", mri) == "default" and resolve_default("starter-v2", other_patient) == "starter-v2"
    monkeypatch.setattr(registry, "PACKAGED_DIR", tmp_path / "no-packaged-models")  # an install without ct-v1 ...
    assert resolve_default("default", other_patient) == "default"  # ... falls back to the slice model
    net, history = trained[0], trained[1]
    ship(net, history, "ct-v1", None, training_data={})  # a ct-v1 in the user store counts too
    assert resolve_default("default", other_patient) == "default-ct"


def test_the_learning_rate_warms_up_and_anneals_over_whichever_budget_ends_first():
    from medfoundcore.train.ct_segment import _lr

    by_steps = CTTrainConfig(steps=1000, lr=1.0)
    assert _lr(0, by_steps) < 0.05 and _lr(100, by_steps) > 0.9 and _lr(999, by_steps) < 1e-3
    by_clock = CTTrainConfig(steps=10**6, max_minutes=10.0, lr=1.0)  # the step cap is never reached
    assert _lr(10, by_clock, minutes=0.1) < 0.5  # still warming up after 1 % of the time
    assert _lr(500, by_clock, minutes=2.0) > 0.9 and _lr(3000, by_clock, minutes=9.99) < 1e-3


def test_fine_tuning_on_a_new_structure_keeps_the_learned_queries_and_adds_one(trained, cached_crop, tmp_path, one_thread):
    """A user's fine-tune (``--base-model``) may teach a structure the base never saw: the base's
    learned queries carry over unchanged at step 0, the new structure gets a fresh row."""
    net = trained[0]
    cfg = CTTrainConfig(steps=1, lr=1e-9, structures=[*KEYS, "kidney_left"], model=net.cfg, checkpoint_every=1000)
    tuned, history = train_ct_segmenter(cached_crop, tmp_path / "tune", cfg, init=net.state_dict())
    assert list(tuned.cfg.keys) == [*KEYS, "kidney_left"] and history["keys"] == sorted([*KEYS, "kidney_left"])
    assert torch.allclose(tuned.key_query[:2], net.key_query, atol=1e-6)  # (lr 1e-9: one step moves nothing)
    assert tuned.key_query.shape[0] == 3
