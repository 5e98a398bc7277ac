#!/usr/bin/env bash
# Small-scale ablations of the text-prompted segmenter (BiomedParse-V Tables 3-5 + synthetic data) on
# MSD Hippocampus: train on hippocampus_0??/1?? (99 cases), evaluate on hippocampus_3?? (54 cases).
# Each variant trains from scratch on one CPU thread (1 500 steps, tiny, 64 px); two run at a time.
#   training/ablate_seg_hippocampus.sh [OUT_DIR]      (default runs/abl2; finished variants are skipped)
#   python training/tools/ablation_table.py [OUT_DIR]  -> the Markdown table of docs/segmentation.md
set -uo pipefail
export OUT="${1:-runs/abl2}" DATA="${MEDFOUND_DATA:-$(cd "$(dirname "$0")/.." && pwd)/../shared/data}"
mkdir -p "$OUT"
one() {  # NAME SEED [train-seg arguments]
  local name=$1 seed=$2; shift 2
  local run="$OUT/$name-s$seed" eval_args=(--structures hippocampus_anterior hippocampus_posterior --device cpu)
  [ -f "$run.eval.json" ] && return 0
  OMP_NUM_THREADS=1 medfound train-seg "$DATA"/msd_hippocampus/hippocampus_[01]??_img.nii.gz \
    --structures hippocampus_anterior hippocampus_posterior --preset tiny --image-size 64 --steps 1500 \
    --batch-size 8 --prompts-per-image 2 --lr 1e-3 --single-view --checkpoint-every 500 --seed "$seed" \
    --device cpu --quiet --out-name "abl-$name-s$seed" --output-dir "$run" --work-dir "$OUT/work-$name-s$seed" \
    "$@" > "$run.train.log" 2>&1 || { echo "training $name-s$seed failed: $run.train.log"; return 1; }
  local test_cases=("$DATA"/msd_hippocampus/hippocampus_3??_img.nii.gz)
  OMP_NUM_THREADS=1 medfound evaluate --heldout "${test_cases[@]}" --model "$run" "${eval_args[@]}" \
    --json "$run.eval.json" > "$run.eval.log" 2>&1
  if [ "$name" = k1 ]; then  # ISD off = the same weights evaluated with raw masks
    OMP_NUM_THREADS=1 medfound evaluate --heldout "${test_cases[@]}" --model "$run" "${eval_args[@]}" \
      --no-isd --json "$OUT/k1-noisd-s$seed.eval.json" > "$OUT/k1-noisd-s$seed.eval.log" 2>&1
  fi
  echo "$(date -u +%T) done $name-s$seed"
}
export -f one
for seed in 0 1; do
  printf '%s\n' "k1 $seed --fve-k 1" "k0 $seed --fve-k 0" "k2 $seed --fve-k 2" "k3 $seed --fve-k 3" \
    "nocut $seed --fve-k 1 --no-grad-cutoff" "nosynth $seed --fve-k 1 --synth-fraction 0"
done | xargs -P 2 -L 1 bash -c 'one "$@"' _
