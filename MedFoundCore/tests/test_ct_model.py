"""ct-v1's decoder trained for a few real steps on cached features of a real CT: the loss falls, two
prompts give two different masks, presence learns without touching the segmentation path, and a
run resumes from its checkpoint."""

from __future__ import annotations

import random

import pytest
import torch

from medfoundcore.data.datasets import find_cases
from medfoundcore.errors import Cancelled
from medfoundcore.progress import CancelToken
from medfoundcore.io import load_volume
from medfoundcore.models.ct_segmenter import CTSegmenterConfig, build_ct_segmenter
from medfoundcore.train.ct_features import cache_cases
from medfoundcore.train.ct_segment import CTTrainConfig, sample_crop, sample_loss, structure_values, text_table, train_ct_segmenter
from medfoundcore.vocabulary import load_vocabulary

SMALL = CTSegmenterConfig(width=32, image_width=4, refine_width=8)
WHOLE = (64, 64, 64)  # larger than the cached crop: the whole case


@pytest.fixture(scope="module")
def cached_crop(shared_data, tmp_path_factory):
    """40 axial slices (120 mm) of the abdominal training patient, cached through the real encoder."""
    root = tmp_path_factory.mktemp("ct-cache")
    (ref,) = find_cases([shared_data / "totalsegmentator" / "ts_ct_full_img.nii.gz"])
    image, labels = load_volume(ref.image_path), load_volume(ref.label_path, label=True)
    box = (slice(72, 112), slice(None), slice(None))
    crop_dir = tmp_path_factory.mktemp("crop")
    from medfoundcore.io import save_volume

    save_volume(image.crop(box), crop_dir / "abdomen_img.nii.gz")
    save_volume(labels.crop(box), crop_dir / "abdomen_lab.nii.gz")
    (crop_dir / "abdomen_labels.json").write_text(ref.label_path.with_name("ts_ct_full_labels.json").read_text())
    torch.set_num_threads(1)
    return cache_cases(find_cases([crop_dir / "abdomen_img.nii.gz"]), root)


def _dice(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(2 * (a & b).sum() / max(1, int(a.sum() + b.sum())))


def _fixed_sample(case, keys, seed=3):
    vocab = load_vocabulary()
    values = {k: v for k, v in structure_values(case, vocab).items() if k in keys}
    return sample_crop(case, values, [], CTTrainConfig(prompts=len(keys), negatives=0, focus=1.0, crop_zxy=WHOLE), random.Random(seed))


def test_loss_falls_and_prompts_separate(cached_crop, tmp_path, one_thread):
    (case,) = cached_crop
    keys = ["liver", "spleen"]
    sample = _fixed_sample(case, keys)
    assert sorted(sample.keys) == keys and all(sample.masks[i].sum() > 0 for i in range(2))
    text = text_table(sample.keys, load_vocabulary())
    cfg = CTTrainConfig(steps=150, lr=3e-3, prompts=2, negatives=0, crop_zxy=WHOLE, structures=keys, model=SMALL, checkpoint_every=1000)
    torch.manual_seed(0)
    before, _ = sample_loss(build_ct_segmenter(SMALL), sample, text, cfg)
    net, history = train_ct_segmenter(cached_crop, tmp_path / "run", cfg)
    with torch.no_grad():
        after, _ = sample_loss(net, sample, text, cfg)
        coarse = net.coarse_logits(net.pixel_features([f[None] for f in sample.features]), text)[0] > 0
    assert after.item() < 0.7 * before.item()
    frac = torch.nn.functional.avg_pool3d(sample.masks[None], net.upsample)[0] > 0.5
    own = [_dice(coarse[k], frac[k]) for k in range(2)]
    swapped = [_dice(coarse[k], frac[1 - k]) for k in range(2)]
    assert all(o > s + 0.3 for o, s in zip(own, swapped)), (own, swapped)  # each text matches its own organ, not the other
    assert history["steps_done"] == 150 and "liver" in history["keys"]


def test_presence_gradient_never_reaches_the_segmentation_path(cached_crop):
    (case,) = cached_crop
    sample = _fixed_sample(case, ["liver"])
    net = build_ct_segmenter(SMALL)
    pixel = net.pixel_features([f[None] for f in sample.features])
    net.presence_logits(pixel, text_table(["liver"], load_vocabulary())).sum().backward()
    assert all(p.grad is None for p in net.pixel_decoder.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.presence.parameters())


def test_resume_continues_exactly_where_it_stopped(cached_crop, tmp_path, one_thread):
    """Cancelled after 4 steps, resumed to 8 == 8 steps in one go (data order, optimiser and weights restored)."""
    cfg = CTTrainConfig(steps=8, model=SMALL, checkpoint_every=4)
    token = CancelToken()

    def stop_at_four(p):
        if p.done == 4:
            token.cancel()

    with pytest.raises(Cancelled):
        train_ct_segmenter(cached_crop, tmp_path / "a", cfg, progress=stop_at_four, cancel=token)
    resumed, history = train_ct_segmenter(cached_crop, tmp_path / "a", cfg)
    straight, _ = train_ct_segmenter(cached_crop, tmp_path / "b", cfg)
    assert history["steps_done"] == 8
    for (name, a), b in zip(resumed.state_dict().items(), straight.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name


def test_unions_train_on_their_parts(cached_crop):
    (case,) = cached_crop
    values = structure_values(case, load_vocabulary())
    assert sorted(values["kidney"]) == sorted(values["kidney_left"] + values["kidney_right"])
