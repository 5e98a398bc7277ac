#!/usr/bin/env bash
# Set up (if needed) and run the main job: text-prompted segmentation of a real head-and-neck CT of a
# patient no MedFound model was trained on (OpenKBP test_pt_243, manual radiotherapy contours), with
# the default CT model ct-v1 (frozen pretrained CT foundation encoder + 3D text decoder); writes the
# label map and a JSON report. Pass your own image (and prompts after the output folder) to change it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
DATA=${MEDFOUND_DATA:-$(cd .. && pwd)/shared/data}
IMAGE=${1:-$DATA/openkbp/test_pt_243_img.nii.gz}
OUT=${2:-runs/demo}
shift $(( $# > 2 ? 2 : $# ))
PROMPTS=("$@")
[ ${#PROMPTS[@]} -gt 0 ] || PROMPTS=(brainstem "left parotid gland" "right parotid gland" mandible "spinal cord")
ARGS=()
for p in "${PROMPTS[@]}"; do ARGS+=(-p "$p"); done
mkdir -p "$OUT"
medfound segment "$IMAGE" "${ARGS[@]}" -o "$OUT/segmentation.nii.gz" --json "$OUT/report.json"
echo "segmentation: $OUT/segmentation.nii.gz   report: $OUT/report.json"
