"""Headless test set-up for the Slicer module: slicer-core + a tiny shim, real data, a fresh scene."""

from __future__ import annotations

import os
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
    """The real sample data; missing data fails under CI (never a silent skip)."""
    path = Path(os.environ.get("MEDFOUND_DATA", REPO.parent / "shared" / "data"))
    if not path.is_dir():
        message = f"shared data not found at {path}; set MEDFOUND_DATA"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
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
