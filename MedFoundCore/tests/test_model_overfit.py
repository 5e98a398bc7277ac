"""A tiny BiomedParse-V overfits real FVE slices of an abdominal CT: the loss falls and the ISD learns to gate."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medfoundcore import fve, preprocess
from medfoundcore.io import load_volume
from medfoundcore.losses.segmentation import segmentation_loss
from medfoundcore.models.prompted_segmenter import PromptedSegmenter, build_segmenter
from medfoundcore.text import TextEncoder
from medfoundcore.vocabulary import load_vocabulary

SIZE = 64
SLICES = (9, 24)  # slice 9 shows liver and left kidney; slice 24 only the liver
PROMPTS = ("liver", "left kidney", "brain grey matter")
LR = 1e-3


@pytest.fixture(scope="module")
def batch(shared_data):
    case = shared_data / "totalsegmentator"
    image = load_volume(case / "ts_ct_sm_img.nii.gz")
    label = load_volume(case / "ts_ct_sm_lab.nii.gz", label=True)
    names = json.loads((case / "ts_ct_sm_labels.json").read_text())["labels"]
    vocab = load_vocabulary()
    value_of = {vocab.label_name_to_structure(n).key: int(v) for v, n in names.items() if vocab.label_name_to_structure(n)}
    encoded = fve.encode_volume(preprocess.normalize_intensity(image.array, "CT"), 1)  # (K, 3, J, I)
    images = torch.from_numpy(encoded[list(SLICES)]).float()
    masks = []
    for k in SLICES:
        per_prompt = []
        for prompt in PROMPTS:
            key = vocab.normalize_prompt(prompt).key
            per_prompt.append(label.array[k] == value_of[key] if key in value_of else np.zeros(label.array[k].shape, bool))
        masks.append(np.stack(per_prompt))
    target = torch.from_numpy(np.stack(masks)).float()
    images = F.interpolate(images, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    target = F.interpolate(target, size=(SIZE, SIZE), mode="nearest")
    text = TextEncoder().encode(list(PROMPTS))[None].expand(len(SLICES), -1, -1)
    return images, text, target


def _dice(pred: torch.Tensor, target: torch.Tensor) -> float:
    return float(2 * (pred & target).sum() / (pred.sum() + target.sum()).clamp(min=1))


def test_tiny_model_overfits_real_slices_and_isd_gates_absent_structure(batch):
    images, text, target = batch
    assert target[:, 0].sum() > 0 and target[0, 1].sum() > 0 and target[1, 1].sum() == 0 and target[:, 2].sum() == 0
    torch.manual_seed(0)
    model = build_segmenter({"preset": "tiny", "image_size": SIZE})
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
    history = []
    for _ in range(40):
        losses = segmentation_loss(model(images, text), target)
        optimizer.zero_grad()
        losses["total"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        history.append({k: float(v.detach()) for k, v in losses.items()})
    assert history[-1]["total"] < 0.5 * history[0]["total"]
    assert history[-1]["mask"] < 0.5 * history[0]["mask"]

    model.eval()
    with torch.no_grad():
        out = model(images, text)
    omega = out.presence
    assert (omega[:, 0] > 0.5).all()  # liver is in both slices
    assert (omega[:, 2] < 0.5).all()  # grey matter is never in an abdominal CT: gated off
    masks = PromptedSegmenter.final_masks(out)
    assert not masks[:, 2].any()
    assert _dice(masks[:, 0], target[:, 0].bool()) > 0.7


@pytest.fixture(scope="module")
def organ_batch(shared_data):
    """6 slices of ts_ct_full showing liver and spleen, with targets for four abdominal organs."""
    case = shared_data / "totalsegmentator"
    image = load_volume(case / "ts_ct_full_img.nii.gz")
    label = load_volume(case / "ts_ct_full_lab.nii.gz", label=True)
    names = json.loads((case / "ts_ct_full_labels.json").read_text())["labels"]
    vocab = load_vocabulary()
    value_of = {s.key: int(v) for v, n in names.items() if (s := vocab.label_name_to_structure(n))}
    keys = [vocab.normalize_prompt(p).key for p in ORGANS]
    slices = [i for i in range(label.shape[0]) if all((label.array[i] == value_of[k]).any() for k in keys[:2])][:6]
    encoded = fve.encode_volume(preprocess.normalize_intensity(image.array, "CT"), 1)[slices]
    images = F.interpolate(torch.from_numpy(encoded).float(), size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    target = np.stack([[label.array[i] == value_of[k] for k in keys] for i in slices])
    target = F.interpolate(torch.from_numpy(target).float(), size=(SIZE, SIZE), mode="nearest")
    text = TextEncoder().encode([vocab.normalize_prompt(p).name for p in ORGANS])[None].expand(len(slices), -1, -1)
    return images, text, target


ORGANS = ("liver", "spleen", "left kidney", "stomach")


def _train(model, images, text, target, steps: int) -> None:
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
    for _ in range(steps):
        losses = segmentation_loss(model(images, text), target)
        optimizer.zero_grad()
        losses["total"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    model.eval()


def test_masks_follow_the_prompt(organ_batch):
    """Different prompts give different organs: the text FiLM path keeps a briefly trained decoder from
    collapsing to one mask for every prompt (it did without it: identical masks, Dice 0.21-0.55)."""
    images, text, target = organ_batch
    torch.manual_seed(0)
    model = build_segmenter({"preset": "tiny", "image_size": SIZE})
    assert model.config.text_film
    _train(model, images, text, target, steps=60)
    with torch.no_grad():
        predicted = model(images, text).mask_logits > 0
    dices = [_dice(predicted[:, j], target[:, j].bool()) for j in range(len(ORGANS))]
    assert not torch.equal(predicted[:, 0], predicted[:, 1])
    assert min(dices) > 0.5, dict(zip(ORGANS, dices))
