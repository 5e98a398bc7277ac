#!/usr/bin/env bash
# ct-v1 and its same-budget MONAI UNet baseline, trained side by side on 2 CPU cores (one each), then
# both scored on the held-out patients. Training set: TRAIN_ALL of training/ct_sets.sh (145 CTs and 11
# simulated appearances of the abdominal one). Budget: ct-v1 = feature caching (2 threads, ~14 min when
# nothing is cached, done first) + MINUTES of decoder training on 1 thread; the UNet = MINUTES + EXTRA
# on 1 thread (EXTRA, default 40: at least the caching's ~28 core-minutes), so the baseline is not starved.
#   bash training/train_ct_v1.sh [MINUTES] [EXTRA]     (from the repository root, with the venv active)
set -euo pipefail
MINUTES=${1:-70}
EXTRA=${2:-40}
. training/ct_sets.sh
mkdir -p runs
python training/tools/ct_variants.py "$D/totalsegmentator/ts_ct_full" --out "$VARIANTS"
python -c "import sys; from medfoundcore.data.datasets import find_cases; from medfoundcore.train.ct_features import cache_cases; cache_cases(find_cases(sys.argv[1:]), 'runs/ct-cache/pretrained')" $TRAIN_ALL
OMP_NUM_THREADS=1 python training/tools/ct_v1_baseline.py --train $TRAIN_ALL --heldout $HELD --structures $S \
  --minutes $((MINUTES + EXTRA)) --json runs/unet-eval.json > runs/unet.log 2>&1 &
OMP_NUM_THREADS=1 medfound train-seg --model ct $TRAIN_ALL --structures $K --out-name ct-v1 --work-dir runs/ct-v1 \
  --feature-cache runs/ct-cache/pretrained --output-dir runs/ct-v1-model --steps 16000 --max-minutes "$MINUTES" \
  --lr 2e-3 --checkpoint-every 250 --device cpu --quiet > runs/ct-v1.log 2>&1
wait
python training/tools/ct_v1_baseline.py --model runs/ct-v1-model --heldout $HELD --structures $S \
  --baseline-json runs/unet-eval.json --json runs/ct-v1-eval.json
