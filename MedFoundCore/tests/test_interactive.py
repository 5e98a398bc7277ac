"""The interactive (click / box / stroke) model: prompt maps mean what they say, simulated clicks land
where a user would click, a small model trained for real steps on real cached features learns, and
the session on another patient's CT answers on the input grid in any orientation, reruns only the
decoder for a further click, and refuses prompts outside the image. (No Dice threshold here: the
small model is trained on one patient; the shipped model is tested in test_interactive_shipped.py.)"""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from medfoundcore.cli import main
from medfoundcore.data import interaction
from medfoundcore.errors import InputError
from medfoundcore.inference.interactive import Interaction, InteractiveSession, load_interactive_model
from medfoundcore.inference.windows import FEATURES
from medfoundcore.io import Volume, load_volume, save_volume
from medfoundcore.metrics import dice
from medfoundcore.models.interactive_segmenter import InteractiveConfig
from medfoundcore.models.prompt_encoder import CHANNELS, VOXEL_MM_ZXY, Prompts, prompt_maps, stroke_points
from medfoundcore.preprocess import resample_onto
from medfoundcore.train.interactive import (
    InteractiveTrainConfig, interactive_targets, sample_loss, sample_target, ship_interactive, train_interactive,
)
from medfoundcore.vocabulary import load_vocabulary

SMALL = InteractiveConfig(width=16, prompt_width=8, unet_widths=(8, 12, 16), image_width=4, refine_width=8)


# ------------------------------------------------------------------------------------ prompt maps
def test_prompt_maps_put_each_prompt_where_it_acts():
    prompts = Prompts([[10, 20, 20], [10, 60, 60]], [True, False], box=[[2, 4, 4], [9, 27, 27]])
    previous = torch.zeros(8, 16, 16)
    previous[1, 2, 3] = 0.5
    maps = prompt_maps(prompts, (8, 16, 16), (2, 4, 4), previous)
    assert maps.shape == (len(CHANNELS), 8, 16, 16)
    near = dict(zip(CHANNELS, maps))
    # the include point (voxel 10, 20, 20 at full resolution) lies in 6 mm voxel (5, 5, 5)
    assert np.unravel_index(int(near["include_near"].argmax()), (8, 16, 16)) == (5, 5, 5)
    assert np.unravel_index(int(near["exclude_near"].argmax()), (8, 16, 16)) == (5, 15, 15)
    assert near["include_far"].min() > 0  # the long-range map reaches everywhere
    assert near["box"][1:5, 1:7, 1:7].min() == 1 and near["box"][6:].max() == 0 and near["box"][:, 8:].max() == 0
    assert near["previous"][1, 2, 3] == 0.5 and near["has_previous"].min() == 1
    none = prompt_maps(Prompts([[10, 20, 20]], [True]), (8, 16, 16), (2, 4, 4))
    assert none[CHANNELS.index("exclude_near")].max() == 0 and none[CHANNELS.index("has_previous")].max() == 0


def test_a_stroke_becomes_points_every_3_mm_along_it():
    points = stroke_points(np.array([[5, 0, 0], [5, 0, 20], [5, 10, 20]]))
    steps = np.linalg.norm(np.diff(points * VOXEL_MM_ZXY, axis=0), axis=1)
    assert steps.max() <= 3.0 + 1e-6 and np.allclose(points[0], [5, 0, 0]) and np.allclose(points[-1], [5, 10, 20])


# ------------------------------------------------------------------------------ simulated clicks
def test_simulated_clicks_land_where_a_user_would_click():
    mask = np.zeros((20, 40, 40), dtype=bool)
    mask[5:15, 10:30, 10:30] = True
    centre = interaction.centre_point(mask, VOXEL_MM_ZXY)
    assert mask[tuple(centre.astype(int))] and 8 <= centre[0] <= 11 and 17 <= centre[1] <= 22
    missed = mask.copy()
    missed[:, 10:20] = False  # half the structure missed → include click in the missed half
    point, include = interaction.corrective_click(mask, missed, VOXEL_MM_ZXY)
    assert include and mask[tuple(point.astype(int))] and not missed[tuple(point.astype(int))]
    leak = mask.copy()
    leak[5:15, 30:38, 10:30] = True  # a leak beside it → exclude click in the leak
    point, include = interaction.corrective_click(mask, leak, VOXEL_MM_ZXY)
    assert not include and leak[tuple(point.astype(int))] and not mask[tuple(point.astype(int))]
    assert interaction.corrective_click(mask, mask, VOXEL_MM_ZXY) is None
    cut = np.zeros((20, 40, 40), dtype=bool)
    cut[10:, 10:30, 10:30] = True  # cut by the image's last slice: its middle is inside, not on the cut
    assert 13 <= interaction.centre_point(cut, VOXEL_MM_ZXY)[0] <= 16
    box = interaction.jittered_box(mask, VOXEL_MM_ZXY, random.Random(0), jitter_mm=3.0)
    assert np.all(np.abs(box[0] - [5, 10, 10]) <= [1, 2, 2]) and np.all(np.abs(box[1] - [14, 29, 29]) <= [1, 2, 2])


def test_the_held_out_classes_are_never_training_targets(cached_crop):
    (case,) = cached_crop
    targets = interactive_targets(case, load_vocabulary())
    assert "liver" in targets and "kidney_left" in targets
    assert not any(k.startswith(("spleen", "parotid_gland", "autochthon")) for k in targets)


# ------------------------------------------------------------------------------ training
@pytest.fixture(scope="module")
def trained(cached_crop, tmp_path_factory):
    """A small interactive decoder trained 120 real steps on the liver of the cached abdominal crop
    (first clicks inside it, corrective clicks after its own predictions); the loss on fixed liver
    samples before and after, and the shipped model folder."""
    from medfoundcore.models.interactive_segmenter import build_interactive_segmenter

    (case,) = cached_crop
    cfg = InteractiveTrainConfig(steps=120, lr=3e-3, crop_zxy=(16, 24, 24), model=SMALL, checkpoint_every=1000, structures=["liver"])
    targets = {"liver": interactive_targets(case, load_vocabulary())["liver"]}
    rng = random.Random(5)
    samples = [s for s in (sample_target(case, targets, cfg, rng) for _ in range(8)) if s is not None][:4]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)

    def loss(net) -> float:
        with torch.no_grad():
            return float(np.mean([sample_loss(net, s, cfg, random.Random(i))[0].item() for i, s in enumerate(samples)]))

    torch.manual_seed(0)
    before = loss(build_interactive_segmenter(SMALL))
    net, history = train_interactive(cached_crop, tmp_path_factory.mktemp("run"), cfg)
    after = loss(net)
    torch.set_num_threads(threads)
    model_dir = ship_interactive(net, history, "click-test", tmp_path_factory.mktemp("model") / "click-test", training_data={"subjects": ["ts_ct_full"]})
    return history, before, after, model_dir


def test_training_steps_lower_the_loss(trained):
    history, before, after, _ = trained
    assert history["steps_done"] == 120 and history["structures"] == ["liver"]
    assert len(history["cases"]) == 1 and after < 0.7 * before


@pytest.fixture(scope="module")
def other_patient(shared_data):
    """Another patient's CT (held out of every model): TotalSegmentator's 20-slice abdominal example."""
    root = shared_data / "totalsegmentator"
    return load_volume(root / "ts_ct_dicom20_img.nii.gz"), load_volume(root / "ts_ct_dicom20_lab.nii.gz", label=True)


def _spleen_click(image: Volume, labels: Volume) -> np.ndarray:
    centre = interaction.centre_point(labels.array == 1, labels.spacing[::-1])
    return image.index_to_ras(centre[::-1][None])[0]


def test_a_further_click_reruns_the_decoder_only(trained, other_patient, one_thread):
    image, labels = other_patient
    session = InteractiveSession(image, str(trained[3]), "cpu")
    ras = _spleen_click(image, labels)
    first = session.segment(Interaction([ras], [True]))
    misses = FEATURES.misses
    second = session.segment(Interaction([ras, ras + [0, 10, 0]], [True, False]), "last")
    assert FEATURES.misses == misses  # the window's features came from the cache
    assert first.shape == second.shape == image.shape and first.array.dtype == np.uint8
    assert set(np.unique(second.array)) <= {0, 1}


def test_the_same_mask_in_any_orientation(trained, other_patient, one_thread):
    """Axes permuted and flipped (the same physical image): the mask, brought back, is the same."""
    image, labels = other_patient
    ras = _spleen_click(image, labels)
    box = [ras - [40, 40, 12], ras + [40, 40, 12]]
    turned = Volume.from_sitk(sitk.Flip(sitk.PermuteAxes(image.to_sitk(), [1, 0, 2]), [True, False, True]))
    first = InteractiveSession(image, str(trained[3]), "cpu").segment(Interaction([ras], [True], box=box))
    second = InteractiveSession(turned, str(trained[3]), "cpu").segment(Interaction([ras], [True], box=box))
    assert np.allclose(first.affine_ras, image.affine_ras) and second.shape == turned.shape
    back = resample_onto(second, first, label=True).array > 0
    assert first.array.sum() > 0 and dice(back, first.array > 0) > 0.98


def test_an_exclude_point_removes_what_it_touches(trained, other_patient, one_thread):
    image, labels = other_patient
    ras = _spleen_click(image, labels)
    box = [ras - [40, 40, 12], ras + [40, 40, 12]]
    session = InteractiveSession(image, str(trained[3]), "cpu")
    first = session.segment(Interaction([ras], [True], box=box)).array > 0
    inside = np.argwhere(first)
    far = inside[np.argmax(np.linalg.norm((inside - inside.mean(0)) * image.spacing[::-1], axis=1))]  # a voxel at the mask's rim
    excluded = image.index_to_ras(far[::-1][None])[0]
    second = session.segment(Interaction([ras, excluded], [True, False], box=box), "last").array > 0
    assert first[tuple(far)] and not second[tuple(far)]
    assert second.sum() < first.sum()


def test_prompts_outside_the_image_or_without_an_include_are_refused(trained, other_patient):
    image, labels = other_patient
    session = InteractiveSession(image, str(trained[3]), "cpu")
    with pytest.raises(InputError, match="outside the image"):
        session.segment(Interaction([(5000.0, 0.0, 0.0)], [True]))
    with pytest.raises(InputError, match="include point"):
        Interaction([_spleen_click(image, labels)], [False])
    with pytest.raises(InputError, match="mask, 'last' or None"):
        session.segment(Interaction([_spleen_click(image, labels)], [True]), previous="previous")


def test_cli_click_with_a_box_and_a_stroke_and_the_serve_loop(trained, other_patient, tmp_path, capsys, monkeypatch, one_thread):
    image, labels = other_patient
    path = tmp_path / "ct.nrrd"
    save_volume(image, path)
    r, a, s = _spleen_click(image, labels)
    out = tmp_path / "mask.nii.gz"
    box = f"{r - 30},{a - 30},{s - 8},{r + 30},{a + 30},{s + 8}"
    code = main(["click", str(path), f"--point={r},{a},{s}", f"--box={box}", f"--scribble={r},{a},{s};{r + 5},{a},{s}:+",
                 "-o", str(out), "--model", str(trained[3]), "--device", "cpu", "--quiet"])
    assert code == 0 and load_volume(out, label=True).shape == image.shape
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["output"] == str(out)
    assert main(["click", str(path), f"--point={r},{a},{s}", "-o", str(out), "--model", str(trained[3]), "--quiet"]) == 2  # no overwrite
    requests = [
        {"id": 1, "points": [[r, a, s, True]], "output": str(tmp_path / "1.nrrd")},
        {"id": 2, "points": [[r, a, s, True], [r, a + 10, s, False]], "previous": "last", "output": str(tmp_path / "2.nrrd")},
        {"id": 3, "points": [[r, a, s, False]], "output": str(tmp_path / "3.nrrd")},
        {"command": "quit"},
    ]
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(json.dumps(q) for q in requests) + "\n"))
    capsys.readouterr()
    assert main(["click", str(path), "--serve", "--model", str(trained[3]), "--device", "cpu"]) == 0
    answers = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    final = [m for m in answers if "id" in m]
    assert answers[0]["ready"] and [m["id"] for m in final] == [1, 2, 3]
    assert "output" in final[0] and "output" in final[1] and "include point" in final[2]["error"]
    assert load_volume(tmp_path / "2.nrrd", label=True).shape == image.shape
    assert load_interactive_model.cache_info().currsize >= 1


def test_the_fast_convolution_gives_the_same_numbers_and_gradients_as_torchs():
    from medfoundcore.models.fast_conv import Conv3d

    for kernel, padding, shape in (((3, 3, 3), 1, (1, 24, 16, 32, 32)), ((1, 3, 3), (0, 1, 1), (1, 11, 16, 64, 64)), ((3, 3, 3), 1, (1, 64, 24, 40, 40))):
        torch.manual_seed(0)
        fast, plain = Conv3d(shape[1], 8, kernel, padding=padding), torch.nn.Conv3d(shape[1], 8, kernel, padding=padding)
        plain.load_state_dict(fast.state_dict())
        x = torch.randn(*shape)
        a, b = fast(x), plain(x)
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-4)
        a.square().mean().backward()
        b.square().mean().backward()
        assert torch.allclose(fast.weight.grad, plain.weight.grad, atol=1e-5)


def test_serve_runs_the_intensity_engine_too(shared_data, tmp_path, capsys, monkeypatch, one_thread):
    import io

    from medfoundcore.data.datasets import find_cases

    (ref,) = find_cases([shared_data / "openkbp" / "test_pt_243_img.nii.gz"])
    labels = load_volume(ref.label_path, label=True)
    centre = interaction.centre_point(labels.array == 1, labels.spacing[::-1])  # brainstem
    r, a, s = labels.index_to_ras(centre[::-1][None])[0]
    requests = [{"id": 1, "points": [[r, a, s, True]], "output": str(tmp_path / "1.nrrd")},
                {"id": 2, "points": [[r, a, s, True]], "box": [[r, a, s], [r + 9, a + 9, s + 9]], "output": str(tmp_path / "2.nrrd")}]
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(json.dumps(q) for q in requests) + "\n"))
    assert main(["click", str(ref.image_path), "--serve", "--model", "intensity"]) == 0
    answers = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    final = {m["id"]: m for m in answers if "id" in m}
    assert answers[0]["model"] == "intensity" and final[1]["voxels"] > 0 and "points only" in final[2]["error"]


def test_bench_reports_join_case_by_case_arms_onto_the_others():
    """The slow intensity arm runs case by case: its reports add up, then merge with the other arms'
    on the pairs both scored (a pair the intensity arm never reached is left out)."""
    from medfoundcore.bench.click import joined

    def report(arm, pairs, clicks):
        return {"model": "m", "clicks": clicks, "rows": [{"case": c, "name": n, "class": "unseen", arm: [0.5] * clicks} for c, n in pairs]}

    learned = report("learned", [("a", "spleen"), ("b", "spleen"), ("c", "liver")], 5)
    learned["rows"][0]["text"] = 0.7
    merged = joined([learned, report("intensity", [("a", "spleen")], 3), report("intensity", [("b", "spleen")], 3)])
    assert [(r["case"], sorted(k for k in r if k in ("learned", "intensity", "text"))) for r in merged["rows"]] == [
        ("a", ["intensity", "learned", "text"]), ("b", ["intensity", "learned"])]
    assert merged["clicks"] == 3 and merged["summary"]["unseen"]["pairs"] == 2


def test_the_default_on_an_mri_is_the_intensity_engine(shared_data):
    """interactive-v1 is trained on CT; on an MRI ``default`` is the classical engine, and a box says
    which model to choose for it."""
    from medfoundcore import click
    from medfoundcore.inference.interactive import IntensitySession, open_session

    mri = load_volume(shared_data / "totalsegmentator" / "ts_mr_sm_img.nii.gz")
    assert isinstance(open_session(mri, "default", "cpu"), IntensitySession)
    centre = tuple(mri.index_to_ras(np.array(mri.shape[::-1])[None] / 2)[0])
    with pytest.raises(InputError, match="default for an MRI.*--model interactive-v1"):
        click(mri, [centre], box=[centre, centre])
