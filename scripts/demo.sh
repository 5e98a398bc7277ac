#!/usr/bin/env bash
# Set up (if needed) and run the main job: text-prompted segmentation of a real abdominal CT with
# the shipped starter model; writes the label map and a JSON report (volume, slices, ω per prompt).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
DATA=${MEDFOUND_DATA:-$(cd .. && pwd)/shared/data}
IMAGE=${1:-$DATA/totalsegmentator/ts_ct_full_img.nii.gz}
OUT=${2:-runs/demo}
mkdir -p "$OUT"
medfound segment "$IMAGE" -p "liver in abdominal CT" -p spleen -p "left kidney" -p "right kidney" \
    -o "$OUT/segmentation.nii.gz" --json "$OUT/report.json"
echo "segmentation: $OUT/segmentation.nii.gz   report: $OUT/report.json"
