"""Pretraining on real volumes: the loss falls, a killed run resumes exactly, the encoder exports and reloads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medfoundcore.errors import Cancelled, InputError
from medfoundcore.models.backbones.encoder3d import load_encoder
from medfoundcore.losses.ssl import ThreeDMELoss
from medfoundcore.train.pretrain import CropSampler, Masker, PretrainConfig, _per_level_loss, discover_volumes, pretrain

TINY = dict(encoder="tiny", crop_size=16, spacing_mm=3.0, batch_size=2, lr=2e-3, warmup_steps=2, device="cpu", holdout=1, eval_crops=2)


pytestmark = pytest.mark.usefixtures("one_thread")


def _data(shared_data: Path) -> list[Path]:
    return [shared_data / "totalsegmentator", shared_data / "spinegeneric_ivadomed"]


def test_discovery_skips_label_maps_and_finds_dicom_series(shared_data: Path) -> None:
    files = discover_volumes([shared_data / "totalsegmentator"])
    names = [f.name for f in files]
    assert "ts_ct_sm_img.nii.gz" in names and "ts_ct_dicom20_series" in names
    assert not any("_lab" in n for n in names)
    with pytest.raises(InputError, match="no such file"):
        discover_volumes([shared_data / "does-not-exist"])


def test_crops_are_resampled_normalised_and_upsampled_when_small(shared_data: Path) -> None:
    path = shared_data / "totalsegmentator" / "ts_ct_dicom20_img.nii.gz"  # 20 slices x 2 mm = 40 mm thick
    sampler = CropSampler([path], crop=32, spacing_mm=2.0)
    crop = sampler.sample(np.random.default_rng(0))
    assert crop.shape == (32, 32, 32) and crop.dtype == np.float32
    assert 0.0 <= crop.min() and crop.max() <= 1.0 and crop.std() > 0.05
    # the 40 mm slab is stretched over 32 voxels (1.25 mm) instead of leaving 24 mm of padding
    assert np.mean(crop[-4:] == 0.0) < 0.5
    # without upsampling the far slices would be pure padding: check the sampler's own geometry
    image = sampler.image(0)
    assert image.GetSize()[2] * image.GetSpacing()[2] == pytest.approx(40.0)


def test_short_pretraining_on_real_volumes_lowers_loss_and_raises_psnr(shared_data: Path, tmp_path: Path) -> None:
    config = PretrainConfig(**TINY, steps=40, masking_options={"stages": [[4, 0.3]]}, semantic="none", checkpoint_every=40, eval_every=10)
    records: list[dict] = []
    encoder_dir = pretrain(_data(shared_data), config, tmp_path / "run", on_metrics=records.append)
    losses = [r["total"] for r in records if "total" in r]
    psnr = [r["psnr_db"] for r in records if "psnr_db" in r]
    assert len(losses) == 40 and len(psnr) == 4
    assert np.mean(losses[-10:]) < 0.75 * np.mean(losses[:5]), losses  # measured 0.55
    assert psnr[-1] > psnr[0] + 0.5, psnr  # measured 13.4 -> 14.9 dB
    encoder, card = load_encoder(encoder_dir)
    assert card.kind == "encoder3d" and card.preprocessing["spacing_mm"] == 3.0
    out = encoder(torch.rand(1, 1, 16, 16, 16))
    assert out.tokens.shape == (1, 8, encoder.cfg.dim)


@pytest.mark.parametrize("scheme", ["progressive", "mim"])
def test_killed_run_resumes_to_the_same_weights(shared_data: Path, tmp_path: Path, scheme: str) -> None:
    config = PretrainConfig(**TINY, masking=scheme, steps=6, checkpoint_every=2, eval_every=6, semantic="self", semantic_refresh_every=3)
    pretrain(_data(shared_data), config, tmp_path / "straight")

    from medfoundcore.progress import CancelToken

    token = CancelToken()

    def kill_after_step_3(record: dict) -> None:
        if record.get("step") == 3:
            token.cancel()

    with pytest.raises(Cancelled):
        pretrain(_data(shared_data), config, tmp_path / "killed", cancel=token, on_metrics=kill_after_step_3)
    assert sorted(p.name for p in (tmp_path / "killed" / "checkpoints").iterdir()) == ["step-00000002.pt"]
    pretrain(_data(shared_data), config, tmp_path / "killed")

    straight = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    resumed = json.loads((tmp_path / "killed" / "metrics.json").read_text())
    assert [h["step"] for h in resumed["history"]] == [1, 2, 3, 4, 5, 6]
    assert resumed["replica_hashes"] == straight["replica_hashes"]
    assert resumed["history"][-1]["total"] == pytest.approx(straight["history"][-1]["total"], rel=1e-6)


def test_config_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="masking must be one of"):
        PretrainConfig(masking="random")
    with pytest.raises(InputError, match="unknown keys"):
        PretrainConfig.from_dict({"stepz": 3})
    bad = tmp_path / "bad.yaml"
    bad.write_text("pretrain: [1, 2")
    with pytest.raises(InputError, match="bad.yaml"):
        PretrainConfig.load(bad)


@pytest.mark.parametrize(("scheme", "extra_loss"), [("mim", "mim_infonce"), ("dual_axis", None)])
def test_mim_and_dual_axis_schemes_train(shared_data: Path, tmp_path: Path, scheme: str, extra_loss: str | None) -> None:
    config = PretrainConfig(**TINY, steps=2, masking=scheme, checkpoint_every=2, eval_every=2, semantic="none")
    records: list[dict] = []
    pretrain(_data(shared_data), config, tmp_path / scheme, on_metrics=records.append)
    steps = [r for r in records if "total" in r]
    assert len(steps) == 2 and all(np.isfinite(r["total"]) and r["rec"] > 0 for r in steps)
    if extra_loss:
        assert all(r[extra_loss] > 0 for r in steps)


def test_mim_batches_hold_three_levels_tied_to_the_encoder_token_grid() -> None:
    config = PretrainConfig(**TINY, masking="mim", masking_options={"gamma": 2, "ratio": 0.5})
    masker = Masker(config)
    grid = 16 // 8  # MiM patches are the encoder's own tokens: crop / patch size
    assert masker.mim_grid == grid and masker.source_crop() == 32  # level 1 is twice the crop in the source
    x = torch.rand(2, 1, 32, 32, 32)
    inputs, targets, masks, extra = masker.batch(x, 0, torch.Generator().manual_seed(0))
    assert inputs.shape == (2 * (1 + 2 + 4), 1, 16, 16, 16) and torch.equal(inputs, targets)
    assert extra["mim_levels"] == [1, 2, 2, 3, 3, 3, 3] * 2
    pairs = extra["mim_pairs"]
    assert sorted({p[3] for p in pairs}) == [1, 2] and len(pairs) == 2 * 6  # both adjacent-level pairs, eq. 7
    for parent, child, patch, parent_level in pairs:
        assert extra["mim_levels"][parent] == parent_level and extra["mim_levels"][child] == parent_level + 1
        # the child was cut from a patch its parent hides: that patch's token is masked in the parent
        assert masks[parent].view(grid, 8, grid, 8, grid, 8).permute(0, 2, 4, 1, 3, 5).reshape(grid**3, -1)[patch].all()
    assert masks.float().mean() == pytest.approx(0.5)
    with pytest.raises(InputError, match="token grid"):
        Masker(PretrainConfig(**TINY, masking="mim", masking_options={"grid": 4}))
    with pytest.raises(InputError, match="level1_scale"):
        Masker(PretrainConfig(**TINY, masking="mim", masking_options={"levels": 5, "level1_scale": 1}))


def test_mim_reconstruction_weighs_levels_equally_not_volumes() -> None:
    loss = ThreeDMELoss((1.0, 0.0, 0.0), None)
    target = torch.zeros(3, 1, 8, 8, 8)
    recon = target.clone()
    recon[0] = 1.0  # only the one level-1 volume is wrong; two level-2 volumes are perfect
    masks = torch.ones(3, 8, 8, 8, dtype=torch.bool)
    per_level = _per_level_loss(loss, recon, target, masks, [1, 2, 2])["total"]
    pooled = loss(recon, target, masks)["total"]
    assert per_level == pytest.approx(0.5 * loss(recon[:1], target[:1], masks[:1])["total"])
    assert per_level > pooled  # pooling the batch would give the lone level-1 error a third of the weight
