#!/usr/bin/env bash
# The device call of issue 14 (docs/gpu.md): every section in <= 9 minutes, results in $OUT.
#   run(command="bash benchmarks/gpu_suite.sh --commit <sha>", carry=[".data", ".gpu-state"],
#       timeout_s=600)
# .data/cifar10-jpeg.tar.gz: the CIFAR-10 copy; .gpu-state/: the previous call's $OUT/state
# (absent on the first call). Extra arguments go to benchmarks/gpu_suite.py.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
state=()
if [ -f .gpu-state/queue.json ]; then state=(--resume-from .gpu-state); fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
exec "${PYTHON:-python3}" benchmarks/gpu_suite.py --out "${OUT:?OUT is not set}" \
  ${state[@]+"${state[@]}"} "$@"
