"""A tiny 3DME masked autoencoder learns on a real CT crop (loss falls over a few steps)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medfoundcore.io import load_volume
from medfoundcore.losses.ssl import ThreeDMELoss, frozen_copy
from medfoundcore.masking.progressive import ProgressiveMaskingSchedule
from medfoundcore.models.backbones.encoder3d import build_mae3d
from medfoundcore.preprocess import normalize_intensity


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ct_crop(shared_data) -> torch.Tensor:
    vol = load_volume(shared_data / "totalsegmentator" / "ts_ct_full_img.nii.gz")
    arr = normalize_intensity(vol.array, "CT") / 255.0  # soft-tissue window → [0, 1]
    c = [s // 2 for s in arr.shape]
    crop = arr[c[0] - 16 : c[0] + 16, c[1] - 16 : c[1] + 16, c[2] - 16 : c[2] + 16]
    return torch.from_numpy(np.ascontiguousarray(crop, dtype=np.float32))[None, None]


def test_reconstruction_has_the_input_shape_and_masked_voxels_are_hidden(ct_crop: torch.Tensor) -> None:
    torch.manual_seed(0)
    mae = build_mae3d("tiny").eval()
    mask = torch.zeros(32, 32, 32, dtype=torch.bool)
    mask[:, :, :16] = True
    y = mae(ct_crop, mask)
    assert y.shape == ct_crop.shape
    # what is under the mask cannot influence the output: change it, get the same reconstruction
    altered = ct_crop.clone()
    altered[..., :16] = torch.rand_like(altered[..., :16])
    torch.testing.assert_close(mae(altered, mask), y)


def test_tiny_mae_loss_falls_on_a_real_ct_crop(ct_crop: torch.Tensor) -> None:
    torch.manual_seed(0)
    mae = build_mae3d("tiny")
    mask = ProgressiveMaskingSchedule(total=100).sample((32, 32, 32), 0, torch.Generator().manual_seed(0))
    criterion = ThreeDMELoss(phi=frozen_copy(mae.encoder))  # full eq. 9 with φ = frozen initial encoder
    opt = torch.optim.AdamW(mae.parameters(), lr=2e-3)
    history = []
    for _ in range(15):
        parts = criterion(mae(ct_crop, mask), ct_crop, mask)
        opt.zero_grad()
        parts["total"].backward()
        opt.step()
        history.append({k: v.item() for k, v in parts.items()})
    first, last = history[0], history[-1]
    assert last["total"] < 0.6 * first["total"]
    assert last["rec"] < 0.5 * first["rec"]
    assert last["edge"] < first["edge"]
    assert last["sem"] < first["sem"]
