"""BiomedParse-V training loss (paper eq. 3, §5.2).

For each (slice, prompt) pair with target mask M and presence omega = sigmoid(presence logit):

    L = S(M_raw, M) - 3 * log(omega)     if M != 0   (positive pair)
    L = -log(1 - omega)                  if M == 0   (negative pair)

S is the equally weighted sum of Dice loss and pixel BCE, computed on positive pairs only; the
slice-level BCE has positive-class weight 3. Optional edge logits get the same S on the edge of the
mask (§5.2). The gradient cut-off is in the model (ISD stop-gradient), not here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss

from medfoundcore.models.prompted_segmenter import SegmenterOutput

__all__ = ["segmentation_loss", "mask_edges", "dice_bce"]

_DICE = DiceLoss(sigmoid=True, reduction="none", smooth_nr=1e-5, smooth_dr=1e-5)


def dice_bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-pair Dice loss + mean pixel BCE; logits/target [N, H, W] -> [N]."""
    target = target.to(logits.dtype)
    dice = _DICE(logits[:, None], target[:, None]).reshape(-1)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(1).mean(1)
    return dice + bce


def mask_edges(masks: torch.Tensor, width: int = 1) -> torch.Tensor:
    """Inner boundary of binary masks [..., H, W]: pixels of the mask with a background pixel within ``width``."""
    shape = masks.shape
    m = masks.reshape(-1, 1, *shape[-2:]).float()
    k = 2 * width + 1
    eroded = -F.max_pool2d(-m, kernel_size=k, stride=1, padding=width)
    return (m - eroded).clamp_(0, 1).reshape(shape)


def segmentation_loss(
    output: SegmenterOutput,
    target_masks: torch.Tensor,
    *,
    edge_targets: torch.Tensor | None = None,
    presence_pos_weight: float = 3.0,
) -> dict[str, torch.Tensor]:
    """Eq. 3 loss for a batch. target_masks: [B, P, H, W] binary (all-zero = prompted object absent).

    Returns ``{"total", "mask", "presence"}`` (+ ``"edge"`` when the model predicts edges): mask and
    edge terms are means over positive pairs (0 when there are none), presence is the mean over
    all pairs. Edge targets default to :func:`mask_edges` of the masks.
    """
    if target_masks.shape != output.mask_logits.shape:
        raise ValueError(f"target masks {tuple(target_masks.shape)} != logits {tuple(output.mask_logits.shape)}")
    target = target_masks.float()
    positive = target.flatten(2).amax(dim=2) > 0  # [B, P]
    pos_weight = torch.tensor(presence_pos_weight, device=target.device)
    presence = F.binary_cross_entropy_with_logits(output.presence_logits.float(), positive.float(), pos_weight=pos_weight)
    mask = _positive_mean(output.mask_logits, target, positive)
    losses = {"mask": mask, "presence": presence}
    if output.edge_logits is not None:
        edges = mask_edges(target) if edge_targets is None else edge_targets.float()
        losses["edge"] = _positive_mean(output.edge_logits, edges, positive)
    losses["total"] = sum(losses.values())
    return losses


def _positive_mean(logits: torch.Tensor, target: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    if not positive.any():
        return logits.sum() * 0.0  # keeps the graph (DDP needs every parameter used)
    return dice_bce(logits[positive].float(), target[positive]).mean()
