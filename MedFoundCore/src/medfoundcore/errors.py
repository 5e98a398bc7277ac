"""Error types shared by the CLI, the Python API and the Slicer module.

Every error a user can cause is a :class:`MedFoundError` whose message alone (no traceback) tells
what is wrong and what to do; the CLI prints it as one line and exits with status 2.
"""

from __future__ import annotations


class MedFoundError(Exception):
    """Base class of every error MedFound raises on purpose."""


class InputError(MedFoundError, ValueError):
    """Bad user input: a file, a prompt, a parameter. The message names the input and the problem."""


class Cancelled(MedFoundError):
    """A long job was cancelled by the user through a :class:`~medfoundcore.progress.CancelToken`."""


class ModelError(MedFoundError):
    """A model is missing, corrupt (checksum mismatch) or incompatible with this version."""


def shorten(text: object, limit: int = 80) -> str:
    """``text`` cut to ``limit`` characters for an error message: a pasted report must not flood the terminal."""
    text = str(text)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"
