"""Model store: safetensors + card, sha256 verified on load and import, nothing overwritten."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medfoundcore.errors import InputError, ModelError
from medfoundcore.registry import ModelCard, delete_model, import_model, list_models, load_model, save_model
from medfoundcore.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint


def _state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    return net.state_dict()


def test_save_and_load_roundtrip(medfound_home: Path) -> None:
    state = _state()
    path = save_model(state, ModelCard(name="unit-model", kind="prompted-segmenter", config={"x": 1}))
    assert path == medfound_home / "models" / "unit-model"
    loaded, card = load_model("unit-model")
    assert card.config == {"x": 1} and len(card.sha256) == 64
    for key, value in state.items():
        if value.is_floating_point():
            torch.testing.assert_close(loaded[key], value.half().float())
        else:
            assert torch.equal(loaded[key], value)
    assert "unit-model" in [m.name for m in list_models(kind="prompted-segmenter")]
    assert "unit-model" not in [m.name for m in list_models(kind="encoder3d")]


def test_corrupted_weights_are_refused(medfound_home: Path) -> None:
    path = save_model(_state(), ModelCard(name="bad", kind="prompted-segmenter"))
    weights = path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="checksum mismatch"):
        load_model("bad")


def test_never_overwrites_and_suggests_names(medfound_home: Path) -> None:
    save_model(_state(), ModelCard(name="liver-ft", kind="prompted-segmenter"))
    with pytest.raises(InputError, match="already stored"):
        save_model(_state(), ModelCard(name="liver-ft", kind="prompted-segmenter"))
    with pytest.raises(ModelError, match="liver-ft"):
        load_model("liver-f")


def test_import_and_delete(medfound_home: Path, tmp_path: Path) -> None:
    exported = save_model(_state(), ModelCard(name="shared", kind="encoder3d"), tmp_path / "export")
    installed = import_model(exported / "model.safetensors", name="from-colleague")
    assert installed.parent == medfound_home / "models"
    assert load_model("from-colleague")[1].kind == "encoder3d"
    delete_model("from-colleague")
    assert "from-colleague" not in [m.name for m in list_models()]
    tampered = save_model(_state(), ModelCard(name="tampered", kind="encoder3d"), tmp_path / "t")
    (tampered / "model.safetensors").write_bytes((tampered / "model.safetensors").read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(ModelError, match="sha256"):
        import_model(tampered)
    with pytest.raises(InputError, match="not installed"):
        delete_model("never-there")


def test_checkpoints_are_atomic_and_safe(tmp_path: Path) -> None:
    net = torch.nn.Linear(3, 2)
    optim = torch.optim.AdamW(net.parameters())
    net(torch.ones(1, 3)).sum().backward()
    optim.step()
    for step in (10, 20):
        save_checkpoint(tmp_path / f"step-{step:08d}.pt", step=step, model=net.state_dict(), optimizer=optim.state_dict())
    (tmp_path / ".step-00000030.pt.part.pt").write_bytes(b"half-written")  # a kill mid-write leaves only a temp file
    latest = latest_checkpoint(tmp_path)
    assert latest is not None and latest.name == "step-00000020.pt"
    state = load_checkpoint(latest)
    assert state["step"] == 20
    restored = torch.nn.Linear(3, 2)
    restored.load_state_dict(state["model"])
    torch.testing.assert_close(restored.weight, net.weight)
    torch.optim.AdamW(restored.parameters()).load_state_dict(state["optimizer"])
