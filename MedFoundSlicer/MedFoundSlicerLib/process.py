"""Run a MedFound job as a child process (the ``medfound`` CLI) and report it like a :class:`~.jobs.Job`.

Why a process and not a thread: Slicer's PythonQt keeps the GIL on the GUI thread while Qt idles, so a
worker thread may stall, and a torch crash or out-of-memory kill in-process takes Slicer down. The child
gets its input and writes its output through files in a private temporary folder; its stdout and
stderr go to files too, which :meth:`ProcessJob.poll` tails from a QTimer without ever blocking (no
pipes to fill, no reader threads, and it works the same on Windows). Cancel kills the whole process
tree; the caller only touches the scene after a successful job, so a cancelled or failed job leaves
it unchanged.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .jobs import JobCallbacks, JobState

EXIT_ERROR = 2  # medfoundcore.cli: a MedFoundError, its message on stderr as "medfound: error: ..."
EXIT_CANCELLED = 130
ERROR_PREFIX = "medfound: error: "
STDERR_TAIL = 4000  # characters of the child's stderr kept as the details of a failure


def python_executable() -> str:
    """The Python that has MedFoundCore: Slicer's ``PythonSlicer`` inside Slicer, else this interpreter.

    Inside Slicer ``sys.executable`` may be the Slicer application itself, which must never be
    started as a worker; PythonSlicer (on Slicer's PATH) runs Slicer's Python with its packages.
    """
    found = shutil.which("PythonSlicer")
    if found:
        return found
    if Path(sys.executable).name.lower().startswith("slicer"):
        raise RuntimeError("PythonSlicer was not found on PATH; MedFound cannot start its computation process")
    return sys.executable


def medfound_command(*args: str) -> list[str]:
    """``python -m medfoundcore.cli ARGS``: the CLI without relying on a console script on PATH."""
    return [python_executable(), "-m", "medfoundcore.cli", *args]


def _group_options() -> dict[str, Any]:
    """Popen options that put the child in its own process group, so one kill reaches its children."""
    if os.name == "nt":
        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)}
    return {"start_new_session": True}


def start_child(command: list[str], workdir: Path, stdout: Path, stderr: Path, env: dict[str, str] | None = None,
                stdin: Any = subprocess.DEVNULL) -> subprocess.Popen:
    """Start ``command`` in ``workdir`` as the leader of its own process group (so :func:`kill_tree`
    reaches everything it starts), its stdout and stderr going to the files ``stdout`` and ``stderr``."""
    with open(stdout, "wb") as out, open(stderr, "wb") as err:
        return subprocess.Popen(command, stdin=stdin, stdout=out, stderr=err, cwd=str(workdir), env=env, **_group_options())


class LineTail:
    """The complete lines a child has added to a file since the last call; never blocks."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._offset, self._partial = 0, b""

    def new_lines(self) -> list[bytes]:
        try:
            with open(self.path, "rb") as stream:
                stream.seek(self._offset)
                chunk = stream.read()
        except FileNotFoundError:
            return []
        self._offset += len(chunk)
        *lines, self._partial = (self._partial + chunk).split(b"\n")
        return lines


def json_events(lines: list[bytes]) -> list[dict]:
    """The JSON objects among ``lines`` (the CLI's human-readable lines are skipped)."""
    events = []
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events


def read_tail(path: Path, limit: int = STDERR_TAIL) -> str:
    """The last ``limit`` characters of a text file ('' when it does not exist)."""
    try:
        return Path(path).read_text(errors="replace")[-limit:]
    except FileNotFoundError:
        return ""


def kill_tree(process: subprocess.Popen) -> None:
    """Kill ``process`` and everything it started (data loaders, helper processes), then reap it."""
    if process.poll() is None:
        if os.name == "nt":
            subprocess.run(["taskkill", "/F", "/T", "/PID", str(process.pid)], capture_output=True, check=False)
        else:
            try:
                os.killpg(process.pid, signal.SIGKILL)  # the child leads its own session: pgid == pid
            except ProcessLookupError:
                pass
    process.wait(timeout=10)


def describe_exit(code: int, stderr: str) -> str:
    """A sentence for the user about why the child ended with ``code`` (not 0, not cancelled)."""
    errors = [line[len(ERROR_PREFIX):] for line in stderr.splitlines() if line.startswith(ERROR_PREFIX)]
    if code == EXIT_ERROR and errors:
        return errors[-1]
    if code < 0 or code in (137, 9):
        number = -code if code < 0 else 9
        name = signal.Signals(number).name if number in signal.Signals._value2member_map_ else f"signal {number}"
        hint = " (the system may have run out of memory)" if number == 9 else ""
        return f"The MedFound computation stopped unexpectedly: it was killed by {name}{hint}. Slicer was not affected."
    last = stderr.strip().splitlines()[-1] if stderr.strip() else "no message"
    return f"The MedFound computation stopped unexpectedly (exit code {code}): {last}"


class ProcessJob:
    """A child process with the life cycle and callbacks of :class:`~.jobs.Job`.

    ``collect()`` runs on the polling thread after a zero exit and turns the output files into
    :attr:`result`; it may raise (the job then fails with that message). The working folder is
    removed when the job ends, however it ends.
    """

    def __init__(self, name: str, command: list[str], workdir: Path, collect: Callable[[], Any] | None = None,
                 callbacks: JobCallbacks | None = None, env: dict[str, str] | None = None) -> None:
        self.name, self.command, self.workdir = name, list(command), Path(workdir)
        self.collect = collect or (lambda: None)
        self.callbacks = callbacks or JobCallbacks()
        self.env = env
        self.state, self.result, self.error, self.details = JobState.RUNNING, None, "", ""
        self.started = self.finished = 0.0
        self.returncode: int | None = None
        self._process: subprocess.Popen | None = None
        self._stdout = LineTail(self.stdout_path)
        self._delivered = False

    @property
    def stdout_path(self) -> Path:
        return self.workdir / "stdout.txt"

    @property
    def stderr_path(self) -> Path:
        return self.workdir / "stderr.txt"

    def start(self) -> "ProcessJob":
        """Start the child (returns at once); its stdout/stderr go to files in the working folder."""
        self.started = time.perf_counter()
        self._process = start_child(self.command, self.workdir, self.stdout_path, self.stderr_path, self.env)
        return self

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    # ------------------------------------------------------------------ GUI side
    def cancel(self) -> None:
        """Kill the process tree now; the job is CANCELLED at the next poll and nothing is collected."""
        if self.state is not JobState.RUNNING or self._process is None:
            return
        kill_tree(self._process)
        self._end(JobState.CANCELLED, error="Cancelled.")

    @property
    def finished_state(self) -> bool:
        return self.state is not JobState.RUNNING

    def poll(self, max_events: int = 200) -> bool:
        """Deliver new progress/metrics lines and, once the child has exited, the outcome; never blocks.

        Returns True once the job is over and ``on_done`` was called.
        """
        if self.state is JobState.RUNNING and self._process is not None:
            exited = self._process.poll() is not None
            self._deliver(json_events(self._stdout.new_lines()[-max_events:]))
            if exited and self.state is JobState.RUNNING:  # a callback may have cancelled meanwhile
                self._finish(self._process.returncode)
        if self.finished_state and not self._delivered:
            self._delivered = True
            if self.callbacks.on_done:
                self.callbacks.on_done(self)
        return self._delivered

    def wait(self, interval_s: float = 0.05, timeout_s: float | None = None, tick: Callable[[], None] | None = None) -> "ProcessJob":
        """Poll until the job is over (the headless stand-in for the GUI's QTimer); cancel on timeout."""
        deadline = None if timeout_s is None else time.perf_counter() + timeout_s
        while not self.poll():
            if tick is not None:
                tick()
            if deadline is not None and time.perf_counter() > deadline:
                self.cancel()
            time.sleep(interval_s)
        return self

    # ------------------------------------------------------------------ internals
    def _deliver(self, events: list[dict]) -> None:
        from medfoundcore.progress import Progress

        latest = None
        for event in events:
            if self.state is not JobState.RUNNING:
                return  # a callback cancelled the job: nothing after that is delivered
            if "progress" in event:
                latest = Progress(**event["progress"])
            elif "metrics" in event and self.callbacks.on_metrics:
                self.callbacks.on_metrics(dict(event["metrics"]))
        if latest is not None and self.callbacks.on_progress:
            self.callbacks.on_progress(latest)

    def _stderr(self) -> str:
        return read_tail(self.stderr_path)

    def _finish(self, code: int) -> None:
        self.returncode = code
        if code == 0:
            try:
                result = self.collect()
            except Exception as error:  # noqa: BLE001 - unreadable output is a failed job, not a crash
                self._end(JobState.FAILED, error=f"MedFound's output could not be read: {error}", details=self._stderr())
                return
            self._end(JobState.SUCCEEDED, result=result)
        elif code == EXIT_CANCELLED:
            self._end(JobState.CANCELLED, error="Cancelled.")
        else:
            stderr = self._stderr()
            self._end(JobState.FAILED, error=describe_exit(code, stderr), details=stderr)

    def _end(self, state: JobState, result: Any = None, error: str = "", details: str = "") -> None:
        self.state, self.result, self.error, self.details = state, result, error, details
        self.finished = time.perf_counter()
        shutil.rmtree(self.workdir, ignore_errors=True)
