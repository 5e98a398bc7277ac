"""Headless test set-up for the Slicer module: slicer-core + a tiny shim, real data, a fresh scene."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "MedFoundSlicer"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import slicer_shim  # noqa: E402

slicer_shim.install()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real sample data; missing data is a failure, never a skip."""
    from medfoundcore.data.paths import shared_data_dir

    path = shared_data_dir(required=False)
    if not path.is_dir():
        pytest.fail(f"shared data not found at {path}; set MEDFOUND_DATA")
    return path


@pytest.fixture
def model_store(tmp_path, monkeypatch) -> Path:
    """A private MEDFOUND_HOME so tests never touch the user's models."""
    monkeypatch.setenv("MEDFOUND_HOME", str(tmp_path / "medfound-home"))
    return tmp_path / "medfound-home"


@pytest.fixture
def logic(model_store):
    """The module's Logic on a fresh, real vtkMRMLScene."""
    import slicer
    from MedFoundSlicer import MedFoundSlicerLogic

    return MedFoundSlicerLogic(slicer.vtkMRMLScene())


@pytest.fixture(scope="session")
def pid_alive():
    """``pid_alive(pid)``: whether that process still runs (a zombie counts as gone: it only awaits reaping)."""
    import os

    def alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        try:
            with open(f"/proc/{pid}/stat") as stat:
                return stat.read().split(") ")[-1][0] != "Z"
        except FileNotFoundError:
            return False

    return alive


@pytest.fixture(scope="session")
def ct_weights_store(tmp_path_factory):
    """A private store of the CT encoder's weights, built once per session by the installer's own
    weight step (``medfound models install-backbone`` in a child process, from the real shard packages
    in this environment). Returns the store folder and what the step reported while building it."""
    import os

    from MedFoundSlicerLib import install

    root = tmp_path_factory.mktemp("backbones")
    before = os.environ.get("MEDFOUND_BACKBONES")
    os.environ["MEDFOUND_BACKBONES"] = str(root)
    progress = []
    try:
        result = install.install_ct_weights(log=lambda _text: None, on_progress=progress.append)
    finally:
        if before is None:
            os.environ.pop("MEDFOUND_BACKBONES", None)
        else:
            os.environ["MEDFOUND_BACKBONES"] = before
    return {"root": root, "result": result, "progress": progress}


@pytest.fixture
def ct_weights_installed(ct_weights_store, monkeypatch):
    """``$MEDFOUND_BACKBONES`` set to the session's store, where the CT weights are already installed."""
    monkeypatch.setenv("MEDFOUND_BACKBONES", str(ct_weights_store["root"]))
    return ct_weights_store["root"]
