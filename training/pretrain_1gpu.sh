#!/usr/bin/env bash
# 3DME pretraining on one GPU (bf16 autocast, gradient checkpointing) with the paper-sized encoder.
#   training/pretrain_1gpu.sh WORK_DIR DATA_DIR [DATA_DIR ...]
# A rerun with the same WORK_DIR resumes from its newest checkpoint.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
WORK="$1"; shift
CONFIG="${CONFIG:-$HERE/configs/pretrain_gpu_paper.yaml}"
exec medfound pretrain "$@" --work-dir "$WORK" --config "$CONFIG" --device cuda
