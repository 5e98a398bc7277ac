"""One progress-callback type and one cancellation-token type for every long job.

The CLI renders progress with tqdm, the Slicer module forwards it to its progress bar from a worker,
and tests record it; all of them cancel through the same :class:`CancelToken`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from .errors import Cancelled

T = TypeVar("T")


@dataclass(frozen=True)
class Progress:
    """A snapshot of a long job: which stage, how far (``done`` of ``total``), and a short message."""

    stage: str
    done: int
    total: int | None = None
    message: str = ""

    @property
    def fraction(self) -> float | None:
        """Fraction done in [0, 1], or None when the total is unknown."""
        if not self.total:
            return None
        return min(1.0, self.done / self.total)


ProgressCallback = Callable[[Progress], None]


class CancelToken:
    """Thread-safe cancellation flag checked by long loops between units of work."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        """Ask the job to stop at its next check point."""
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        """Raise :class:`Cancelled` if cancellation was requested."""
        if self._event.is_set():
            raise Cancelled("cancelled by the user")


def report(progress: ProgressCallback | None, stage: str, done: int, total: int | None = None, message: str = "") -> None:
    """Send one progress update if a callback is set."""
    if progress is not None:
        progress(Progress(stage, done, total, message))


def check(cancel: CancelToken | None) -> None:
    """Raise :class:`Cancelled` if ``cancel`` was triggered (no-op without a token)."""
    if cancel is not None:
        cancel.raise_if_cancelled()


def track(
    iterable: Iterable[T],
    stage: str,
    total: int | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> Iterator[T]:
    """Yield from ``iterable``, checking ``cancel`` before and reporting ``progress`` after each item."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    report(progress, stage, 0, total)
    for done, item in enumerate(iterable, start=1):
        check(cancel)
        yield item
        report(progress, stage, done, total)


class cli_progress:
    """A :data:`ProgressCallback` that draws one tqdm bar per stage on stderr (used by the CLI)."""

    def __init__(self, disable: bool = False) -> None:
        self._bar = None
        self._stage: str | None = None
        self._disable = disable

    def __call__(self, p: Progress) -> None:
        from tqdm import tqdm

        if p.stage != self._stage:
            self.close()
            self._stage = p.stage
            self._bar = tqdm(total=p.total, desc=p.stage, unit="it", leave=False, disable=self._disable, dynamic_ncols=True)
        assert self._bar is not None
        if p.total is not None and self._bar.total != p.total:
            self._bar.total = p.total
        self._bar.n = p.done
        if p.message:
            self._bar.set_postfix_str(p.message, refresh=False)
        self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class json_progress:
    """A :data:`ProgressCallback` printing one JSON object per update on stdout (``--progress-json``).

    Why: a parent process (the Slicer module) reads progress from a file it tails on a timer; one
    flushed line per update is all it needs, and lines that are not JSON are ignored there.
    """

    def __call__(self, p: Progress) -> None:
        import json
        import sys

        print(json.dumps({"progress": {"stage": p.stage, "done": p.done, "total": p.total, "message": p.message}}), flush=True, file=sys.stdout)

    def close(self) -> None:
        pass
