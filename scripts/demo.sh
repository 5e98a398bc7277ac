#!/usr/bin/env bash
# Set up (if needed) and run the main job: text-prompted segmentation of a real abdominal CT of a
# patient no MedFound model was trained on (MSD spleen_8), with the default CT model ct-v1 (frozen
# pretrained CT foundation encoder + 3D text decoder); writes the label map and a JSON report.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
DATA=${MEDFOUND_DATA:-$(cd .. && pwd)/shared/data}
IMAGE=${1:-$DATA/msd_spleen_clara/spleen_8_img.nii.gz}
OUT=${2:-runs/demo}
mkdir -p "$OUT"
medfound segment "$IMAGE" -p "liver in abdominal CT" -p spleen -p "left kidney" -p "right kidney" \
    -o "$OUT/segmentation.nii.gz" --json "$OUT/report.json"
echo "segmentation: $OUT/segmentation.nii.gz   report: $OUT/report.json"
