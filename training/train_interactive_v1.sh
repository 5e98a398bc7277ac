#!/usr/bin/env bash
# interactive-v1: the class-agnostic click/box/stroke decoder on the frozen CT foundation encoder,
# trained with simulated interaction on 2 CPU cores, a checkpoint chosen on validation patients, then
# scored on the held-out patients against classical region growing and the text model (the intensity
# engine is a separate, slower run: docs/interactive.md). Budget: feature caching (2 threads, ~8 min for the 64 training CTs; shared
# with ct-v1's recipe) + MINUTES of decoder training on 2 threads.
#   bash training/train_interactive_v1.sh [MINUTES]     (from the repository root, with the venv active)
set -euo pipefail
MINUTES=${1:-60}
. training/ct_sets.sh
mkdir -p runs
python -c "import sys; from medfoundcore.data.datasets import find_cases; from medfoundcore.train.ct_features import cache_cases; cache_cases(find_cases(sys.argv[1:]), 'runs/ct-cache/pretrained')" $TRAIN
OMP_NUM_THREADS=2 medfound train-seg --model interactive $TRAIN --out-name interactive-v1 --work-dir runs/interactive-v1 \
  --feature-cache runs/ct-cache/pretrained --output-dir runs/interactive-v1-model --steps 8000 --max-minutes "$MINUTES" \
  --lr 2e-3 --checkpoint-every 250 --device cpu --progress-json > runs/interactive-v1.log
# the checkpoint that ships is chosen on OpenKBP validation patients (never the test patients)
V="$(ls $D/openkbp/validation_pt_*_img.nii.gz | sort -V | head -5)"
OMP_NUM_THREADS=2 python training/tools/select_interactive_checkpoint.py --work-dir runs/interactive-v1 \
  --final runs/interactive-v1-model --steps 750 1500 2500 3500 4750 --validation $V --scores runs/sweep \
  --output-dir runs/interactive-v1-selected
OMP_NUM_THREADS=2 medfound bench click --model runs/interactive-v1-selected --heldout $HELD --structures $CLICK_S \
  --arms learned region-growing text --clicks 5 --json runs/click-eval-selected.json
