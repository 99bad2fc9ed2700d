#!/usr/bin/env bash
# Set up .venv if needed, then run the linters, the type checker and the default test suite.
# Extra arguments go to pytest (for example: ./scripts/test.sh -m slow).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-env.sh
. .venv/bin/activate
ruff check refdiff_cli tests benchmarks sample_data scripts
ruff format --check refdiff_cli tests benchmarks sample_data scripts
mypy
python -m pytest "$@"
