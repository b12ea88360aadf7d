#!/usr/bin/env bash
# Set up (if needed), lint, check formatting, and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
dirs=(src tests)
[ -d benchmarks ] && dirs+=(benchmarks)
.venv/bin/ruff check "${dirs[@]}"
.venv/bin/ruff format --check "${dirs[@]}"
# type check ([tool.pyright] in pyproject.toml: the library and the entry point); then the public
# API as users' type checkers see it (py.typed): the library's symbols must all be typed
export PATH="$PWD/.venv/bin:$PATH"
pyright
report=$(pyright --verifytypes otcl --ignoreexternal || true)
echo "pyright --verifytypes otcl: $(grep -o 'score: .*' <<<"$report")"
if grep -E "src/otcl/(losses|ot|diagnostics|_validation)" <<<"$report"; then
  echo "untyped public symbols in the library (above)"; exit 1
fi
.venv/bin/python -m pytest tests "$@"
