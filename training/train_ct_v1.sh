#!/usr/bin/env bash
# ct-v1 and its same-budget MONAI UNet baseline, trained side by side on 2 CPU cores (one each), then
# both scored on the held-out patients. Budget: ct-v1 = feature caching (2 threads, ~8 min, done first)
# + MINUTES of decoder training on 1 thread; the UNet = MINUTES + 16 on 1 thread (the caching's
# core-minutes), so the baseline is not starved.
#   bash training/train_ct_v1.sh [MINUTES]     (from the repository root, with the venv active)
set -euo pipefail
MINUTES=${1:-60}
. training/ct_sets.sh
mkdir -p runs
python -c "import sys; from medfoundcore.data.datasets import find_cases; from medfoundcore.train.ct_features import cache_cases; cache_cases(find_cases(sys.argv[1:]), 'runs/ct-cache/pretrained')" $TRAIN
OMP_NUM_THREADS=1 python training/tools/ct_v1_baseline.py --train $TRAIN --heldout $HELD --structures $S \
  --minutes $((MINUTES + 16)) --json runs/unet-eval.json > runs/unet.log 2>&1 &
OMP_NUM_THREADS=1 medfound train-seg --model ct $TRAIN --structures $K --out-name ct-v1 --work-dir runs/ct-v1 \
  --feature-cache runs/ct-cache/pretrained --output-dir runs/ct-v1-model --steps 6000 --max-minutes "$MINUTES" \
  --lr 2e-3 --checkpoint-every 250 --device cpu --quiet > runs/ct-v1.log 2>&1
wait
python training/tools/ct_v1_baseline.py --model runs/ct-v1-model --heldout $HELD --structures $S \
  --baseline-json runs/unet-eval.json --json runs/ct-v1-eval.json
