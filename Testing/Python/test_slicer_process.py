"""The process runner: progress read from the child's output, crashes reported, cancel kills the tree."""

from __future__ import annotations

import json
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from MedFoundSlicerLib.jobs import JobCallbacks, JobState
from MedFoundSlicerLib.process import ProcessJob


def _progress_line(stage: str, done: int, total: int, message: str = "") -> str:
    return json.dumps({"progress": {"stage": stage, "done": done, "total": total, "message": message}})


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def test_a_killed_child_is_a_readable_failure_and_its_folder_is_removed():
    workdir = Path(tempfile.mkdtemp())
    seen = []
    code = f"""
        import os, signal
        print({_progress_line("loading", 1, 2)!r}, flush=True)
        print("not json: ignored", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """
    job = ProcessJob("segment", _python(code), workdir, callbacks=JobCallbacks(on_progress=seen.append)).start().wait()
    assert job.state is JobState.FAILED and "SIGKILL" in job.error and "out of memory" in job.error
    assert [(p.stage, p.done, p.total) for p in seen] == [("loading", 1, 2)]
    assert not workdir.exists()


def test_an_unexpected_exception_in_the_child_keeps_its_traceback_as_details():
    job = ProcessJob("segment", _python("raise RuntimeError('boom')"), Path(tempfile.mkdtemp())).start().wait()
    assert job.state is JobState.FAILED and "exit code 1" in job.error and "boom" in job.error
    assert "Traceback" in job.details


def test_unreadable_output_fails_the_job_instead_of_raising():
    def collect():
        raise FileNotFoundError("labels.nrrd")

    job = ProcessJob("segment", _python("pass"), Path(tempfile.mkdtemp()), collect=collect).start().wait()
    assert job.state is JobState.FAILED and "labels.nrrd" in job.error


def test_cancel_kills_the_whole_process_tree(pid_alive):
    code = f"""
        import json, subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        print(json.dumps({{"progress": {{"stage": "working", "done": 0, "total": None, "message": str(child.pid)}}}}), flush=True)
        time.sleep(600)
    """
    seen = []
    job = ProcessJob("train", _python(code), Path(tempfile.mkdtemp()), callbacks=JobCallbacks(on_progress=seen.append)).start()
    while not seen:
        job.poll()
        time.sleep(0.05)
    grandchild = int(seen[0].message)
    assert pid_alive(grandchild)
    job.cancel()
    assert job.poll() and job.state is JobState.CANCELLED
    assert not pid_alive(job.pid)
    for _ in range(200):  # killed with its group; a kill is immediate, the 10 s bound only stops a hang
        if not pid_alive(grandchild):
            break
        time.sleep(0.05)
    assert not pid_alive(grandchild), "the grandchild survived the cancel"
