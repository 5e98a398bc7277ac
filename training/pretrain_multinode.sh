#!/usr/bin/env bash
# 3DME pretraining over several nodes with torchrun's c10d rendezvous. Run the same command on every
# node (or let training/pretrain.sbatch do it):
#   NNODES=4 RDZV_HOST=node001 training/pretrain_multinode.sh WORK_DIR DATA_DIR [...]
# WORK_DIR and the data must be on a file system all nodes share.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
WORK="$1"; shift
CONFIG="${CONFIG:-$HERE/configs/pretrain_gpu_paper.yaml}"
: "${NNODES:?set NNODES (number of nodes)}"
: "${RDZV_HOST:?set RDZV_HOST (host name of the rendezvous node)}"
RDZV_PORT="${RDZV_PORT:-29500}"
NPROC="${NPROC:-8}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-4}"
exec torchrun --nnodes "$NNODES" --nproc_per_node "$NPROC" \
  --rdzv_backend c10d --rdzv_endpoint "$RDZV_HOST:$RDZV_PORT" --rdzv_id "${RDZV_ID:-medfound-pretrain}" \
  -m medfoundcore.cli pretrain "$@" --work-dir "$WORK" --config "$CONFIG" --device cuda --quiet
