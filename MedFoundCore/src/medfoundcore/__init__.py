"""MedFound core: text-prompted and zero-shot segmentation of 3D medical volumes.

Public API: :func:`load_volume`, :func:`save_volume`, :class:`Volume`, :func:`segment` (text prompts)
and :func:`click` (points, boxes, strokes: interactive). Heavy parts (models, text encoder) load lazily on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .io import Volume

__version__ = "0.1.0"
__all__ = ["Volume", "load_volume", "save_volume", "segment", "click", "__version__"]


def __getattr__(name: str) -> Any:
    """``Volume``, ``load_volume``, ``save_volume`` load on first use, so that ``medfound`` starts (and
    can answer Ctrl-C with one line) before numpy and SimpleITK are imported."""
    if name in ("Volume", "load_volume", "save_volume"):
        from . import io

        return getattr(io, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def segment(volume: Volume, prompts: list[str], model: str = "default", device: str = "auto", **kwargs: Any) -> Any:
    """Segment the structures named by ``prompts``; see :func:`medfoundcore.inference.segment.segment`."""
    from .inference.segment import segment as _segment

    return _segment(volume, prompts, model=model, device=device, **kwargs)


def click(volume: Volume, points: Any = (), **kwargs: Any) -> Any:
    """Interactive segmentation from include/exclude points ``(R, A, S[, include])``, a ``box``,
    ``scribbles`` and the ``previous`` mask, in RAS mm; see :func:`medfoundcore.inference.interactive.click`."""
    from .inference.interactive import click as _click

    return _click(volume, points, **kwargs)
