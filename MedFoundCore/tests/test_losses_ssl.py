"""3DME losses (eq. 9–12) against hand computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch import nn

from medfoundcore.errors import InputError
from medfoundcore.losses.ssl import (
    ThreeDMELoss,
    frozen_copy,
    masked_mse,
    semantic_consistency,
    sobel_edge_dice,
    sobel_edges,
)
from medfoundcore.models.backbones.encoder3d import build_encoder3d


def _cube(shape=(16, 16, 16), lo=4, hi=12, shift=0) -> torch.Tensor:
    x = torch.zeros(1, 1, *shape)
    x[..., lo + shift : hi + shift, lo:hi, lo:hi] = 1.0
    return x


def test_masked_mse_is_half_mean_square_over_masked_voxels_only() -> None:
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(2, 1, 8, 8, 8, generator=g), torch.randn(2, 1, 8, 8, 8, generator=g)
    mask = torch.rand(2, 8, 8, 8, generator=g) > 0.6
    p, t, m = pred.numpy()[:, 0], target.numpy()[:, 0], mask.numpy()
    expect = ((p - t) ** 2)[m].sum() / (2 * m.sum())
    assert masked_mse(pred, target, mask).item() == pytest.approx(float(expect), rel=1e-5)
    # visible voxels do not matter
    changed = torch.where(mask[:, None], pred, pred + 100.0)
    assert masked_mse(changed, target, mask).item() == pytest.approx(float(expect), rel=1e-5)
    # a single [D,H,W] mask broadcasts over the batch; nothing masked → 0 with a gradient path
    assert masked_mse(pred, target, mask[0]).item() == pytest.approx(
        float(((p - t) ** 2)[:, m[0]].sum() / (2 * 2 * m[0].sum())), rel=1e-5
    )
    zero = masked_mse(pred.requires_grad_(), target, torch.zeros(8, 8, 8, dtype=torch.bool))
    assert zero.item() == 0.0 and zero.requires_grad
    with pytest.raises(InputError, match="mask shape"):
        masked_mse(pred, target, mask[:, :4])


def test_sobel_edges_of_a_cube_match_scipy() -> None:
    cube = _cube()
    vol = cube[0, 0].numpy().astype(np.float64)
    ref = np.sqrt(sum(ndimage.sobel(vol, axis=a, mode="nearest") ** 2 for a in range(3)))
    got = sobel_edges(cube)[0, 0].numpy()
    np.testing.assert_allclose(got, ref, atol=1e-5)
    assert got[8, 8, 8] == pytest.approx(0.0, abs=1e-5)  # flat inside
    assert got[0, 0, 0] == pytest.approx(0.0, abs=1e-5)  # flat outside
    assert got[4, 8, 8] == pytest.approx(16.0, abs=1e-4)  # a face voxel: one full step × 4×4 smoothing


def test_edge_dice_matches_hand_computation_and_is_zero_for_equal_edges() -> None:
    a_t, b_t = _cube(), _cube(shift=2)
    a = np.sqrt(sum(ndimage.sobel(a_t[0, 0].numpy().astype(np.float64), axis=k, mode="nearest") ** 2 for k in range(3)))
    b = np.sqrt(sum(ndimage.sobel(b_t[0, 0].numpy().astype(np.float64), axis=k, mode="nearest") ** 2 for k in range(3)))
    squared = 1 - 2 * (a * b).sum() / ((a**2).sum() + (b**2).sum())
    linear = 1 - 2 * (a * b).sum() / (a.sum() + b.sum())
    assert sobel_edge_dice(a_t, b_t).item() == pytest.approx(squared, rel=1e-4)
    assert sobel_edge_dice(a_t, b_t, denominator="linear").item() == pytest.approx(linear, rel=1e-4)
    assert sobel_edge_dice(a_t, a_t).item() == pytest.approx(0.0, abs=1e-6)
    # squared form ignores the intensity scale; a shifted cube is worse than the same cube
    assert sobel_edge_dice(100 * a_t, 100 * b_t).item() == pytest.approx(squared, rel=1e-4)
    assert 0.0 < squared < 1.0


class _Features(nn.Module):
    """φ(x) = (x, 1) per voxel: a fixed 1×1×1 conv, so eq. 11 can be written out by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(1, 2, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([1.0, 0.0]).view(2, 1, 1, 1, 1))
            self.conv.bias.copy_(torch.tensor([0.0, 1.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def test_semantic_consistency_matches_hand_cosine_over_masked_voxels() -> None:
    g = torch.Generator().manual_seed(1)
    pred = torch.randn(1, 1, 6, 6, 6, generator=g, requires_grad=True)
    target = torch.randn(1, 1, 6, 6, 6, generator=g)
    mask = torch.rand(6, 6, 6, generator=g) > 0.5
    phi = frozen_copy(_Features())
    p, t, m = pred.detach().numpy()[0, 0], target.numpy()[0, 0], mask.numpy()
    cos = (p * t + 1) / (np.sqrt(p**2 + 1) * np.sqrt(t**2 + 1))
    expect = 1 - cos[m].mean()
    loss = semantic_consistency(pred, target, phi, mask)
    assert loss.item() == pytest.approx(float(expect), rel=1e-5)
    loss.backward()
    assert pred.grad is not None and pred.grad[0, 0][~mask].abs().max() == 0  # only masked voxels are pulled
    assert pred.grad[0, 0][mask].abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in phi.parameters())


def test_semantic_consistency_with_the_frozen_encoder_as_phi() -> None:
    phi = frozen_copy(build_encoder3d("tiny"))
    x = torch.rand(1, 1, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(16, 16, 16, dtype=torch.bool)
    mask[:8] = True
    assert semantic_consistency(x, x, phi, mask).item() == pytest.approx(0.0, abs=1e-5)
    assert semantic_consistency(1 - x, x, phi, mask).item() > 1e-3


def test_three_dme_loss_weights_its_parts() -> None:
    g = torch.Generator().manual_seed(2)
    pred, target = torch.rand(1, 1, 16, 16, 16, generator=g), torch.rand(1, 1, 16, 16, 16, generator=g)
    mask = torch.rand(16, 16, 16, generator=g) > 0.5
    parts = ThreeDMELoss(phi=_Features())(pred, target, mask)
    expect = 0.7 * masked_mse(pred, target, mask) + 0.2 * semantic_consistency(pred, target, _Features(), mask)
    expect = expect + 0.1 * sobel_edge_dice(pred, target)
    assert parts["total"].item() == pytest.approx(expect.item(), rel=1e-5)
    assert parts["sem"].item() > 0
    no_phi = ThreeDMELoss()(pred, target, mask)
    assert no_phi["sem"].item() == 0.0
    assert no_phi["total"].item() == pytest.approx(0.7 * parts["rec"].item() + 0.1 * parts["edge"].item(), rel=1e-5)
    with pytest.raises(InputError):
        ThreeDMELoss(weights=(1.0, 0.0))
