#!/usr/bin/env bash
# The GPU benchmark suite (docs/gpu.md): every section within a wall-time budget, results in
# $OUT; the accuracy protocol resumes from the state folder .gpu-state when it holds a ledger.
#   OUT=~/otcl-gpu/run-1 bash benchmarks/gpu_suite.sh --budget-s 540
#   rm -rf .gpu-state && cp -r ~/otcl-gpu/run-1/state .gpu-state      # then run again to resume
# .data/cifar10-jpeg.tar.gz: the CIFAR-10 ImageFolder archive (--data PATH names another).
# Extra arguments go to benchmarks/gpu_suite.py (--help lists them).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
state=()
if [ -f .gpu-state/queue.json ]; then state=(--resume-from .gpu-state); fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
exec "${PYTHON:-python3}" benchmarks/gpu_suite.py --out "${OUT:?OUT is not set}" \
  ${state[@]+"${state[@]}"} "$@"
