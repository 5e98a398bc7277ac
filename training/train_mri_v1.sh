#!/usr/bin/env bash
# mri-v1 and its same-budget MONAI 3D UNet (1 mm, data sets balanced the same way), trained side by side
# on 2 CPU cores (one thread each) on the cases of training/mri_sets.sh, then both scored on the held-out
# subjects (tools/mri_v1_eval.py).
#   bash training/train_mri_v1.sh [MINUTES]     (from the repository root, with the venv active)
set -euo pipefail
MINUTES=${1:-50}
. training/mri_sets.sh
mkdir -p runs
OMP_NUM_THREADS=1 python training/tools/mri_v1_eval.py --train $TRAIN --heldout $HELD --minutes "$MINUTES" \
  --json runs/mri-unet-eval.json > runs/mri-unet.log 2>&1 &
OMP_NUM_THREADS=1 medfound train-seg --model mri $TRAIN --out-name mri-v1 --work-dir runs/mri-v1 --resume \
  --output-dir runs/mri-v1-model --max-minutes "$MINUTES" --checkpoint-every 100 --device cpu --quiet > runs/mri-v1.log 2>&1
wait
OMP_NUM_THREADS=2 python training/tools/mri_v1_eval.py --model runs/mri-v1-model --heldout $HELD \
  --baseline-json runs/mri-unet-eval.json --json runs/mri-v1-eval.json
