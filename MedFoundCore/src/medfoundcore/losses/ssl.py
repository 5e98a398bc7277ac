"""3DME pretraining losses (§IV-B, eq. 9–12): masked MSE, semantic consistency, 3D Sobel edge Dice.

``L = 0.7·L_rec + 0.2·L_sem + 0.1·L_edge``. All functions take volumes [B, C, D, H, W] and boolean
masks with True = masked voxel ([D,H,W], [B,D,H,W] or [B,1,D,H,W]).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from monai.networks.layers import separable_filtering
from torch import nn

from ..errors import InputError
from ..masking.voxels import broadcast_mask

FeatureFn = Callable[[torch.Tensor], Any]


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Eq. 10: ``1/(2|M|) Σ_{i∈M} (pred_i − target_i)²`` over masked voxels only (0 if nothing is masked)."""
    m = broadcast_mask(mask, pred)
    sq = (pred - target.to(pred.dtype)).pow(2)
    count = m.sum()
    if count == 0:
        return (sq * 0).sum()
    return sq[m].sum() / (2 * count)


# --------------------------------------------------------------------------- semantic consistency
def frozen_copy(module: nn.Module) -> nn.Module:
    """An independent eval-mode copy with no trainable parameters: a fixed φ for :func:`semantic_consistency`.

    Use it to turn the encoder being trained (or any pretrained network) into φ without φ's weights
    being updated by the loss; refresh the copy now and then if φ should follow training.
    """
    phi = copy.deepcopy(module).eval()
    phi.requires_grad_(False)
    return phi


def _feature_map(out: Any) -> torch.Tensor:
    """Accept a tensor, an :class:`Encoder3DOutput` (uses its token map) or a list/tuple (last item)."""
    if hasattr(out, "token_map"):
        return out.token_map()
    if isinstance(out, (list, tuple)):
        return _feature_map(out[-1])
    return out


def semantic_consistency(
    pred: torch.Tensor, target: torch.Tensor, phi: FeatureFn, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Eq. 11: ``1 − mean_{i∈M} cos(φ(pred)_i, φ(target)_i)`` with a frozen feature network φ.

    φ may return a feature map [B, F, d, h, w] (cosine per location; mask taken at φ's resolution, a
    location counting as masked when any of its voxels is) or a vector [B, F] (cosine per sample).
    Gradients flow into ``pred`` through φ; φ's own parameters must be frozen (see :func:`frozen_copy`).
    """
    with torch.no_grad():
        ft = _feature_map(phi(target))
    fp = _feature_map(phi(pred))
    cos = F.cosine_similarity(fp, ft.to(fp.dtype), dim=1, eps=1e-8)
    if cos.dim() == 1 or mask is None:
        return 1 - cos.mean()
    m = broadcast_mask(mask, pred)[:, :1].float()
    m = F.interpolate(m, size=cos.shape[1:], mode="area") > 0
    m = m[:, 0]
    if not m.any():
        return (cos * 0).sum()
    return 1 - cos[m].mean()


# --------------------------------------------------------------------------- edge consistency
_DERIV = torch.tensor([-1.0, 0.0, 1.0])
_SMOOTH = torch.tensor([1.0, 2.0, 1.0])


def sobel_edges(x: torch.Tensor) -> torch.Tensor:
    """3D Sobel gradient magnitude of [B, C, D, H, W] (edge-replicated borders), same shape.

    Along each axis: central difference [−1, 0, 1] on that axis and [1, 2, 1] smoothing on the other two
    (the separable 3×3×3 Sobel kernels, as scipy.ndimage.sobel).
    """
    grads = []
    for axis in range(3):
        kernels = [(_DERIV if a == axis else _SMOOTH).to(x.device, x.dtype) for a in range(3)]
        grads.append(separable_filtering(x, kernels, mode="replicate"))
    return torch.sqrt(sum(g.pow(2) for g in grads) + 1e-12)


def sobel_edge_dice(
    pred: torch.Tensor, target: torch.Tensor, denominator: Literal["squared", "linear"] = "squared", eps: float = 1e-6
) -> torch.Tensor:
    """Eq. 12: ``1 − 2 Σ S(pred)·S(target) / (Σ S(pred)^q + Σ S(target)^q)`` per sample, averaged.

    ``denominator="squared"`` (q = 2, soft Dice of Milletari et al.) is the default because it is 0
    exactly when the edge maps agree and does not depend on the intensity scale. ``"linear"`` (q = 1)
    is eq. 12 as printed; it is only a Dice for edge maps in [0, 1] (identical maps with values > 1
    give a negative loss).
    """
    if denominator not in ("squared", "linear"):
        raise InputError(f"edge Dice denominator must be 'squared' or 'linear', got {denominator!r}")
    q = 2 if denominator == "squared" else 1
    a = sobel_edges(pred).flatten(1)
    b = sobel_edges(target.to(pred.dtype)).flatten(1)
    dice = 2 * (a * b).sum(1) / (a.pow(q).sum(1) + b.pow(q).sum(1) + eps)
    return (1 - dice).mean()


# --------------------------------------------------------------------------- total
class ThreeDMELoss(nn.Module):
    """Eq. 9: weighted sum of masked MSE, semantic consistency and edge Dice; returns every part.

    Without ``phi`` the semantic term is reported as 0 and contributes nothing (the other weights are
    not renormalised, so loss values stay comparable between runs with and without φ).
    """

    def __init__(
        self,
        weights: Sequence[float] = (0.7, 0.2, 0.1),
        phi: nn.Module | None = None,
        edge_denominator: Literal["squared", "linear"] = "squared",
    ) -> None:
        super().__init__()
        if len(weights) != 3:
            raise InputError(f"3DME loss needs three weights (rec, sem, edge), got {list(weights)}")
        self.weights = tuple(float(w) for w in weights)
        self.phi = phi
        if phi is not None:
            phi.eval().requires_grad_(False)
        self.edge_denominator = edge_denominator

    def train(self, mode: bool = True) -> ThreeDMELoss:
        super().train(mode)
        if self.phi is not None:
            self.phi.eval()  # φ is a fixed feature extractor
        return self

    def forward(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """pred, target [B, C, D, H, W]; mask True = masked voxel. Keys: rec, sem, edge, total."""
        rec = masked_mse(pred, target, mask)
        sem = semantic_consistency(pred, target, self.phi, mask) if self.phi is not None else rec.new_zeros(())
        edge = sobel_edge_dice(pred, target, self.edge_denominator)
        w_rec, w_sem, w_edge = self.weights
        total = w_rec * rec + w_sem * sem + w_edge * edge
        return {"rec": rec, "sem": sem, "edge": edge, "total": total}
