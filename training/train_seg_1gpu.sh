#!/usr/bin/env bash
# Text-prompted 2D/FVE segmenter training (issue 3's `medfound train-seg`) on one GPU, and on 8 GPUs
# with NPROC=8 (DDP through torchrun). Arguments are passed to `medfound train-seg` unchanged:
#   training/train_seg_1gpu.sh DATA_DIR [...] --out-name NAME [--steps N]
set -euo pipefail
NPROC="${NPROC:-1}"
if [ "$NPROC" -gt 1 ]; then
  exec torchrun --standalone --nproc_per_node "$NPROC" -m medfoundcore.cli train-seg "$@" --device cuda
fi
exec medfound train-seg "$@" --device cuda
