"""The ct-v1 model family, trained for a few real steps on cached features of a real CT (the frozen
pretrained encoder, real labels): the loss falls, two prompts give two different masks, presence
learns without touching the segmentation path, a run resumes exactly; then the whole-CT inference
path with that small model on a CT of another patient: any orientation gives the same result,
window features are computed once and shared, unknown structures are refused, cancel works, and the
CLI writes on the input grid; the presence gate is an inference option. Backbone fine-tuning is a
real run too (3 CLI steps through the encoder's last stages): only those stages change, the model
carries its encoder and segments another patient with it, a run resumes exactly, and ``auto`` on a
CPU leaves the backbone alone. (No Dice threshold here: the small model is trained on one patient.)"""

from __future__ import annotations

import random
import shutil
from dataclasses import replace

import pytest
import torch

import json

import numpy as np
import SimpleITK as sitk

import medfoundcore
from medfoundcore.cli import main
from medfoundcore.data.datasets import find_cases
from medfoundcore.errors import Cancelled, InputError
from medfoundcore.inference.windows import FEATURES
from medfoundcore.io import Volume, save_volume
from medfoundcore.metrics import dice
from medfoundcore.preprocess import resample_onto
from medfoundcore.registry import resolve_default
from medfoundcore.progress import CancelToken
from medfoundcore.io import load_volume
from medfoundcore.models.backbones import ct_weights
from medfoundcore.models.ct_segmenter import CTSegmenterConfig, build_ct_segmenter
from medfoundcore.registry import PACKAGED_DIR, load_model
from medfoundcore.train.ct_segment import (
    CTTrainConfig, finetune_backbone_on, finetune_encoder, refuse_packaged_dir, sample_crop, ship, sample_loss,
    structure_values, text_table, train_ct_segmenter,
)
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


def test_resume_continues_exactly_where_it_stopped(cached_crop, tmp_path, one_thread, assert_exact_resume):
    """Cancelled after 4 steps, resumed to 8 == 8 steps in one go (data order, optimiser and weights restored)."""
    assert_exact_resume(train_ct_segmenter, cached_crop, CTTrainConfig(steps=8, model=SMALL, checkpoint_every=4), tmp_path, stop_at=4)


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


def test_default_means_the_ct_model_for_a_ct_and_the_mri_model_otherwise_once_installed(trained, other_patient, medfound_home, shared_data, monkeypatch, tmp_path):
    from medfoundcore import registry

    mri = load_volume(shared_data / "totalsegmentator" / "ts_mr_sm_img.nii.gz")
    assert resolve_default("default", other_patient) == "default-ct"  # the packaged ct-v1
    assert resolve_default("default", mri) == "default-mri" and resolve_default("starter-v2", other_patient) == "starter-v2"
    monkeypatch.setattr(registry, "PACKAGED_DIR", tmp_path / "no-packaged-models")  # an install without ct-v1 and mri-v1 ...
    assert resolve_default("default", other_patient) == "default" == resolve_default("default", mri)  # ... the slice model
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


def test_the_presence_gate_is_an_inference_option(trained, other_patient, one_thread):
    from medfoundcore.inference import segment_ct

    model = str(trained[-1])
    run = lambda **option: medfoundcore.segment(other_patient, KEYS, model=model, device="cpu", keep_islands=True, **option)  # noqa: E731
    for gate in ("window", "slab"):
        assert run(presence_gate=gate).labels.shape == other_patient.shape
    assert np.array_equal(run(presence_gate="none").labels.array, run(use_isd=False).labels.array)
    with pytest.raises(InputError, match="window, slab, none"):
        run(presence_gate="per-voxel")
    with pytest.raises(InputError, match="CT models"):  # the slice model gates per slice: no silent no-op
        medfoundcore.segment(other_patient, ["liver"], model="starter-v2", device="cpu", presence_gate="slab")
    assert not hasattr(segment_ct, "PRESENCE_GATE")  # no module constant for a tool to mutate


# ------------------------------------------------------------------ backbone fine-tuning (real runs, CPU)
@pytest.fixture(scope="module")
def crop_files(cached_crop, shared_data, tmp_path_factory):
    """The cached crop's case as files (the CLI takes files), named by the cache's case id and with
    conftest's box, so ``--feature-cache`` finds it cached and nothing is encoded again."""
    (case,) = cached_crop
    (ref,) = find_cases([shared_data / "totalsegmentator" / "ts_ct_full_img.nii.gz"])
    box = (slice(72, 112), slice(None), slice(None))
    folder = tmp_path_factory.mktemp("crop-files")
    save_volume(load_volume(ref.image_path).crop(box), folder / f"{case.case_id}_img.nii.gz")
    save_volume(load_volume(ref.label_path, label=True).crop(box), folder / f"{case.case_id}_lab.nii.gz")
    (folder / f"{case.case_id}_labels.json").write_text(ref.label_path.with_name("ts_ct_full_labels.json").read_text())
    return folder / f"{case.case_id}_img.nii.gz", case.directory.parent


def _train_seg_ct(crop_files, root, *options: str):
    image, cache = crop_files
    out = root / "model"
    args = ["train-seg", str(image), "--model", "ct", "--feature-cache", str(cache), "--out-name", "ct-ft-test",
            "--work-dir", str(root / "run"), "--output-dir", str(out), "--structures", *KEYS, "--device", "cpu", "--quiet", *options]
    assert main(args) == 0
    return out


@pytest.fixture(scope="module")
def finetuned(trained, crop_files, tmp_path_factory):
    """3 real steps of ``train-seg --model ct --finetune-backbone on`` from the small trained model,
    on the default crop (32 × 128 × 128 voxels through the encoder, layer3 and layer4 trained)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    out = _train_seg_ct(crop_files, tmp_path_factory.mktemp("finetune"), "--finetune-backbone", "on", "--steps", "3",
                        "--base-model", str(trained[-1]), "--checkpoint-every", "1000")
    torch.set_num_threads(before)
    return out


def test_backbone_finetuning_trains_the_last_stages_only(finetuned):
    state, card = load_model(finetuned)  # (sha256-checked, as every model)
    _, encoder = ct_weights.split_encoder_state(state)
    assert card.config["encoder_init"] == f"fine-tuned from {ct_weights.JOINED_SHA256}"
    assert card.config["encoder_trained_stages"] == ["layer3", "layer4"]
    pretrained = {k: v.float() if v.is_floating_point() else v for k, v in ct_weights.load_state_dict().items()}
    assert encoder.keys() == pretrained.keys()
    trained_keys = [k for k in encoder if k.startswith(("layer3.", "layer4.")) and k.endswith((".weight", ".bias"))]
    unchanged = [k for k in encoder if k not in trained_keys]  # conv1..layer2, and every BatchNorm statistic (eval mode)
    assert all(torch.equal(encoder[k], pretrained[k]) for k in unchanged)
    changed = [k for k in trained_keys if not torch.equal(encoder[k], pretrained[k])]
    assert len(changed) > 0.9 * len(trained_keys), f"{len(changed)} of {len(trained_keys)} trained tensors changed"
    assert 200e6 < (finetuned / "model.safetensors").stat().st_size < 260e6


def test_a_finetuned_model_segments_another_patient_with_its_own_encoder(finetuned, other_patient, one_thread):
    from medfoundcore.inference.segment_ct import load_ct_model

    result = medfoundcore.segment(other_patient, ["liver"], model=str(finetuned), device="cpu")
    assert result.model == "ct-ft-test" and result.labels.shape == other_patient.shape
    assert np.allclose(result.labels.affine_ras, other_patient.affine_ras)
    loaded = load_ct_model(str(finetuned), "cpu")
    assert loaded.encoder is not ct_weights.shared_encoder("cpu", True)
    shipped = load_model(finetuned)[0][ct_weights.ENCODER_PREFIX + "layer4.2.conv3.weight"]
    assert torch.equal(loaded.encoder.layer4[2].conv3.weight, shipped)


def test_backbone_finetuning_resumes_exactly(cached_crop, tmp_path, one_thread):
    """Cancelled after step 1, resumed to step 2 == 2 steps in one go, decoder and encoder alike (layer4
    only and a small crop: each checkpoint carries 29 M encoder weights and their Adam state)."""
    cfg = CTTrainConfig(steps=2, model=SMALL, checkpoint_every=1, crop_zxy=(8, 16, 16), encoder_train_from=4)
    token = CancelToken()

    def stop_at_one(p):
        if p.done == 1:
            token.cancel()

    with pytest.raises(Cancelled):
        train_ct_segmenter(cached_crop, tmp_path / "a", cfg, encoder=finetune_encoder(train_from=4), progress=stop_at_one, cancel=token)
    resumed_encoder, straight_encoder = finetune_encoder(train_from=4), finetune_encoder(train_from=4)
    resumed, history = train_ct_segmenter(cached_crop, tmp_path / "a", cfg, encoder=resumed_encoder)
    straight, _ = train_ct_segmenter(cached_crop, tmp_path / "b", cfg, encoder=straight_encoder)
    assert history["steps_done"] == 2 and history["encoder_trained_stages"] == ["layer4"]
    for (name, a), b in zip(resumed.state_dict().items(), straight.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name
    for (name, a), b in zip(resumed_encoder.state_dict().items(), straight_encoder.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name
    assert not torch.equal(straight_encoder.layer4[0].conv1.weight, finetune_encoder(train_from=4).layer4[0].conv1.weight)
    with pytest.raises(InputError, match="with backbone fine-tuning"):  # its checkpoints need the encoder back
        train_ct_segmenter(cached_crop, tmp_path / "a", replace(cfg, steps=3))
    assert len(list((tmp_path / "b").glob("step-*.pt"))) == 2
    for run in ("a", "b"):  # ~350 MB each: not left in the temp folders pytest keeps
        shutil.rmtree(tmp_path / run)


def test_auto_finetunes_the_backbone_only_on_cuda(crop_files, tmp_path, one_thread):
    assert finetune_backbone_on("auto", "cuda") and finetune_backbone_on("on", "cpu")
    assert not finetune_backbone_on("auto", "cpu") and not finetune_backbone_on("off", "cuda")
    out = _train_seg_ct(crop_files, tmp_path, "--steps", "1")  # --finetune-backbone left at auto, on a CPU
    state, card = load_model(out)
    assert card.config["encoder_init"] == "pretrained"
    assert not any(k.startswith(ct_weights.ENCODER_PREFIX) for k in state)


def test_a_finetuned_encoder_never_goes_into_the_package():
    with pytest.raises(InputError, match="user's model store"):
        refuse_packaged_dir(PACKAGED_DIR / "my-ct")
    refuse_packaged_dir(None)  # the user store is fine
