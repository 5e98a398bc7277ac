#!/usr/bin/env bash
# 3DME-S0 (frozen encoder, head only) and 3DME-S10 (encoder fine-tuned, 10 epochs) on MSD hippocampus.
#   training/finetune_hippocampus.sh [ENCODER] [DATA_DIR]
# ENCODER defaults to the shipped encoder-v1; DATA_DIR to ../shared/data/msd_hippocampus (or any
# Task04_Hippocampus folder with dataset.json). Models are installed as hippo-s0 / hippo-s10.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ENCODER="${1:-encoder-v1}"
DATA="${2:-${MEDFOUND_DATA:-$HERE/../../shared/data}/msd_hippocampus}"
DEVICE="${DEVICE:-auto}"
medfound finetune "$DATA" --encoder "$ENCODER" --out-name hippo-s0 --config "$HERE/configs/finetune_hippocampus.yaml" --freeze-encoder --device "$DEVICE"
medfound finetune "$DATA" --encoder "$ENCODER" --out-name hippo-s10 --config "$HERE/configs/finetune_hippocampus.yaml" --train-encoder --device "$DEVICE"
