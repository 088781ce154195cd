#!/usr/bin/env bash
# Set up a virtual environment (once) and run the linters and the test suite.
# Extra arguments go to pytest, e.g. `tools/test.sh -m "not model"` for the fast suite.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${DIVA_VENV:-.venv}"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet -e ".[test]"
"$venv/bin/ruff" check .
"$venv/bin/ruff" format --check .
# Numba's and OpenBLAS's thread pools must not spin while the other works.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}" OPENBLAS_THREAD_TIMEOUT="${OPENBLAS_THREAD_TIMEOUT:-4}"
exec "$venv/bin/python" -m pytest "$@"
