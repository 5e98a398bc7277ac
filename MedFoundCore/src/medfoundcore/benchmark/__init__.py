"""Benchmark harness: MedFound's methods and MONAI baselines on MSD Hippocampus under one protocol.

``run_benchmark(BenchmarkConfig(...))`` makes (or re-checks) a hashed 5-fold split manifest, trains and
evaluates every method in its own process under the same wall-clock budget, and writes results.json,
results.md (with the 3DME paper's Table I beside ours) and a per-case Dice box plot.
"""

from .protocol import SplitManifest, load_manifest, make_manifest
from .runner import BenchmarkConfig, run_benchmark

__all__ = ["BenchmarkConfig", "SplitManifest", "load_manifest", "make_manifest", "run_benchmark"]
