"""Downstream heads: UNet segmentation decoder and attention-pooling classifier on the 3DME encoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medfoundcore.errors import InputError
from medfoundcore.io import load_volume
from medfoundcore.models.backbones.encoder3d import build_encoder3d
from medfoundcore.models.heads import (
    AttentionPoolClassifier,
    ClassificationModel3D,
    SegmentationModel3D,
    build_task_model3d,
    task_config,
)
from medfoundcore.preprocess import normalize_intensity


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def spleen_crop(shared_data) -> tuple[torch.Tensor, torch.Tensor]:
    """32³ CT crop around the spleen (label 1) and its binary mask."""
    base = shared_data / "totalsegmentator"
    img = load_volume(base / "ts_ct_full_img.nii.gz")
    lab = load_volume(base / "ts_ct_full_lab.nii.gz", label=True).array == 1
    centre = (int(c.mean()) for c in np.nonzero(lab))
    starts = (min(max(c - 16, 0), n - 32) for c, n in zip(centre, lab.shape))
    sl = tuple(slice(s, s + 32) for s in starts)
    x = normalize_intensity(img.array, "CT")[sl] / 255.0
    y = lab[sl]
    assert x.shape == (32, 32, 32) and y.sum() > 100
    return torch.from_numpy(np.ascontiguousarray(x, np.float32))[None, None], torch.from_numpy(y.astype(np.int64))[None]


def test_segmentation_head_shapes_and_frozen_encoder(spleen_crop) -> None:
    x, _ = spleen_crop
    torch.manual_seed(0)
    enc = build_encoder3d("tiny")
    model = SegmentationModel3D(enc, num_classes=3, freeze_encoder=True, feature_size=8).train()
    stats = enc.conv_branch.stages[0][1].running_mean.clone()
    logits = model(x)
    assert logits.shape == (1, 3, 32, 32, 32)
    logits.mean().backward()
    assert all(p.grad is None for p in enc.parameters()), "a frozen encoder must get no gradients"
    assert torch.equal(enc.conv_branch.stages[0][1].running_mean, stats), "frozen BatchNorm stats must not move"
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.head.parameters())


def test_frozen_encoder_head_learns_the_spleen_on_a_real_ct(spleen_crop) -> None:
    x, y = spleen_crop
    torch.manual_seed(0)
    model = SegmentationModel3D(build_encoder3d("tiny"), num_classes=2, freeze_encoder=True, feature_size=8).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(12):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    model.eval()
    with torch.no_grad():
        pred = model(x).argmax(1)
    dice = 2 * ((pred == 1) & (y == 1)).sum() / ((pred == 1).sum() + (y == 1).sum())
    assert dice > 0.5  # overfitting one crop: proves the decoder wiring end to end, not generalisation


def test_unfrozen_encoder_is_fine_tuned() -> None:
    torch.manual_seed(0)
    model = SegmentationModel3D(build_encoder3d("tiny"), num_classes=2, freeze_encoder=False, feature_size=8)
    model(torch.randn(1, 1, 16, 16, 16)).mean().backward()
    assert model.encoder.patch_embed.weight.grad.abs().sum() > 0


def test_attention_pooling_is_permutation_invariant_and_classifies() -> None:
    torch.manual_seed(0)
    head = AttentionPoolClassifier(dim=16, num_classes=3, heads=4).eval()
    tokens = torch.randn(2, 10, 16)
    out = head(tokens)
    assert out.shape == (2, 3)
    torch.testing.assert_close(head(tokens[:, torch.randperm(10)]), out, atol=1e-5, rtol=1e-5)
    cls = ClassificationModel3D(build_encoder3d("tiny"), num_classes=4).eval()
    assert cls(torch.randn(2, 1, 16, 16, 16)).shape == (2, 4)


def test_task_models_rebuild_from_their_config() -> None:
    torch.manual_seed(0)
    for model in (
        SegmentationModel3D(build_encoder3d("tiny"), 3, feature_size=8),
        ClassificationModel3D(build_encoder3d("tiny"), 2),
    ):
        model.eval()
        twin = build_task_model3d(task_config(model)).eval()
        twin.load_state_dict(model.state_dict())
        x = torch.randn(1, 1, 16, 16, 16)
        torch.testing.assert_close(twin(x), model(x))
    with pytest.raises(InputError, match="unknown head"):
        build_task_model3d({"encoder": build_encoder3d("tiny").cfg.to_dict(), "head": "detector", "num_classes": 2})
