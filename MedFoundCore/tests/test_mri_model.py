"""The MRI text-prompted model family (``mri-v1``): a tiny model trained for real steps on real MRI.

Behaviour, not thresholds: two prompts give two different masks, each on its own part of the
hippocampus; what a crop's targets are (labelled / known absent / unknown); the presence head's
gradient stays out of the segmentation path; training resumes exactly; the CLI trains and segments.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import SimpleITK as sitk
import torch

import medfoundcore
from medfoundcore.cli import main
from medfoundcore.data.datasets import find_cases
from medfoundcore.errors import InputError
from medfoundcore.io import Volume, load_volume
from medfoundcore.metrics import dice
from medfoundcore.models.mri_segmenter import MRISegmenterConfig, build_mri_segmenter
from medfoundcore.preprocess import resample_onto
from medfoundcore.train.ct_segment import text_table
from medfoundcore.registry import load_model
from medfoundcore.train.mri_segment import MRITrainConfig, _crop, prepare_case, sample_batch, ship, train_mri_from_cases, train_mri_segmenter
from medfoundcore.vocabulary import load_vocabulary

TINY = MRISegmenterConfig(width=16, channels=[8, 16, 32])
CROP = (32, 32, 48)


@pytest.fixture(scope="module")
def hippocampus_refs(shared_data):
    return find_cases([shared_data / "msd_hippocampus" / f"hippocampus_00{i}_img.nii.gz" for i in (1, 4)])


@pytest.fixture(scope="module")
def hippocampus_cases(hippocampus_refs):
    vocab = load_vocabulary()
    return [prepare_case(r, vocab) for r in hippocampus_refs]


@pytest.fixture(scope="module")
def trained(hippocampus_cases, tmp_path_factory):
    torch.set_num_threads(1)
    work = tmp_path_factory.mktemp("mri-train")
    cfg = MRITrainConfig(steps=80, lr=5e-3, crop_zxy=CROP, checkpoint_every=1000, model=TINY)
    net, history = train_mri_segmenter(hippocampus_cases, work / "run", cfg)
    history["crop_zxy"] = list(CROP)
    return net, history, ship(net, history, "mri-test", work / "model", training_data={})


def test_two_prompts_give_two_masks_each_on_its_own_part(trained, hippocampus_refs):
    """80 steps on two cases: "anterior" and "posterior hippocampus" come back as different masks, each
    overlapping its own labelled part more than the other one (a behaviour check on a training case,
    not a quality claim)."""
    _, history, model = trained
    case = hippocampus_refs[0].load()
    result = medfoundcore.segment(case.image, ["anterior hippocampus", "posterior hippocampus"], model=str(model), device="cpu")
    labels, truth = result.labels.array, case.labels.array
    head, body = labels == 1, labels == 2
    assert head.any() and body.any()
    assert (head & (truth == 1)).sum() > (head & (truth == 2)).sum()
    assert (body & (truth == 2)).sum() > (body & (truth == 1)).sum()
    assert history["loss"][-1][1] < history["loss"][0][1]  # smoothed loss fell
    assert [r.structure_key for r in result.reports] == ["hippocampus_anterior", "hippocampus_posterior"]


def test_a_union_is_its_own_trained_prompt_and_cannot_share_a_map_with_its_parts(trained, hippocampus_refs):
    _, history, model = trained
    assert {"hippocampus", "hippocampus_anterior", "hippocampus_posterior"} <= set(history["keys"])
    case = hippocampus_refs[0].load()
    with pytest.raises(InputError, match="overlap"):
        medfoundcore.segment(case.image, ["hippocampus", "hippocampus head"], model=str(model), device="cpu")


def test_targets_are_labelled_known_absent_or_unsupervised(shared_data, hippocampus_cases):
    """On a hippocampus crop: its parts are masks, tumours are known empty, grey matter (there, but
    not labelled) is not supervised; a cord crop holds no hippocampus."""
    vocab = load_vocabulary()
    cord = prepare_case(find_cases([shared_data / "sct_example_data" / "errsm30_t1w_img.nii.gz"])[0], vocab)
    assert "hippocampus_anterior" in cord.absent and "spinal_cord" in cord.values
    keys = ["hippocampus_anterior", "peritumoral_edema", "grey_matter"]
    batch = sample_batch(hippocampus_cases, [1.0, 1.0], keys, MRITrainConfig(crop_zxy=CROP, decoys=1, foreground_fraction=1.0), __import__("random").Random(0))
    assert batch.keys[:3] == keys and len(batch.keys) == 4  # one decoy of a distant region (text only)
    assert vocab.get(batch.keys[3]).region not in ("brain", "head-neck")
    assert batch.weight[:, 0].tolist() == [1.0, 1.0] and batch.target[:, 0].sum() > 0
    assert batch.weight[:, 1].tolist() == [1.0, 1.0] and batch.target[:, 1].sum() == 0
    assert batch.weight[:, 2].tolist() == [0.0, 0.0]
    assert batch.weight[:, 3].tolist() == [1.0, 1.0] and batch.target[:, 3].sum() == 0


def test_a_case_smaller_than_the_crop_lands_anywhere_in_it(hippocampus_cases):
    """An MSD hippocampus image is smaller than the crop: it must not always sit in the crop's corner
    (inference meets it centred, or anywhere in a whole-brain window), and image and labels move together."""
    case = hippocampus_cases[0]
    crop = tuple(s + 12 for s in case.image.shape)
    rng = __import__("random").Random(0)
    offsets = set()
    for _ in range(12):
        image, labels = _crop(case, crop, rng, foreground=0.7)
        assert image.shape == labels.shape == crop
        corner = tuple(int(np.flatnonzero(image.any(axis=tuple(a for a in range(3) if a != axis)))[0]) for axis in range(3))
        inside = tuple(slice(c, c + s) for c, s in zip(corner, case.image.shape))
        assert np.array_equal(image[inside], case.image) and np.array_equal(labels[inside], case.labels)
        offsets.add(corner)
    assert len(offsets) > 6 and {c for o in offsets for c in o} != {0}


def test_presence_gradient_never_reaches_the_segmentation_path():
    net = build_mri_segmenter(replace(TINY, keys=["hippocampus"]))
    pixel = net.pixel_features(torch.rand(1, 1, 16, 16, 16))
    net.presence_logits(pixel, text_table(["hippocampus"], load_vocabulary()), ["hippocampus"]).sum().backward()
    assert all(p.grad is None for p in [*net.trunk.parameters(), net.key_query, *net.text_query.parameters()])
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.presence.parameters())


def test_resume_continues_exactly_where_it_stopped(hippocampus_cases, tmp_path, one_thread, assert_exact_resume):
    cfg = MRITrainConfig(steps=6, crop_zxy=CROP, checkpoint_every=3, model=TINY)
    assert_exact_resume(train_mri_segmenter, hippocampus_cases, cfg, tmp_path, stop_at=3)


def test_same_result_in_any_orientation(trained, hippocampus_refs, one_thread):
    image = hippocampus_refs[1].load().image
    turned = Volume.from_sitk(sitk.Flip(sitk.PermuteAxes(image.to_sitk(), [2, 0, 1]), [True, False, False]))
    model = str(trained[-1])
    first = medfoundcore.segment(image, ["hippocampus"], model=model, device="cpu").labels
    second = medfoundcore.segment(turned, ["hippocampus"], model=model, device="cpu").labels
    back = resample_onto(second, first, label=True)
    assert first.shape == image.shape and (first.array == 1).sum() > 0
    assert dice(back.array == 1, first.array == 1) > 0.95


def test_cli_trains_on_mri_and_refuses_ct(shared_data, tmp_path, one_thread, capsys):
    d = shared_data
    out = tmp_path / "model"
    args = ["train-seg", "--model", "mri", str(d / "msd_hippocampus" / "hippocampus_001_img.nii.gz"), "--out-name", "mri-cli",
            "--output-dir", str(out), "--work-dir", str(tmp_path / "w"), "--steps", "2", "--quiet", "--device", "cpu"]  # fmt: skip
    assert main(args) == 0
    card = json.loads((out / "card.json").read_text())
    assert card["kind"] == "mri-text-segmenter" and card["extra"]["history"]["steps_done"] == 2
    assert card["training_data"]["config"]["lr"] == MRITrainConfig().lr  # the recipe's own default, not the slice model's
    ct = ["train-seg", "--model", "mri", str(d / "dcmqi_ct3slice" / "ct3slice_img.nii.gz"), "--out-name", "mri-ct",
          "--output-dir", str(tmp_path / "ct"), "--work-dir", str(tmp_path / "w2"), "--steps", "1", "--quiet"]  # fmt: skip
    assert main(ct) == 2
    assert "MRI cases only" in capsys.readouterr().err
    assert main([*args, "--epochs", "2"]) == 2  # no silent no-op: crops, not slices, are this recipe's unit
    assert "--epochs applies to the slice model" in capsys.readouterr().err


def test_a_label_map_given_as_image_is_refused(trained, hippocampus_refs):
    labels = load_volume(hippocampus_refs[0].label_path, label=True)
    with pytest.raises(InputError, match="label map"):
        medfoundcore.segment(labels.with_array(labels.array.astype(np.float32)), ["hippocampus"], model=str(trained[-1]), device="cpu")


def test_fine_tuning_starts_from_the_base_model(trained, hippocampus_refs, tmp_path, one_thread):
    """``train-seg --model mri --base-model mri-v1``: a team's fine-tune starts from the base's weights
    and sizes (at a learning rate of 1e-9 one step changes nothing); a model of another family is refused."""
    net, _, base_dir = trained
    cfg = MRITrainConfig(steps=1, lr=1e-9, crop_zxy=CROP, checkpoint_every=1000)
    out = train_mri_from_cases(hippocampus_refs[:1], cfg, "mri-tuned", tmp_path / "w", output_dir=tmp_path / "m", base_model=str(base_dir))
    state, card = load_model(out)
    assert card.config["model"]["keys"] == list(net.cfg.keys) and card.config["model"]["width"] == TINY.width
    assert card.training_data["base_model"] == str(base_dir)
    base_state, _ = load_model(base_dir)  # as stored (16-bit), what the fine-tune starts from
    for name, value in base_state.items():
        assert torch.allclose(state[name].float(), value.float(), atol=1e-5), name
    with pytest.raises(InputError, match="needs an MRI model such as mri-v1"):
        train_mri_from_cases(hippocampus_refs[:1], cfg, "x", tmp_path / "w2", output_dir=tmp_path / "x", base_model="starter-v2")
