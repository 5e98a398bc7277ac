"""PromptedSegmenter: shapes for P prompts, features encoded once and shared, ISD gating and gradient cut-off."""

from __future__ import annotations

import pytest
import torch

from medfoundcore.errors import InputError
from medfoundcore.models.prompted_segmenter import (
    PromptedSegmenter,
    SegmenterConfig,
    SegmenterOutput,
    build_segmenter,
)


def _model(**overrides) -> PromptedSegmenter:
    torch.manual_seed(0)
    return build_segmenter(SegmenterConfig(preset="tiny", **overrides)).eval()


def _inputs(b: int = 2, p: int = 3, h: int = 64, w: int = 96):
    g = torch.Generator().manual_seed(1)
    images = torch.rand(b, 3, h, w, generator=g) * 255
    text = torch.nn.functional.normalize(torch.randn(b, p, 384, generator=g), dim=-1)
    return images, text


def test_output_shapes_for_several_prompts_and_odd_sizes():
    model = _model(edge_queries=2)
    images, text = _inputs(b=2, p=3, h=70, w=90)  # not multiples of 32: padded inside, cropped back
    with torch.no_grad():
        out = model(images, text)
    assert out.mask_logits.shape == (2, 3, 70, 90)
    assert out.edge_logits.shape == (2, 3, 70, 90)
    assert out.presence_logits.shape == (2, 3)
    assert torch.isfinite(out.mask_logits).all() and torch.isfinite(out.presence_logits).all()


def test_image_features_are_computed_once_and_shared_by_all_prompts():
    model = _model()
    images, text = _inputs(b=2, p=4)
    calls = []
    model.encoder.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        features = model.encode_image(images)
        joint = model.decode(features, text)
        single = [model.decode(features, text[:, j : j + 1]) for j in range(4)]
    assert len(calls) == 1  # decode never re-runs the image encoder
    for j, out in enumerate(single):  # batching P prompts equals decoding each prompt alone
        torch.testing.assert_close(joint.mask_logits[:, j], out.mask_logits[:, 0], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(joint.presence_logits[:, j], out.presence_logits[:, 0], rtol=1e-4, atol=1e-4)
    # different prompts give different masks on the same image
    assert not torch.allclose(joint.mask_logits[:, 0], joint.mask_logits[:, 1])


def test_prompts_share_each_images_memory_projection():
    """The decoder's cross-attention sees each image's features once (B), not once per prompt (B*P)."""
    model = _model()
    images, text = _inputs(b=2, p=5)
    memory_batches = []
    for layer in model.decoder.layers:
        layer.cross.register_forward_pre_hook(lambda m, args, kwargs: memory_batches.append(args[1].shape[0]), with_kwargs=True)
    with torch.no_grad():
        model(images, text)
    assert memory_batches == [2] * model.decoder.num_layers


def test_final_masks_are_gated_by_presence():
    mask_logits = torch.full((1, 2, 4, 4), 5.0)
    out = SegmenterOutput(mask_logits, torch.tensor([[3.0, -3.0]]))
    masks = PromptedSegmenter.final_masks(out)
    assert masks.dtype == torch.bool
    assert masks[0, 0].all() and not masks[0, 1].any()


def test_without_isd_presence_is_the_most_confident_pixel():
    model = _model(use_isd=False)
    assert model.isd is None
    images, text = _inputs(b=1, p=2)
    with torch.no_grad():
        out = model(images, text)
    torch.testing.assert_close(out.presence_logits, out.mask_logits.flatten(2).amax(2), rtol=1e-3, atol=1e-3)


def _grad_norms(module: torch.nn.Module) -> float:
    return sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None)


@pytest.mark.parametrize("stop_gradient", [True, False])
def test_isd_stop_gradient_blocks_presence_gradients_into_segmentation_path(stop_gradient):
    model = _model(isd_stop_gradient=stop_gradient).train()
    images, text = _inputs(b=2, p=2)
    out = model(images, text)
    out.presence_logits.sum().backward()  # a presence-only loss
    assert _grad_norms(model.isd) > 0
    segmentation_grad = _grad_norms(model.encoder) + _grad_norms(model.fpn) + _grad_norms(model.decoder)
    if stop_gradient:
        assert segmentation_grad == 0.0
    else:
        assert segmentation_grad > 0.0


def test_mask_loss_does_not_train_the_isd():
    model = _model().train()
    images, text = _inputs(b=1, p=2)
    model(images, text).mask_logits.mean().backward()
    assert _grad_norms(model.isd) == 0.0 and _grad_norms(model.encoder) > 0


def test_config_round_trip_rebuilds_identical_network():
    config = SegmenterConfig(preset="tiny", edge_queries=1, isd_stop_gradient=False)
    data = config.to_dict()
    assert data["hidden_dim"] == 64 and data["num_queries"] == 8  # preset defaults are filled in
    rebuilt = build_segmenter(dict(data))
    assert rebuilt.config == config
    original = build_segmenter(config)
    rebuilt.load_state_dict(original.state_dict())  # same architecture, strict load
    with pytest.raises(InputError, match="unknown keys"):
        SegmenterConfig.from_dict({**data, "bogus": 1})
    with pytest.raises(InputError, match="preset"):
        SegmenterConfig(preset="huge")


def test_bad_inputs_are_reported():
    model = _model()
    with pytest.raises(InputError, match=r"\[B, 3, H, W\]"):
        model.encode_image(torch.zeros(1, 1, 64, 64))
    features = model.encode_image(torch.zeros(2, 3, 64, 64))
    with pytest.raises(InputError, match="text embeddings"):
        model.decode(features, torch.zeros(1, 2, 384))


def test_presets_fit_the_shipping_budget():
    sizes = {p: build_segmenter({"preset": p}).num_parameters()["total"] for p in ("tiny", "small")}
    assert sizes["tiny"] < 2_000_000 < sizes["small"] < 15_000_000 / 2  # fp16 starter model <= 15 MB


def test_weights_of_the_post_norm_isd_layout_still_load():
    legacy = build_segmenter({"preset": "tiny", "isd_pre_norm": False})
    config = legacy.config.to_dict()
    del config["isd_pre_norm"]  # cards written before the field existed
    model = build_segmenter(config)
    assert model.config.isd_pre_norm
    model.load_state_dict(legacy.state_dict())
    assert not model.config.isd_pre_norm
    images, text = _inputs(b=1, p=2)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(images, text).presence_logits, legacy.eval()(images, text).presence_logits)


def test_reduced_precision_autocast_gives_float32_outputs():
    """The CUDA path runs under bf16/fp16 autocast; CPU bf16 autocast exercises the same dtype handling."""
    model = _model(edge_queries=1)
    images, text = _inputs(b=1, p=2)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(images, text)
    for t in (out.mask_logits, out.presence_logits, out.edge_logits):
        assert t.dtype == torch.float32 and torch.isfinite(t).all()


def test_weights_without_text_film_still_load():
    """Models trained before the text FiLM path existed load and run as they were trained."""
    legacy = build_segmenter({"preset": "tiny", "image_size": 64, "text_film": False})
    model = build_segmenter({"preset": "tiny", "image_size": 64})
    assert model.decoder.text_film is not None
    model.load_state_dict(legacy.state_dict())
    assert model.decoder.text_film is None and not model.config.text_film
    images, text = torch.rand(1, 3, 64, 64) * 255, torch.randn(1, 2, 384)
    with torch.no_grad():
        torch.testing.assert_close(model(images, text).mask_logits, legacy(images, text).mask_logits)
