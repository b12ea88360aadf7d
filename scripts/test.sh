#!/usr/bin/env bash
# Set up (if needed), lint, check formatting, and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
dirs=(src tests)
[ -d benchmarks ] && dirs+=(benchmarks)
.venv/bin/ruff check "${dirs[@]}"
.venv/bin/ruff format --check "${dirs[@]}"
.venv/bin/python -m pytest tests "$@"
