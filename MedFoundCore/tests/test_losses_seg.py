"""The segmentation loss is exactly eq. 3: Dice + BCE on positive pairs, slice BCE with positive weight 3."""

from __future__ import annotations

import math

import numpy as np
import torch

from medfoundcore.losses.segmentation import mask_edges, segmentation_loss
from medfoundcore.models.prompted_segmenter import SegmenterOutput


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _hand_dice_bce(logits: np.ndarray, target: np.ndarray) -> float:
    p = _sigmoid(logits)
    dice = 1 - (2 * (p * target).sum() + 1e-5) / (p.sum() + target.sum() + 1e-5)
    bce = -(target * np.log(p) + (1 - target) * np.log(1 - p)).mean()
    return dice + bce


def test_loss_matches_hand_computation():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 2, 5, 6, generator=g, dtype=torch.float64)
    presence = torch.tensor([[1.2, -0.4], [0.3, -2.0]], dtype=torch.float64)
    target = torch.zeros(2, 2, 5, 6)
    target[0, 0, 1:4, 2:5] = 1  # positive pair
    target[1, 1, 0:2, 0:3] = 1  # positive pair; (0,1) and (1,0) are absent (empty) pairs
    losses = segmentation_loss(SegmenterOutput(logits, presence), target)

    lg, tg, pr = logits.numpy(), target.numpy(), presence.numpy()
    mask = (_hand_dice_bce(lg[0, 0], tg[0, 0]) + _hand_dice_bce(lg[1, 1], tg[1, 1])) / 2
    w = _sigmoid(pr)
    pres = (-3 * math.log(w[0, 0]) - math.log(1 - w[0, 1]) - math.log(1 - w[1, 0]) - 3 * math.log(w[1, 1])) / 4
    assert math.isclose(float(losses["mask"]), mask, rel_tol=1e-5)
    assert math.isclose(float(losses["presence"]), pres, rel_tol=1e-6)
    assert math.isclose(float(losses["total"]), mask + pres, rel_tol=1e-5)
    assert "edge" not in losses


def test_negative_pairs_do_not_touch_the_mask_loss():
    logits = torch.randn(1, 2, 8, 8, requires_grad=True)
    target = torch.zeros(1, 2, 8, 8)
    target[0, 0, 2:5, 2:5] = 1
    losses = segmentation_loss(SegmenterOutput(logits, torch.zeros(1, 2)), target)
    losses["mask"].backward()
    assert logits.grad[0, 0].abs().sum() > 0
    assert logits.grad[0, 1].abs().sum() == 0  # the absent structure's mask gets no segmentation gradient


def test_all_negative_batch_gives_zero_mask_loss_with_a_graph():
    logits = torch.randn(1, 3, 8, 8, requires_grad=True)
    losses = segmentation_loss(SegmenterOutput(logits, torch.zeros(1, 3)), torch.zeros(1, 3, 8, 8))
    assert float(losses["mask"].detach()) == 0.0 and losses["mask"].requires_grad
    assert math.isclose(float(losses["presence"]), math.log(2), rel_tol=1e-6)


def test_edge_loss_uses_the_mask_boundary():
    target = torch.zeros(1, 1, 9, 9)
    target[0, 0, 2:7, 2:7] = 1
    edges = mask_edges(target)
    assert int(edges.sum()) == 16  # the 5x5 square's one-pixel ring
    assert edges[0, 0, 4, 4] == 0 and edges[0, 0, 2, 2] == 1
    logits = torch.zeros(1, 1, 9, 9)
    losses = segmentation_loss(SegmenterOutput(logits, torch.zeros(1, 1), edge_logits=logits * 0 + 2), target)
    expected = _hand_dice_bce(np.full((9, 9), 2.0), edges[0, 0].numpy())
    assert math.isclose(float(losses["edge"]), expected, rel_tol=1e-5)
