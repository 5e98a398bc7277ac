"""Training the text-prompted segmenter on real data: the loss falls, checkpoints resume, cancel is clean."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medfoundcore.data.datasets import find_cases
from medfoundcore.errors import Cancelled, InputError
from medfoundcore.progress import CancelToken
from medfoundcore.registry import load_model
from medfoundcore.train.checkpoint import latest_checkpoint, load_checkpoint
from medfoundcore.train.segment import PreparedCase, SampleBuilder, TrainConfig, train_segmenter


def _tiny(**overrides) -> TrainConfig:
    base = dict(
        preset="tiny", image_size=64, fve_k=1, steps=40, lr=2e-3, warmup_steps=5, batch_size=4,
        prompts_per_image=2, synth_fraction=0.0, augment=False, device="cpu", checkpoint_every=5,
        log_every=1, seed=0, structures=["liver", "spleen"],
    )
    base.update(overrides)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def ct_case(shared_data):
    (ref,) = find_cases([shared_data / "totalsegmentator" / "ts_ct_sm_img.nii.gz"])
    return ref.load()


def test_loss_falls_and_model_is_registered(ct_case, tmp_path, medfound_home):
    torch.manual_seed(0)
    history: list[dict] = []
    directory = train_segmenter([ct_case], _tiny(), "tiny-test", tmp_path / "run", on_metrics=history.append)
    losses = [m["loss"] for m in history]
    assert len(losses) == 40
    assert np.mean(losses[-8:]) < 0.8 * np.mean(losses[:8])
    state, card = load_model(directory)
    assert card.kind == "prompted-segmenter"
    assert {s["key"] for s in card.structures} == {"liver", "spleen"}
    assert card.training_data["cases"] == ["ts_ct_sm"]
    assert card.config["model"]["image_size"] == 64
    assert all(t.dtype == torch.float32 for t in state.values() if t.is_floating_point())  # stored fp16, loaded fp32


def test_resume_after_interruption_continues_from_checkpoint(ct_case, tmp_path, medfound_home):
    token = CancelToken()
    seen: list[int] = []

    def stop_at_12(m: dict) -> None:
        seen.append(m["step"])
        if m["step"] == 12:
            token.cancel()

    config = _tiny(steps=20)
    with pytest.raises(Cancelled):
        train_segmenter([ct_case], config, "resumed", tmp_path / "run", cancel=token, on_metrics=stop_at_12)
    last = latest_checkpoint(tmp_path / "run")
    assert load_checkpoint(last)["step"] == 10  # checkpoints every 5 steps; step 12 was never saved
    assert not (medfound_home / "models" / "resumed").exists()  # cancelled: no model registered

    with pytest.raises(InputError, match=r"different run \(lr 0.002 -> 0.001; seed 0 -> 1\)"):
        train_segmenter([ct_case], _tiny(steps=20, lr=1e-3, seed=1), "resumed", tmp_path / "run")
    assert latest_checkpoint(tmp_path / "run") == last and load_checkpoint(last)["step"] == 10

    resumed: list[int] = []
    train_segmenter([ct_case], config, "resumed", tmp_path / "run", on_metrics=lambda m: resumed.append(m["step"]))
    assert resumed[0] == 11 and resumed[-1] == 20
    assert load_checkpoint(latest_checkpoint(tmp_path / "run"))["step"] == 20


def _prepared(case_id: str, presence: dict[str, np.ndarray], region: str) -> PreparedCase:
    k = len(next(iter(presence.values())))
    return PreparedCase(
        case_id=case_id, modality="CT", image=np.zeros((k, 8, 8), np.uint8), labels=np.zeros((k, 8, 8), np.uint16),
        values={key: np.array([i + 1]) for i, key in enumerate(presence)}, presence=presence, regions={region},
        lateral=False, group=case_id,
    )


def test_often_present_structures_are_shown_absent_most_often():
    """A structure seen in most slices (liver) is the first foreign negative of a brain slice far more
    often than a rare one, so the ISD cannot learn "liver -> present" from the text alone."""
    abdomen = _prepared("abdomen", {"liver": np.arange(100) < 90, "gallbladder": np.arange(100) < 5}, "abdomen")
    brain = _prepared("brain", {"grey_matter": np.ones(50, bool)}, "brain")
    brain.foreign = ["gallbladder", "liver"]
    builder = SampleBuilder([abdomen, brain], ["gallbladder", "grey_matter", "liver"], _tiny(augment=False))
    rng = np.random.default_rng(0)
    first = [builder._foreign_order(brain.foreign, rng)[-1] for _ in range(500)]
    assert first.count("liver") > 0.85 * len(first)
    assert sorted(builder._foreign_order(brain.foreign, rng)) == ["gallbladder", "liver"]  # every one still drawn


def test_fine_tuning_keeps_the_base_fve_order_unless_asked(ct_case, tmp_path, medfound_home):
    base = train_segmenter([ct_case], _tiny(steps=2), "base-k1", tmp_path / "base")
    kept = train_segmenter([ct_case], _tiny(steps=2, fve_k=None, base_model=str(base)), "kept", tmp_path / "kept")
    changed = train_segmenter([ct_case], _tiny(steps=2, fve_k=3, base_model=str(base)), "k3", tmp_path / "k3")
    assert load_model(kept)[1].config["model"]["fve_k"] == 1
    assert load_model(changed)[1].config["model"]["fve_k"] == 3  # was silently the base's k = 1 before
    assert load_model(changed)[1].preprocessing["fve_k"] == 3
