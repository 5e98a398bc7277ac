#!/usr/bin/env bash
# Reproduce the shipped encoder (medfoundcore/weights/encoder-v1) on a CPU: every real volume in
# ../shared/data plus Debian's invesalius-examples head CT (converted from .inv3 to NIfTI).
#   training/pretrain_shipped.sh [WORK_DIR]        (default /tmp/medfound-encoder-v1)
# Then install it into the package with training/tools/ship_encoder.py WORK_DIR/encoder encoder-v1.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(dirname "$HERE")"
DATA="${MEDFOUND_DATA:-$REPO/../shared/data}"
WORK="${1:-/tmp/medfound-encoder-v1}"
EXTRA="$WORK/extra-volumes"
mkdir -p "$EXTRA"
INV3=/usr/share/doc/invesalius-examples/examples/Cranium.inv3
if [ -f "$INV3" ] && [ ! -f "$EXTRA/invesalius_cranium.nii.gz" ]; then
  python "$HERE/tools/inv3_to_nifti.py" "$INV3" "$EXTRA/invesalius_cranium.nii.gz"
fi
export OMP_NUM_THREADS=1
exec nice -n 10 medfound pretrain "$DATA" "$EXTRA" --work-dir "$WORK" --config "$HERE/configs/pretrain_cpu_shipped.yaml" --device cpu
