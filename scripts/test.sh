#!/usr/bin/env bash
# Set up (if needed) and run every test: the core package and the headless Slicer module tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export MEDFOUND_DATA=${MEDFOUND_DATA:-$(cd .. && pwd)/shared/data}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 QT_QPA_PLATFORM=offscreen
export MEDFOUND_ARTIFACTS=${MEDFOUND_ARTIFACTS:-$PWD/artifacts}
paths=(MedFoundCore/tests)
[ -d Testing/Python ] && paths+=(Testing/Python)
python -m pytest -q -p no:cacheprovider --durations=15 "${paths[@]}" "$@"
