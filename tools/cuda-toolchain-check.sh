#!/usr/bin/env bash
# The CUDA toolchain check: the project next to the real numba-cuda, no GPU needed.
#
#     tools/cuda-toolchain-check.sh            # .ci/run runs it before the main suite
#
# In a virtual environment of its own (${DIVA_CUDA_VENV:-.venv-cuda}), install the project
# with its test extras, numba-cuda with libNVVM from NVIDIA's wheels (`numba-cuda[cu13]`)
# and ptxas from the matching nvcc wheel, then:
#   1. walk every module of the package: none has a dotted name containing `numba.cuda`
#      (numba-cuda's import hook takes such a module over and recurses forever), every one
#      imports on the real CUDA target, `python -m diva_numba --help` runs
#      (tests/test_package_modules.py);
#   2. no low-occupancy warning with the runtime defaults (tests/test_cuda_warnings.py);
#   3. every kernel compiled for sm_90 by NVVM, with the argument types the real dispatcher
#      gives CuPy arrays, assembled by ptxas, and its PTX free of float64 arithmetic unless
#      listed as deliberate (tests/test_cuda_ptx.py; DIVA_TEST_PTX=1 makes a missing
#      compiler a failure, not a skip), then a summary of what the compiler found;
#   4. the command-line tests, which import the whole command line (tests/test_cli_*.py).
# DIVA_CUDA_MAJOR=12 checks the CUDA 12 wheels instead.
# Exit status: non-zero when any step fails.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${DIVA_CUDA_VENV:-.venv-cuda}
major=${DIVA_CUDA_MAJOR:-13}
started=$SECONDS
report=$(mktemp)
trap 'rm -f "$report"' EXIT

say() { printf 'cuda-toolchain-check: %s (%d s)\n' "$*" $((SECONDS - started)); }

if [ ! -x "$venv/bin/python" ]; then
    "${PYTHON:-python3}" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip
# cuda-toolkit's nvcc extra brings ptxas of the same release as numba-cuda's libNVVM.
"$venv/bin/python" -m pip install --quiet -e ".[test]" "numba-cuda[cu$major]" \
    "cuda-toolkit[nvcc]==$major.*"
say "installed: $("$venv/bin/python" -m pip list --format=freeze 2>/dev/null |
    grep -iE '^(numba|numba[-_]cuda|llvmlite|cuda[-_]toolkit|nvidia[-_]nvvm|nvidia[-_]cuda[-_]nvcc)==' |
    tr '\n' ' ')"

# Numba's and OpenBLAS's thread pools must not spin while the other works.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}" OPENBLAS_THREAD_TIMEOUT="${OPENBLAS_THREAD_TIMEOUT:-4}"
status=0
# A test module that cannot even be imported fails, and the others still run.
DIVA_TEST_PTX=1 DIVA_PTX_REPORT="$report" "$venv/bin/python" -m pytest -q -p no:cacheprovider \
    --continue-on-collection-errors tests/test_package_modules.py tests/test_cuda_warnings.py tests/test_cuda_ptx.py \
    tests/test_cli_*.py || status=$?
say "what the CUDA compiler found:"
if [ -s "$report" ]; then
    "$venv/bin/python" tests/ptx_summary.py "$report"
else
    echo "no report: the kernels were not compiled (see the failures above)"
    [ "$status" -ne 0 ] || status=1
fi
say "done, exit status $status"
exit "$status"
