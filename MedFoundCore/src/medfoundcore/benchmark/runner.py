"""Run the MSD Hippocampus benchmark: one split, every method, same cases, same budget, one results table."""

from __future__ import annotations

import json
import math
import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..device import resolve_device
from ..errors import InputError
from ..io import load_volume
from ..progress import CancelToken, ProgressCallback, check, report
from .cases import DATASET, case_files, default_data_dir, discover_cases, hash_cases
from .methods import METHODS
from .protocol import SplitManifest, make_manifest, save_manifest
from .scoring import score_case, summarise
from .worker import Job, run_isolated

#: A worker is killed after budget x this factor + INFERENCE_ALLOWANCE_S (training overran or hung).
HARD_LIMIT_FACTOR = 2.0
INFERENCE_ALLOWANCE_S = 900.0


@dataclass
class BenchmarkConfig:
    """One benchmark run. ``size="auto"`` is ``standard`` on CUDA and ``tiny`` on CPU (see docs/benchmarks)."""

    out_dir: Path
    data_dir: Path | None = None
    folds: int = 5
    fold_limit: int | None = None
    budget_minutes: float = 10.0
    device: str = "auto"
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    seed: int = 0
    size: str = "auto"
    max_cases: int | None = None
    reuse: bool = True

    def validate(self) -> None:
        if self.budget_minutes <= 0:
            raise InputError(f"--budget-minutes must be positive, got {self.budget_minutes}")
        if self.fold_limit is not None and not 1 <= self.fold_limit <= self.folds:
            raise InputError(f"--fold-limit must be between 1 and --folds ({self.folds}), got {self.fold_limit}")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise InputError(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")


def run_benchmark(
    config: BenchmarkConfig, progress: ProgressCallback | None = None, cancel: CancelToken | None = None
) -> dict[str, Any]:
    """Split, train and evaluate every method on every selected fold; write and return the results."""
    from .report import write_report

    config.validate()
    out_dir = Path(config.out_dir)
    data_dir = Path(config.data_dir) if config.data_dir else default_data_dir()
    device = resolve_device(config.device)
    size = config.size if config.size != "auto" else ("standard" if device.type == "cuda" else "tiny")
    case_ids = discover_cases(data_dir, config.max_cases)
    manifest = make_manifest(DATASET, hash_cases(data_dir, case_ids), config.folds, config.seed)
    manifest_path = save_manifest(manifest, out_dir)
    fold_indices = list(range(config.fold_limit or config.folds))
    results: dict[str, list[dict[str, Any]]] = {m: [] for m in config.methods}
    total = len(fold_indices) * len(config.methods)
    for fold in fold_indices:
        for method in config.methods:
            check(cancel)
            report(progress, "benchmark", sum(map(len, results.values())), total, f"{method} fold {fold}")
            job = _job(config, manifest, manifest_path, data_dir, method, fold, str(device), size)
            result = _reusable(job) if config.reuse else None
            if result is None:
                hard_limit = job.budget_seconds * HARD_LIMIT_FACTOR + INFERENCE_ALLOWANCE_S
                result = run_isolated(job, hard_limit, progress, cancel)
            if result.get("status") == "ok":
                result["scores"] = _score(job, manifest.fold(fold).test, data_dir)
            results[method].append(result)
    report(progress, "benchmark", total, total)
    summary = _assemble(config, manifest, size, device, fold_indices, results)
    write_report(summary, out_dir)
    return summary


def _job(config: BenchmarkConfig, manifest: SplitManifest, manifest_path: Path, data_dir: Path, method: str, fold: int, device: str, size: str) -> Job:
    job_dir = Path(config.out_dir) / "jobs" / f"fold{fold}" / method
    return Job(
        method=method,
        fold=fold,
        data_dir=str(data_dir),
        manifest_path=str(manifest_path),
        split_sha256=manifest.sha256,
        budget_seconds=config.budget_minutes * 60.0,
        device=device,
        seed=config.seed,
        size=size,
        threads=torch.get_num_threads(),
        job_dir=str(job_dir),
        predictions_dir=str(Path(config.out_dir) / "predictions" / method),
    )


def _reusable(job: Job) -> dict[str, Any] | None:
    """A finished result of exactly this job (same split, budget, device, seed, size), if one is stored."""
    if not job.result_path.exists():
        return None
    try:
        stored = json.loads(job.result_path.read_text())
    except json.JSONDecodeError:
        return None
    if stored.get("job") != job.identity() or stored.get("status") != "ok":
        return None
    return stored


def _score(job: Job, test_ids: tuple[str, ...], data_dir: Path) -> list[dict[str, Any]]:
    """Score the stored predictions against the manual labels (outside the method's process and time)."""
    scores = []
    for case_id in test_ids:
        reference = load_volume(case_files(data_dir, case_id)[1], label=True)
        prediction = load_volume(Path(job.predictions_dir) / f"{case_id}.nii.gz", label=True)
        scores.append(score_case(case_id, prediction, reference))
    return scores


def _assemble(
    config: BenchmarkConfig,
    manifest: SplitManifest,
    size: str,
    device: torch.device,
    folds: list[int],
    results: dict[str, list[dict[str, Any]]],
) -> dict[str, Any]:
    methods = {key: _method_summary(key, runs) for key, runs in results.items()}
    tested = sorted(c for f in folds for c in manifest.fold(f).test)
    return {
        "dataset": DATASET,
        "split": {"sha256": manifest.sha256, "seed": manifest.seed, "n_folds": manifest.n_folds, "folds_run": folds,
                  "n_cases": len(manifest.case_ids), "n_test_cases": len(tested), "preprocessing": manifest.preprocessing},
        "config": {**{k: v for k, v in asdict(config).items() if k not in ("out_dir", "data_dir", "reuse")}, "size": size},
        "environment": _environment(device),
        "methods": methods,
    }


def _method_summary(key: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One method's row: scores pooled over folds, costs averaged over folds; or why it has no scores."""
    cls = METHODS[key]
    base = {"key": key, "title": cls.title, "paper_column": cls.paper_column, "description": cls.description}
    bad = [r for r in runs if r.get("status") != "ok"]
    if bad:
        return {**base, "status": bad[0]["status"], "folds": [r["fold"] for r in bad]}
    per_case = [s for r in runs for s in r["scores"]]
    infer = [t for r in runs for t in r["infer_seconds"].values()]
    gpu = [r["peak_gpu_mb"] for r in runs if r.get("peak_gpu_mb") is not None]
    return {
        **base,
        "status": "ok",
        "description": runs[0].get("description", cls.description),
        "summary": summarise(per_case),
        "per_case": per_case,
        "train_seconds": sum(r["fit"]["train_seconds"] for r in runs) / len(runs),
        "train_cpu_seconds": sum(r.get("train_cpu_seconds", math.nan) for r in runs) / len(runs),
        "epochs": sum(r["fit"]["epochs"] for r in runs) / len(runs),
        "iterations": sum(r["fit"]["iterations"] for r in runs) / len(runs),
        "notes": sorted({n for r in runs for n in r["fit"]["notes"]}),
        "infer_seconds_per_case": sum(infer) / len(infer) if infer else math.nan,
        "parameters": runs[0]["parameters"],
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "peak_gpu_mb": max(gpu) if gpu else None,
    }


def _environment(device: torch.device) -> dict[str, Any]:
    import monai

    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.processor() or platform.machine()})",
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
