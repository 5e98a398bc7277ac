"""Fine-tuning heads on the shipped encoder with real cases: the loss falls, the model registers and reloads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from medfoundcore.cli import main as cli_main
from medfoundcore.data.datasets import find_cases
from medfoundcore.errors import InputError, ModelError
from medfoundcore.models.backbones.encoder3d import load_encoder
from medfoundcore.registry import list_models
from medfoundcore.train.finetune import FinetuneConfig, finetune, load_finetuned, predict_segmentation


pytestmark = pytest.mark.usefixtures("one_thread")


def _hippocampus(shared_data: Path, n: int) -> list:
    refs = sorted(find_cases([shared_data / "msd_hippocampus"]), key=lambda r: r.case_id)[:n]
    return [r.load() for r in refs]


def test_segmentation_head_learns_registers_and_predicts(shared_data: Path, medfound_home: Path) -> None:
    cases = _hippocampus(shared_data, 3)
    config = FinetuneConfig(epochs=4, steps_per_epoch=4, batch_size=2, crop_size=32, spacing_mm=1.0, lr=3e-3, device="cpu")
    losses: list[float] = []
    directory = finetune(cases[:2], config, "encoder-v1", "hippo-test", on_metrics=lambda m: losses.append(m["loss"]))
    assert np.mean(losses[-4:]) < 0.85 * np.mean(losses[:4]), losses

    installed = {m.name: m for m in list_models(kind="finetuned3d")}
    assert "hippo-test" in installed and installed["hippo-test"].path == directory
    model, card = load_finetuned("hippo-test", "cpu")
    assert [s["value"] for s in card.structures] == [1, 2]
    assert card.training_data["base_encoder"] == "encoder-v1"
    # the frozen encoder kept the pretrained weights
    base, _ = load_encoder("encoder-v1")
    assert all(torch.equal(a, b.to(a.dtype)) for a, b in zip(model.encoder.state_dict().values(), base.state_dict().values()))

    test_case = cases[2]
    prediction = predict_segmentation("hippo-test", test_case.image, device="cpu")
    assert prediction.shape == test_case.image.shape and np.allclose(prediction.affine_ras, test_case.image.affine_ras)
    assert set(np.unique(prediction.array)) <= {0, 1, 2}
    foreground = prediction.array > 0
    assert foreground.any() and foreground.mean() < 0.5  # found something, not everything


def test_classification_head_on_modality_and_bad_inputs(shared_data: Path, medfound_home: Path) -> None:
    folder = shared_data / "totalsegmentator"
    cases = [r.load() for r in find_cases([folder / "ts_ct_sm_img.nii.gz", folder / "ts_mr_sm_img.nii.gz"])]
    config = FinetuneConfig(task="classification", epochs=3, steps_per_epoch=3, batch_size=2, crop_size=32, spacing_mm=4.0, lr=3e-3, device="cpu")
    losses: list[float] = []
    directory = finetune(cases, config, "encoder-v1", "ct-vs-mr", on_metrics=lambda m: losses.append(m["loss"]))
    # Nine steps on random crops of two volumes do not separate CT from MRI: no loss decrease is asserted.
    # (One used to be: it held only while smaller volumes were padded at the crop's end, and the head read
    # the padding's extent, not the image: preprocess.pad_randomly.)
    assert len(losses) == 9 and np.isfinite(losses).all()
    model, card = load_finetuned(directory)
    assert [s["name"] for s in card.structures] == ["CT", "MRI"]
    base, _ = load_encoder("encoder-v1")
    assert all(torch.equal(a, b.to(a.dtype)) for a, b in zip(model.encoder.state_dict().values(), base.state_dict().values()))
    with pytest.raises(InputError, match="classifier"):
        predict_segmentation(directory, cases[0].image, device="cpu")
    with pytest.raises(ModelError, match="not a pretrained 3D encoder"):
        finetune(cases, config, directory)
    with pytest.raises(InputError, match="at least two classes"):
        finetune(cases[:1], config, "encoder-v1", "one-class")


def test_cli_finetune_installs_the_model(shared_data: Path, medfound_home: Path) -> None:
    case = shared_data / "msd_hippocampus" / "hippocampus_001_img.nii.gz"
    code = cli_main(["finetune", str(case), "--out-name", "cli-hippo", "--epochs", "1", "--steps-per-epoch", "2",
                     "--crop-size", "32", "--spacing", "1", "--batch-size", "1", "--device", "cpu", "--quiet"])
    assert code == 0
    assert "cli-hippo" in {m.name for m in list_models(kind="finetuned3d")}
    assert cli_main(["finetune", str(case), "--out-name", "cli-hippo", "--epochs", "1", "--quiet"]) == 2  # never replaces
