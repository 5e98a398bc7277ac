"""Where the shared real data lives: ``$MEDFOUND_DATA`` or ``../shared/data`` beside the repository."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import InputError

REPO_ROOT = Path(__file__).resolve().parents[4]


def shared_data_dir(required: bool = True) -> Path:
    """The shared data folder; with ``required`` a missing folder is an error naming the variable to set."""
    path = Path(os.environ.get("MEDFOUND_DATA", REPO_ROOT.parent / "shared" / "data")).expanduser()
    if required and not path.is_dir():
        raise InputError(f"{path}: shared data folder not found; set MEDFOUND_DATA to the folder holding the sample volumes")
    return path
