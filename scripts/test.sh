#!/usr/bin/env bash
# Set up (if needed), lint, check formatting, and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
dirs=(src tests)
[ -d benchmarks ] && dirs+=(benchmarks)
[ -d examples ] && dirs+=(examples)
.venv/bin/ruff check "${dirs[@]}"
.venv/bin/ruff format --check "${dirs[@]}"
# type check ([tool.pyright] in pyproject.toml: the whole package, pipelines included); then the
# public API as users' type checkers see it (py.typed): the library's symbols must all be typed
export PATH="$PWD/.venv/bin:$PATH"
pyright
report=$(pyright --verifytypes otcl --ignoreexternal || true)
score=$(grep -oE 'completeness score: [0-9.]+' <<<"$report" | grep -oE '[0-9.]+$' || true)
echo "pyright --verifytypes otcl: ${score:-?}% of the public API typed (at least 95% required)"
if grep -E "src/otcl/(losses|ot|diagnostics|_validation)" <<<"$report"; then
  echo "untyped public symbols in the library (above)"; exit 1
fi
if [ -z "$score" ] || ! awk -v s="$score" 'BEGIN { exit !(s >= 95) }'; then
  grep -E -B1 -A2 "error:" <<<"$report" | head -60
  echo "the public API is typed below 95% (untyped symbols above)"; exit 1
fi
# the reference documentation, strict: a warning or a broken reference fails
.venv/bin/sphinx-build -W --keep-going -q -b html docs build/docs
.venv/bin/python -m pytest tests "$@"
