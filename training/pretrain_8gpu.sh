#!/usr/bin/env bash
# 3DME pretraining on one node with 8 GPUs (the paper's setup: 8 GPUs x batch 2 = global batch 16).
#   training/pretrain_8gpu.sh WORK_DIR DATA_DIR [DATA_DIR ...]
# DDP over NCCL; every rank samples its own crops (seeded by rank), rank 0 writes checkpoints.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
WORK="$1"; shift
CONFIG="${CONFIG:-$HERE/configs/pretrain_gpu_paper.yaml}"
NPROC="${NPROC:-8}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-4}"
exec torchrun --standalone --nproc_per_node "$NPROC" -m medfoundcore.cli pretrain "$@" \
  --work-dir "$WORK" --config "$CONFIG" --device cuda --quiet
