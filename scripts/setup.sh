#!/usr/bin/env bash
# Create .venv and install MedFound with everything its tests need.
# torch is installed FIRST and pinned, so no dependency can pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${MEDFOUND_TORCH:-torch==2.13.0}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
python -m pip install -q --upgrade pip
python -m pip install -q "$TORCH_SPEC"
python -m pip install -q -e "MedFoundCore[test]"
if [ -f Testing/requirements.txt ]; then python -m pip install -q -r Testing/requirements.txt; fi
python - <<'PY'
import torch, monai, SimpleITK, medfoundcore
assert "+cu" not in torch.__version__ or torch.cuda.is_available(), f"a CUDA torch build ({torch.__version__}) was pulled in"
print(f"medfound setup ok: torch {torch.__version__}, monai {monai.__version__}, SimpleITK {SimpleITK.Version_VersionString()}")
PY
