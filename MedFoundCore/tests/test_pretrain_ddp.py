"""DDP pretraining: two CPU processes under torchrun (gloo) must end with identical replicas."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def test_torchrun_two_cpu_ranks_hold_identical_parameters(shared_data: Path, tmp_path: Path) -> None:
    work = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "medfoundcore.cli", "pretrain",
        str(shared_data / "totalsegmentator"), str(shared_data / "spinegeneric_ivadomed"),
        "--work-dir", str(work), "--encoder", "tiny", "--crop-size", "16", "--spacing", "3",
        "--steps", "3", "--batch-size", "1", "--lr", "1e-3", "--checkpoint-every", "3", "--eval-every", "3",
        "--device", "cpu", "--quiet",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]

    hashes = {p.name: p.read_text().strip() for p in sorted((work / "replicas").glob("rank-*.sha256"))}
    assert sorted(hashes) == ["rank-0.sha256", "rank-1.sha256"]
    assert len(set(hashes.values())) == 1, hashes
    metrics = json.loads((work / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    assert metrics["replica_hashes"] == [hashes["rank-0.sha256"]] * 2
    assert len(metrics["history"]) == 3 and all(h["total"] > 0 for h in metrics["history"])
