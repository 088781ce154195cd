# The dry run's stubs for tools/gpu-check.sh (sourced by `tools/gpu-check.sh --dry-run`):
# each step's output in its tool's format, and no GPU. GPU_CHECK_STUB_FAIL,
# GPU_CHECK_STUB_HANG and GPU_CHECK_STUB_STUCK name steps whose stub fails, hangs, or
# hangs deaf to SIGTERM (as a process stuck in a driver call would).
# shellcheck shell=bash

stub() {
    local number=$1
    case " ${GPU_CHECK_STUB_STUCK:-} " in
        *" $number "*) trap '' TERM ;; # deaf to timeout's TERM: killed 5 s later
    esac
    case " ${GPU_CHECK_STUB_HANG:-} ${GPU_CHECK_STUB_STUCK:-} " in
        *" $number "*)
            echo "stub $number: partial output, then no end (dry run)"
            sleep 3600
            ;;
    esac
    case $number in
        1) printf 'name, driver_version, memory.total [MiB], compute_cap\nStub GPU (dry run), 0.0, 0 MiB, 9.0\n'
           printf 'cupy 0.0 (dry run) | CUDA runtime 0.0 | driver 0.0\n'
           printf 'device 0: Stub GPU (dry run) | compute capability 9.0 | SMs 0 | L2 0 MiB\n' ;;
        2) echo "imports ok (dry run): no install" ;;
        3) echo "numba (dry run) CUDA kernel ran on Stub GPU (dry run) cc (9, 0)" ;;
        4a) echo "device: Stub GPU (dry run); pair 448x448"
            local iterations
            for iterations in ${ANALOGY_ITERS:-20 100}; do
                printf '\n## --lbfgs-iters %s: 1.0 s end to end\nnnf_ab median error 1.00 px\n' "$iterations"
            done ;;
        4b | 4c) printf 'frame  wall s synthesis s  share\n    0    2.00       0.100     5%%\n'
                 printf 'later frames: 1.00 s/frame, synthesis 0.100 s (10%%); frame 0 2.0 s; whole run 3.0 s for 2 frames\n' ;;
        5a) printf -- '- device: Stub GPU (dry run)\n- memory bandwidth: 1.0 GB/s (dry run)\n- matmul rate: 1.0 GFLOP/s (dry run)\n\n'
            printf '| kernel | case | shape | runs | median ms | best ms | MB | GFLOP | GB/s | GFLOP/s | %% of limit |\n'
            printf '| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n'
            printf '| vote | relu3_1 | 256x112x112 | 1 | 1.000 | 1.000 | 1.0 | | 1.0 | | 1.0 (bandwidth) |\n' ;;
        5b) echo "level 2: graph used; first replay vs eager: identical (dry run); evaluation 1.000 ms eager, 0.500 ms graph (1 calls each, 56x56 input)"
            echo "CUDA graphs: used at every level" ;;
        6) echo "1 passed in 0.01s (dry run)" ;;
    esac
    case " ${GPU_CHECK_STUB_FAIL:-} " in
        *" $number "*)
            echo "Error: stub $number fails (dry run)" >&2
            return 1
            ;;
    esac
    return 0
}
export -f stub
