"""The computation behind interactive segmentation: one child process per volume, polled, never waited on.

:class:`InteractiveServer` runs ``medfound click input.nrrd --serve``: the volume is exported once,
the child loads the learned interactive model once and keeps the image's encoder features, and every
interaction is one JSON line on its stdin (``{"id", "points", "box", "scribbles", "previous",
"output"}``). Its answers (``{"ready"}``, ``{"progress"}``, ``{"id", "output", ...}`` or ``{"id",
"error"}``) go to a file that :meth:`InteractiveServer.poll` tails from the GUI's QTimer, as
:class:`~.process.ProcessJob` does: no reader thread (PythonQt keeps the GIL on the GUI thread while Qt
idles), no pipe to fill. Requests are serialised: while one runs, a newer one waits, and the newest
waiting one replaces older ones (only the latest state of the prompts matters). Cancel kills the
whole process tree; a crash is reported with the same sentences as a failed job.

:class:`OneShotEngine` offers the same interface for the classical intensity engine, which has no
serving mode: one ``medfound click --model intensity`` child per interaction (points only).

Nothing here touches the scene: results are handed to the caller (on the GUI thread), which writes them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from .jobs import JobCallbacks, JobState
from .process import LineTail, ProcessJob, describe_exit, json_events, kill_tree, medfound_command, read_tail, start_child

LEARNED_MODEL = "default"  # the core's learned interactive model (interactive-v1)
INTENSITY_MODEL = "intensity"  # the classical intensity engine: include/exclude points only
POINTS_ONLY = "The intensity engine uses include and exclude points only: choose the learned model for boxes and strokes."
QUIT_GRACE_S = 1.0  # how long stop() lets an idle server quit on its own before killing it


class EngineState(str, Enum):
    STARTING = "starting"  # the child loads the model
    READY = "ready"  # idle, waiting for a request
    BUSY = "busy"  # a request is being computed
    STOPPED = "stopped"  # cancelled or quit by the caller
    FAILED = "failed"  # the child ended on its own


@dataclass
class EngineCallbacks:
    """What the caller hears; every callback runs on the polling (GUI) thread, inside ``poll()``."""

    on_ready: Callable[[dict], None] | None = None  # {"model": ..., "shape": ...}
    on_progress: Callable[[Any], None] | None = None  # medfoundcore.progress.Progress
    on_result: Callable[["Answer"], None] | None = None
    on_error: Callable[["Answer"], None] | None = None  # one request failed; the engine lives on
    on_failed: Callable[[str, str], None] | None = None  # the child ended: (sentence for the user, stderr tail)


@dataclass
class Answer:
    """One answered request: the mask on the volume's exact grid (or the error), and what was asked."""

    id: int
    tag: Any  # the caller's tag given to submit()
    request: dict  # the prompt fields sent
    mask: Any = None  # medfoundcore.io.Volume (0/1 on the input grid) on success
    voxels: int = 0
    volume_ml: float = 0.0
    seconds: float = 0.0  # the child's computing time
    elapsed: float = 0.0  # from submit() (the interaction) to the answer being read, waiting included
    error: str = ""


@dataclass
class _Request:
    fields: dict
    previous: Any  # "last", None or a mask array on the volume grid (K, J, I)
    tag: Any
    submitted: float = field(default_factory=time.perf_counter)


def read_label_map(path: Path, volume):
    from .logic import read_label_map as read

    return read(path, volume)


class InteractiveServer:
    """``medfound click --serve`` for one volume (see the module docstring)."""

    def __init__(self, volume, model: str = LEARNED_MODEL, device: str = "auto",
                 callbacks: EngineCallbacks | None = None, workdir: Path | None = None) -> None:
        self.volume, self.model, self.device = volume, model or LEARNED_MODEL, device
        self.callbacks = callbacks or EngineCallbacks()
        self.workdir = Path(workdir) if workdir is not None else None
        self.state = EngineState.STARTING
        self.error = self.details = ""
        self.ready_info: dict = {}
        self.sent: list[dict] = []  # the requests sent to the child, in order (as written on its stdin)
        self._process: subprocess.Popen | None = None
        self._stdout: LineTail | None = None
        self._next_id = 0
        self._inflight: tuple[int, _Request] | None = None
        self._pending: _Request | None = None
        self._ignored: set[int] = set()

    # ------------------------------------------------------------------ life cycle
    def start(self) -> "InteractiveServer":
        """Export the volume (on this thread: a NRRD write) and start the child; returns at once."""
        from medfoundcore.io import save_volume

        from .logic import job_folder

        if self.workdir is None:
            self.workdir = job_folder("interactive", lambda folder: save_volume(self.volume, folder / "input.nrrd", compress=False))
        command = medfound_command("click", str(self.workdir / "input.nrrd"), "--serve", "--model", self.model,
                                   "--device", self.device)
        self.command = command
        self._stdout = LineTail(self.workdir / "stdout.txt")
        try:
            self._process = start_child(command, self.workdir, self.workdir / "stdout.txt", self.workdir / "stderr.txt",
                                        stdin=subprocess.PIPE)
        except BaseException:
            shutil.rmtree(self.workdir, ignore_errors=True)
            raise
        return self

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def alive(self) -> bool:
        return self.state in (EngineState.STARTING, EngineState.READY, EngineState.BUSY)

    @property
    def busy(self) -> bool:
        """Loading, computing or holding a request: the caller keeps polling."""
        return self.state in (EngineState.STARTING, EngineState.BUSY) or self._pending is not None

    def cancel(self) -> None:
        """Kill the child and everything it started, now; nothing more is reported."""
        if self._process is not None and self.alive:
            kill_tree(self._process)
        self._end(EngineState.STOPPED)

    def stop(self, grace_s: float = QUIT_GRACE_S) -> None:
        """Ask an idle child to quit (``{"command": "quit"}``), killing it if it has not within ``grace_s``;
        a busy one is killed at once. Used when the volume changes, on scene close and module cleanup."""
        if self._process is not None and self.state is EngineState.READY:
            try:
                self._process.stdin.write(b'{"command": "quit"}\n')
                self._process.stdin.close()
                self._process.wait(timeout=grace_s)
            except (OSError, ValueError, subprocess.TimeoutExpired):
                pass
        self.cancel()

    def _end(self, state: EngineState, error: str = "", details: str = "") -> None:
        self.state, self.error, self.details = state, error, details
        self._pending = self._inflight = None
        if self._process is not None and self._process.stdin is not None:
            try:
                self._process.stdin.close()
            except OSError:
                pass
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # ------------------------------------------------------------------ requests
    def submit(self, fields: dict, previous: Any = "last", tag: Any = None) -> None:
        """Ask for the mask of ``fields`` (``points``, ``box``, ``scribbles`` as the protocol has them).

        ``previous``: ``"last"`` (refine the child's last answer), None (start afresh) or a 0/1 mask
        array on the volume's grid (written to a file when the request is sent). Sent now when the
        child is idle; otherwise it waits, replacing any request that was already waiting.
        """
        if not self.alive:
            raise RuntimeError(f"the interactive computation is {self.state.value}; start a new one")
        self._pending = _Request(dict(fields), previous, tag)
        if self.state is EngineState.READY:
            self._send_pending()

    def discard(self) -> None:
        """Forget the waiting request, and the answer to the running one (it still finishes in the child)."""
        self._pending = None
        if self._inflight is not None:
            self._ignored.add(self._inflight[0])

    def _send_pending(self) -> None:
        from medfoundcore.io import save_volume

        request, self._pending = self._pending, None
        self._next_id += 1
        number = self._next_id
        previous = request.previous
        if previous is not None and not isinstance(previous, str):
            path = self.workdir / f"previous-{number}.nrrd"
            save_volume(self.volume.with_array((np.asarray(previous) > 0).astype(np.uint8), kind="label"), path)
            previous = str(path)
        line = dict(request.fields, id=number, previous=previous, output=str(self.workdir / f"mask-{number}.nrrd"))
        try:
            self._process.stdin.write((json.dumps(line) + "\n").encode())
            self._process.stdin.flush()
        except (OSError, ValueError):
            self._pending = request  # the child is gone: poll() reports why
            return
        self._inflight = (number, request)
        self.sent.append(line)
        self.state = EngineState.BUSY

    # ------------------------------------------------------------------ polling (GUI thread)
    def poll(self) -> None:
        """Deliver what the child said since the last call; send the waiting request when it is idle."""
        if not self.alive or self._process is None:
            return
        exited = self._process.poll() is not None
        latest = None
        for event in json_events(self._stdout.new_lines()):
            if not self.alive:
                return
            if "progress" in event:
                from medfoundcore.progress import Progress

                latest = Progress(**event["progress"])
            elif event.get("ready"):
                self.ready_info = event
                self.state = EngineState.READY
                if self.callbacks.on_ready:
                    self.callbacks.on_ready(event)
            elif "id" in event:
                self._answer(event)
        if latest is not None and self.state is EngineState.BUSY and self.callbacks.on_progress:
            self.callbacks.on_progress(latest)
        if exited and self.alive:
            self._failed(self._process.returncode)
        elif self.state is EngineState.READY and self._pending is not None:
            self._send_pending()

    def _answer(self, event: dict) -> None:
        if self._inflight is None or event.get("id") not in (self._inflight[0], None):
            return
        number, request = self._inflight
        self._inflight = None
        self.state = EngineState.READY
        answer = Answer(number, request.tag, request.fields, elapsed=time.perf_counter() - request.submitted)
        output = Path(str(event.get("output") or self.workdir / f"mask-{number}.nrrd"))
        if number in self._ignored:
            self._ignored.discard(number)
            output.unlink(missing_ok=True)
            return
        if "error" in event:
            answer.error = str(event["error"])
        else:
            try:
                answer.mask = read_label_map(output, self.volume)
            except Exception as error:  # noqa: BLE001 - unreadable output is a failed request, not a crash
                answer.error = f"MedFound's output could not be read: {error}"
            answer.voxels, answer.volume_ml = int(event.get("voxels", 0)), float(event.get("volume_ml", 0.0))
            answer.seconds = float(event.get("seconds", 0.0))
        output.unlink(missing_ok=True)
        for stale in self.workdir.glob(f"previous-{number}.nrrd"):
            stale.unlink(missing_ok=True)
        callback = self.callbacks.on_error if answer.error else self.callbacks.on_result
        if callback:
            callback(answer)

    def _failed(self, code: int) -> None:
        stderr = read_tail(self.workdir / "stderr.txt")
        if code == 0:  # it ended without being asked to (end of input is our doing only in stop())
            message = "The MedFound computation ended unexpectedly. Slicer was not affected."
        else:
            message = describe_exit(code, stderr)
        self._end(EngineState.FAILED, message, stderr)
        if self.callbacks.on_failed:
            self.callbacks.on_failed(message, stderr)


class OneShotEngine:
    """The classical intensity engine behind the same interface: one ``medfound click`` child per request.

    It has no model to keep loaded and no serving mode; a request's ``previous`` is ignored (the
    engine segments from the points alone), boxes and strokes are refused by the child.
    """

    def __init__(self, volume, model: str = INTENSITY_MODEL, device: str = "auto",
                 callbacks: EngineCallbacks | None = None) -> None:
        self.volume, self.model, self.device = volume, model or INTENSITY_MODEL, device
        self.callbacks = callbacks or EngineCallbacks()
        self.state = EngineState.STARTING
        self.error = self.details = ""
        self.workdir: Path | None = None
        self.sent: list[dict] = []
        self._job: ProcessJob | None = None
        self._request: tuple[int, _Request] | None = None
        self._pending: _Request | None = None
        self._next_id = 0
        self._ignored: set[int] = set()

    def start(self) -> "OneShotEngine":
        from medfoundcore.io import save_volume

        from .logic import job_folder

        self.workdir = job_folder("interactive", lambda folder: save_volume(self.volume, folder / "input.nrrd", compress=False))
        self.state = EngineState.READY
        return self

    @property
    def pid(self) -> int | None:
        return self._job.pid if self._job is not None else None

    @property
    def alive(self) -> bool:
        return self.state in (EngineState.STARTING, EngineState.READY, EngineState.BUSY)

    @property
    def busy(self) -> bool:
        return self.state is EngineState.BUSY or self._pending is not None

    def submit(self, fields: dict, previous: Any = "last", tag: Any = None) -> None:
        """As :meth:`InteractiveServer.submit`; ``previous`` is not used, and a box or stroke is an error."""
        if not self.alive:
            raise RuntimeError(f"the interactive computation is {self.state.value}; start a new one")
        request = _Request(dict(fields), None, tag)
        if fields.get("box") is not None or fields.get("scribbles"):
            if self.callbacks.on_error:
                self.callbacks.on_error(Answer(0, tag, request.fields, error=POINTS_ONLY))
            return
        self._pending = request
        if self._job is None:
            self._run_pending()

    def discard(self) -> None:
        self._pending = None
        if self._request is not None:
            self._ignored.add(self._request[0])

    def _run_pending(self) -> None:
        from .logic import click_arguments

        request, self._pending = self._pending, None
        self._next_id += 1
        number = self._next_id
        folder = self.workdir / f"run-{number}"
        folder.mkdir()
        points = request.fields.get("points", [])
        include = [p[:3] for p in points if len(p) < 4 or p[3]]
        exclude = [p[:3] for p in points if len(p) > 3 and not p[3]]
        args = click_arguments(self.workdir / "input.nrrd", folder / "mask.nrrd", include, exclude, self.model, self.device)
        self._request = (number, request)
        self._job = ProcessJob("click", medfound_command(*args), folder,
                               collect=lambda: read_label_map(folder / "mask.nrrd", self.volume),
                               callbacks=JobCallbacks(on_progress=self._progress, on_done=self._done)).start()
        self.sent.append(dict(request.fields, id=number, previous=None))
        self.state = EngineState.BUSY

    def _progress(self, progress) -> None:
        if self.callbacks.on_progress:
            self.callbacks.on_progress(progress)

    def _done(self, job: ProcessJob) -> None:
        (number, request), self._request, self._job = self._request, None, None
        self.state = EngineState.READY
        if number in self._ignored or job.state is JobState.CANCELLED:
            self._ignored.discard(number)
            return
        answer = Answer(number, request.tag, request.fields, elapsed=time.perf_counter() - request.submitted,
                        seconds=job.finished - job.started)
        if job.state is JobState.SUCCEEDED:
            answer.mask = job.result
            answer.voxels = int((np.asarray(job.result.array) > 0).sum())
            answer.volume_ml = answer.voxels * float(np.prod(self.volume.spacing)) / 1000.0
        else:
            answer.error = job.error
        callback = self.callbacks.on_error if answer.error else self.callbacks.on_result
        if callback:
            callback(answer)

    def poll(self) -> None:
        if not self.alive:
            return
        if self._job is not None:
            self._job.poll()
        if self._job is None and self._pending is not None and self.alive:
            self._run_pending()

    def cancel(self) -> None:
        if self._job is not None:
            self._job.cancel()
        self._job = self._request = self._pending = None
        self.state = EngineState.STOPPED
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def stop(self, grace_s: float = QUIT_GRACE_S) -> None:
        self.cancel()


def start_engine(volume, model: str, device: str, callbacks: EngineCallbacks):
    """The engine for ``model``: the serving child for a learned model, one-shot children for the intensity engine."""
    if model in (INTENSITY_MODEL, "none", "encoder-v1"):
        return OneShotEngine(volume, INTENSITY_MODEL, device, callbacks).start()
    return InteractiveServer(volume, model, device, callbacks).start()
