"""Run long MedFound work off the GUI thread and hand its events back on the GUI thread.

Why a thread and a queue: PyTorch releases the GIL inside its kernels, so a worker thread keeps the
Slicer GUI responsive without the start-up cost of a second process (loading torch and the model
again), while every scene change still happens on the GUI thread. The GUI polls :meth:`Job.poll`
from a ``QTimer``; headless code (tests, benchmarks) calls :meth:`Job.wait`, which runs the same
poll loop. Nothing here touches Qt or MRML, so it is testable anywhere.
"""

from __future__ import annotations

import queue
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

class JobState(str, Enum):
    """Life cycle of a job; the last three are final."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    CANCELLED = "cancelled"
    FAILED = "failed"


@dataclass
class JobCallbacks:
    """What the GUI wants to hear about; every callback is invoked on the polling (GUI) thread."""

    on_progress: Callable[[Any], None] | None = None  # medfoundcore.progress.Progress
    on_metrics: Callable[[dict], None] | None = None  # training metrics of one epoch
    on_done: Callable[["Job"], None] | None = None  # final state reached (result or error set)


@dataclass
class Job:
    """One unit of long work: a worker thread, an event queue and a cancel token.

    ``work(progress, cancel, metrics)`` runs on the worker; it must check ``cancel`` often. Its return
    value becomes :attr:`result`. A ``MedFoundError`` becomes :attr:`error` (its text is meant for
    users); any other exception also ends in FAILED, with the traceback kept in :attr:`details`.
    """

    name: str
    work: Callable[..., Any]
    callbacks: JobCallbacks = field(default_factory=JobCallbacks)
    state: JobState = JobState.RUNNING
    result: Any = None
    error: str = ""
    details: str = ""
    started: float = 0.0
    finished: float = 0.0

    def __post_init__(self) -> None:
        from medfoundcore.progress import CancelToken

        self.cancel_token = CancelToken()
        self._events: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=f"MedFound-{self.name}", daemon=True)
        self._delivered = False

    # ------------------------------------------------------------------ worker side
    def start(self) -> "Job":
        """Start the worker thread (returns immediately)."""
        self.started = time.perf_counter()
        self._thread.start()
        return self

    def _run(self) -> None:
        from medfoundcore.errors import Cancelled, MedFoundError

        try:
            value = self.work(self._events_progress, self.cancel_token, self._events_metrics)
            self._events.put(("done", JobState.SUCCEEDED, value, "", ""))
        except Cancelled:
            self._events.put(("done", JobState.CANCELLED, None, "Cancelled.", ""))
        except MedFoundError as exc:
            self._events.put(("done", JobState.FAILED, None, str(exc), traceback.format_exc()))
        except Exception as exc:  # noqa: BLE001 - a worker must never die silently
            message = f"{self.name} failed unexpectedly: {type(exc).__name__}: {exc}"
            self._events.put(("done", JobState.FAILED, None, message, traceback.format_exc()))

    def _events_progress(self, progress: Any) -> None:
        self._events.put(("progress", progress))

    def _events_metrics(self, metrics: dict) -> None:
        self._events.put(("metrics", dict(metrics)))

    # ------------------------------------------------------------------ GUI side
    def cancel(self) -> None:
        """Ask the worker to stop at its next check point; the job ends CANCELLED soon after."""
        self.cancel_token.cancel()

    @property
    def finished_state(self) -> bool:
        return self.state is not JobState.RUNNING

    def poll(self, max_events: int = 200) -> bool:
        """Deliver queued events to the callbacks; return True once the job is over and reported.

        Only the newest progress event of a burst is delivered, so a chatty worker cannot make the
        GUI thread spend long in one poll.
        """
        latest_progress = None
        for _ in range(max_events):
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                break
            kind = event[0]
            if kind == "progress":
                latest_progress = event[1]
            elif kind == "metrics" and self.callbacks.on_metrics:
                self.callbacks.on_metrics(event[1])
            elif kind == "done":
                _, self.state, self.result, self.error, self.details = event
                self.finished = time.perf_counter()
        if latest_progress is not None and self.callbacks.on_progress:
            self.callbacks.on_progress(latest_progress)
        if self.finished_state and not self._delivered:
            self._delivered = True
            if self.callbacks.on_done:
                self.callbacks.on_done(self)
        return self._delivered

    def wait(self, interval_s: float = 0.02, timeout_s: float | None = None, tick: Callable[[], None] | None = None) -> "Job":
        """Poll until the job is over (headless stand-in for the GUI's QTimer loop).

        ``tick`` runs on every iteration (a benchmark measures the loop with it); on ``timeout_s`` the
        job is cancelled and waited for, so no worker is left behind.
        """
        deadline = None if timeout_s is None else time.perf_counter() + timeout_s
        while not self.poll():
            if tick is not None:
                tick()
            if deadline is not None and time.perf_counter() > deadline:
                self.cancel()
                deadline = None
            time.sleep(interval_s)
        self._thread.join(timeout=5.0)
        return self
