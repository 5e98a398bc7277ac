"""3DME dual-branch encoder: shapes, position encoding (eq. 1), both branches trained, config round trip."""

from __future__ import annotations

import math

import pytest
import torch

from medfoundcore.errors import InputError
from medfoundcore.models.backbones.encoder3d import (
    Encoder3DConfig,
    build_encoder3d,
    build_mae3d,
    pad_to_patch_multiple,
    sincos_1d,
    sincos_3d,
)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_encoder3d("tiny").eval()


def test_tiny_preset_shapes_on_cubic_and_non_cubic_crops(tiny) -> None:
    cfg = tiny.cfg
    for shape in [(32, 32, 32), (16, 40, 24)]:
        out = tiny(torch.randn(2, 1, *shape))
        grid = tuple(s // 8 for s in shape)
        n = math.prod(grid)
        assert out.grid == grid and out.tokens.shape == (2, n, cfg.dim)
        assert len(out.hidden_states) == len(cfg.fusion_layers)
        assert all(h.shape == (2, n, cfg.dim) for h in out.hidden_states)
        assert [tuple(f.shape[1:]) for f in out.conv_features] == [
            (c, *(s // 2**i for s in shape)) for i, c in enumerate(cfg.conv_channels, start=1)
        ]
        assert out.fused_conv.shape == (2, cfg.dim, *grid)
        assert out.token_map().shape == (2, cfg.dim, *grid)


def test_non_multiple_input_is_rejected_and_padding_helper_fixes_it(tiny) -> None:
    x = torch.randn(1, 1, 20, 32, 30)
    with pytest.raises(InputError, match="multiples of the patch size 8"):
        tiny(x)
    padded, pads = pad_to_patch_multiple(x, 8)
    assert padded.shape[-3:] == (24, 32, 32) and pads == (4, 0, 2)
    assert torch.equal(padded[..., :20, :32, :30], x)
    assert tiny(padded).grid == (3, 4, 4)


def test_sum_mode_is_eq1_and_separable() -> None:
    dim = 12
    pe = sincos_3d((3, 4, 5), dim, "sum").view(3, 4, 5, dim)
    z, y, x = 2, 1, 3
    hand = []
    for k in range(dim):
        w = 10000 ** (-2 * (k // 2) / dim)
        f = math.sin if k % 2 == 0 else math.cos
        hand.append(sum(f(d * w) for d in (x, y, z)))
    torch.testing.assert_close(pe[z, y, x], torch.tensor(hand), atol=1e-6, rtol=0)
    # separable: moving along z changes the code by the same amount whatever (y, x) is
    diff = pe[2] - pe[0]
    torch.testing.assert_close(diff, diff[:1, :1].expand_as(diff), atol=1e-6, rtol=0)
    # ...and, as printed, eq. 1 cannot tell axes apart
    torch.testing.assert_close(pe[1, 2, 3], pe[2, 1, 3])


def test_concat_mode_gives_each_axis_its_own_channels() -> None:
    dim = 20  # 2·(20//6) = 6 channels per axis, 2 zero channels of padding
    pe = sincos_3d((3, 4, 5), dim, "concat").view(3, 4, 5, dim)
    torch.testing.assert_close(pe[2, 1, 3, 0:6], sincos_1d(torch.tensor([2]), 6)[0])
    torch.testing.assert_close(pe[2, 1, 3, 6:12], sincos_1d(torch.tensor([1]), 6)[0])
    torch.testing.assert_close(pe[2, 1, 3, 12:18], sincos_1d(torch.tensor([3]), 6)[0])
    assert (pe[..., 18:] == 0).all()
    assert not torch.allclose(pe[1, 2, 3], pe[2, 1, 3])  # axes distinguishable
    # analytic → a larger crop's code extends the smaller one exactly (no interpolation)
    torch.testing.assert_close(sincos_3d((6, 6, 6), dim).view(6, 6, 6, dim)[:3, :4, :5], pe)


def test_gradients_reach_both_branches_and_the_fusion() -> None:
    torch.manual_seed(0)
    enc = build_encoder3d("tiny").train()
    out = enc(torch.randn(2, 1, 32, 32, 32))
    out.tokens.pow(2).mean().backward()
    vit = enc.patch_embed.weight.grad
    conv = enc.conv_branch.stages[0][0].weight.grad
    fusion = enc.fusions["1"].vit_from_conv.offsets.weight.grad
    assert vit is not None and vit.abs().sum() > 0
    assert conv is not None and conv.abs().sum() > 0, "Conv3D branch must be trained through the fusion"
    assert fusion is not None and fusion.abs().sum() > 0


def test_gradient_checkpointing_gives_the_same_outputs_and_gradients() -> None:
    torch.manual_seed(0)
    mae = build_mae3d(Encoder3DConfig.preset("tiny", depth=2, fusion_layers=(2,)))
    x = torch.randn(1, 1, 16, 16, 16)
    mask = torch.zeros(16, 16, 16, dtype=torch.bool)
    mask[:8] = True
    mae.eval()  # BatchNorm in eval: both passes see identical statistics
    y1 = mae(x, mask)
    y1.sum().backward()
    g1 = mae.encoder.blocks[0].attn.qkv.weight.grad.clone()
    mae.zero_grad()
    mae.encoder.grad_checkpointing = True
    mae.encoder.training = True  # checkpointing is active in training mode only; BN children stay eval
    y2 = mae(x, mask)
    y2.sum().backward()
    torch.testing.assert_close(y1, y2)
    torch.testing.assert_close(g1, mae.encoder.blocks[0].attn.qkv.weight.grad)


def test_config_round_trip_presets_and_validation() -> None:
    tiny = Encoder3DConfig.preset("tiny")
    again = Encoder3DConfig.from_dict(tiny.to_dict())
    assert again == tiny
    enc_a, enc_b = build_encoder3d(tiny.to_dict()), build_encoder3d(again)
    enc_b.load_state_dict(enc_a.state_dict())  # same architecture → same keys and shapes
    assert (enc_b.img_size, enc_b.patch_size, enc_b.dim) == (64, 8, 96)
    paper = Encoder3DConfig.preset("paper")
    assert (paper.img_size, paper.dim, paper.depth, paper.heads, paper.fusion_layers) == (128, 768, 12, 12, (3, 6, 9, 12))
    with pytest.raises(InputError, match="fusion_layers"):
        Encoder3DConfig.preset("tiny", fusion_layers=(5,))
    with pytest.raises(InputError, match="conv_channels"):
        Encoder3DConfig(patch_size=16)
    with pytest.raises(InputError, match="unknown keys"):
        Encoder3DConfig.from_dict({"width": 3})
    with pytest.raises(InputError, match="preset"):
        Encoder3DConfig.preset("huge")


def test_nemesis_tokens_read_the_whole_crop_and_stay_out_of_the_patch_tokens() -> None:
    torch.manual_seed(0)
    encoder = build_encoder3d(Encoder3DConfig.preset("tiny", img_size=32, context_tokens=3)).eval()
    x = torch.randn(2, 1, 32, 32, 32)
    out = encoder(x)
    assert out.tokens.shape == (2, 64, encoder.cfg.dim) and out.context.shape == (2, 3, encoder.cfg.dim)
    assert all(h.shape == (2, 64, encoder.cfg.dim) for h in out.hidden_states)
    # the tokens are global: changing one corner of the crop changes every NEMESIS token ...
    y = x.clone()
    y[:, :, :8, :8, :8] = 0
    assert (encoder(y).context - out.context).abs().amax(dim=-1).min() > 1e-4
    # ... and the patch tokens depend on them (they attend to the NEMESIS tokens at every layer)
    with torch.no_grad():
        encoder.context_tokens.add_(1.0)
    assert not torch.allclose(encoder(x).tokens, out.tokens)
    # the default is plain 3DME: no extra parameters, so shipped encoders load unchanged
    assert build_encoder3d("tiny").context_tokens is None and build_encoder3d("tiny")(x).context is None
    with pytest.raises(InputError, match="context_tokens"):
        Encoder3DConfig.preset("tiny", context_tokens=-1)
