"""One (method, fold) job in its own process: verify the split, train under the budget, predict the test cases.

A fresh process per job gives each method the same clean machine (no allocator state, threads or CUDA
caches left by the previous method), makes its peak memory measurable (the process's max RSS, and
``torch.cuda.max_memory_allocated`` on GPU) and lets the runner stop a method that overruns its budget.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import queue as queue_module
import random
import resource
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import Cancelled, InputError
from ..progress import CancelToken, Progress, ProgressCallback
from .protocol import write_text_atomic, verify_manifest

RESULT_NAME = "result.json"


@dataclass(frozen=True)
class Job:
    """Everything a worker needs; plain values so that it crosses the process boundary."""

    method: str
    fold: int
    data_dir: str
    manifest_path: str
    split_sha256: str
    budget_seconds: float
    device: str
    seed: int
    size: str
    threads: int
    job_dir: str  # result.json, the method's scratch files
    predictions_dir: str  # <case>.nii.gz label maps on the reference grid

    @property
    def result_path(self) -> Path:
        return Path(self.job_dir) / RESULT_NAME

    def identity(self) -> dict[str, Any]:
        """The settings a stored result must match to be reused instead of re-run."""
        keys = ("method", "fold", "split_sha256", "budget_seconds", "device", "seed", "size")
        return {k: getattr(self, k) for k in keys}


def run_isolated(
    job: Job,
    hard_limit_seconds: float,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> dict[str, Any]:
    """Run ``job`` in a spawned process; return its result (status ``failed`` if it crashed or overran)."""
    context = mp.get_context("spawn")
    events = context.Queue()
    process = context.Process(target=_child_main, args=(job, events))  # not daemonic: methods may use DataLoader workers
    start = time.perf_counter()
    process.start()
    outcome = None
    while process.is_alive():
        _drain(events, progress, timeout=0.5)
        if cancel is not None and cancel.cancelled:
            outcome = "cancelled"
        elif time.perf_counter() - start > hard_limit_seconds:
            outcome = f"failed: killed after {hard_limit_seconds:.0f} s (over its budget plus inference allowance)"
        if outcome:
            process.terminate()
            process.join(10)
            break
    process.join()
    _drain(events, progress, timeout=0)
    if outcome == "cancelled":
        raise Cancelled(f"benchmark cancelled during {job.method} fold {job.fold}")
    if outcome:
        return _failure(job, outcome)
    if not job.result_path.exists():
        return _failure(job, f"failed: worker exited with code {process.exitcode} without a result")
    return json.loads(job.result_path.read_text())


def _drain(events: Any, progress: ProgressCallback | None, timeout: float) -> None:
    while True:
        try:
            item = events.get(timeout=timeout) if timeout else events.get_nowait()
        except queue_module.Empty:
            return
        if progress is not None:
            progress(Progress(*item))
        timeout = 0


def _failure(job: Job, status: str) -> dict[str, Any]:
    result = {"job": job.identity(), "method": job.method, "fold": job.fold, "status": status}
    write_text_atomic(job.result_path, json.dumps(result, indent=1))
    return result


def _child_main(job: Job, events: Any) -> None:
    """Process entry point: run the job and always leave a result.json behind."""

    def forward(p: Progress) -> None:
        events.put((p.stage, p.done, p.total, p.message))

    Path(job.job_dir).mkdir(parents=True, exist_ok=True)
    try:
        result = execute(job, forward)
    except (InputError, Cancelled) as error:
        result = {"job": job.identity(), "method": job.method, "fold": job.fold, "status": f"failed: {error}"}
    except Exception as error:  # a crashing method must not take the whole benchmark down
        trace = traceback.format_exc(limit=-3)
        result = {"job": job.identity(), "method": job.method, "fold": job.fold, "status": f"failed: {type(error).__name__}: {error}", "traceback": trace}
    write_text_atomic(job.result_path, json.dumps(result, indent=1))


def execute(job: Job, progress: ProgressCallback | None = None) -> dict[str, Any]:
    """Train and predict in this process (the body of a worker; callable directly for debugging)."""
    import torch

    from ..device import resolve_device
    from ..io import save_volume
    from .cases import load_cases
    from .methods import build_method
    from .methods.base import Deadline, MethodSettings

    torch.set_num_threads(job.threads)
    _seed_everything(job.seed + job.fold)
    manifest = verify_manifest(Path(job.manifest_path), job.split_sha256)
    fold = manifest.fold(job.fold)
    device = resolve_device(job.device)
    method = build_method(job.method, MethodSettings(device, job.seed + job.fold, job.size))  # type: ignore[arg-type]
    result: dict[str, Any] = {"job": job.identity(), "method": job.method, "fold": job.fold, "title": method.title}
    reason = method.unavailable_reason()
    if reason:
        return {**result, "status": f"unavailable: {reason}"}
    data_dir = Path(job.data_dir)
    train_cases = load_cases(data_dir, fold.train, manifest.files, progress)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    cpu_before = _cpu_seconds()
    fit = method.fit(train_cases, Deadline(job.budget_seconds), Path(job.job_dir), progress)
    train_cpu_seconds = _cpu_seconds() - cpu_before
    del train_cases
    infer_seconds: dict[str, float] = {}
    out_dir = Path(job.predictions_dir)
    for index, case in enumerate(load_cases(data_dir, fold.test, manifest.files)):
        start = time.perf_counter()
        labels = method.predict(case.image)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        infer_seconds[case.case_id] = time.perf_counter() - start
        if labels.shape != case.label.shape:
            raise InputError(f"{job.method} returned a {labels.shape} label map for {case.case_id} ({case.label.shape})")
        save_volume(case.label.with_array(labels.astype(np.uint8)), out_dir / f"{case.case_id}.nii.gz")
        if progress is not None:
            progress(Progress(f"predict {job.method}", index + 1, len(fold.test)))
    return {
        **result,
        "status": "ok",
        "description": method.description,
        "fit": asdict(fit),
        "train_cpu_seconds": train_cpu_seconds,
        "parameters": method.parameter_count(),
        "infer_seconds": infer_seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "peak_gpu_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
    }


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children: on a shared machine, what the budget bought."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
