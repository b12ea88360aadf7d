#!/usr/bin/env bash
# Create .venv and install otcl with everything the pipelines, the tests and the docs build need.
# TORCH_SPEC picks the torch build (default: the CPU wheel torch==2.13.0; any torch>=2.2 works).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  .venv/bin/python -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
fi
.venv/bin/python -m pip install -q -e ".[train,test,docs]"
echo "otcl installed in .venv ($(.venv/bin/python -c 'import torch, otcl; print("otcl", otcl.__version__, "torch", torch.__version__)'))"
