"""Faults a long run meets: running out of memory, a full disk, signals, damaged work.

Every test drives the real command line (click's runner, or a subprocess for
signals) on a tiny random-weight model and asserts the exact user-visible
behaviour: the exit status, one `Error:` line with its advice, and that no
output is left half-written under its real name.
"""

import errno

import probe_fakes
import pytest
from cli_checks import assert_one_error, hidden_files
from click.testing import CliRunner
from fault_clips import FRAMES, analogy, make_clip, transfer, write_pair

import diva_numba.cli.common as cli_common
import diva_numba.run.analogy_files as analogy_io
import diva_numba.run.frame_loop as frame_loop
import diva_numba.run.transfer as transfer_module
from diva_numba.cli import cli
from diva_numba.gpu.device import Device, is_out_of_memory
from diva_numba.images import load_image
from diva_numba.video import probe_video


@pytest.fixture
def clip(tmp_path):
    return make_clip(tmp_path)


# --- running out of memory -------------------------------------------------------------------


class OutOfMemoryError(MemoryError):
    """Shaped like CuPy's: a MemoryError from cupy.cuda.memory."""

    __module__ = "cupy.cuda.memory"


class CudaAPIError(Exception):
    """Shaped like Numba's driver error."""


class RuntimeException(Exception):
    """Shaped like onnxruntime's unexported error class."""


GPU_OUT_OF_MEMORY = [
    OutOfMemoryError("Out of memory allocating 2,147,483,648 bytes (allocated so far: 0 bytes)."),
    CudaAPIError("[2] Call to cuMemAlloc results in CUDA_ERROR_OUT_OF_MEMORY"),
    RuntimeException(
        "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code returned while "
        "running Conv node. Failed to allocate memory for requested buffer of size 411041792"
    ),
    RuntimeError("CUBLAS_STATUS_ALLOC_FAILED"),
    RuntimeError("cudaErrorMemoryAllocation: out of memory"),
]


@pytest.mark.parametrize("error", GPU_OUT_OF_MEMORY, ids=lambda e: type(e).__name__)
def test_out_of_memory_is_recognised_in_every_library(error):
    assert is_out_of_memory(error)


@pytest.mark.parametrize(
    "error",
    [
        ValueError("operands could not be broadcast together"),
        RuntimeError("[700] Call to cuLaunchKernel results in CUDA_ERROR_ILLEGAL_ADDRESS"),
        OSError(errno.ENOSPC, "No space left on device"),
    ],
)
def test_other_errors_are_not_out_of_memory(error):
    assert not is_out_of_memory(error)


def fake_gpu(monkeypatch, *, automatic: bool):
    """Make --device resolve to a GPU that runs out of memory as soon as the model loads."""
    gpu = Device("cuda", "Test GPU 8 GB", automatic=automatic)
    real_resolve = cli_common.resolve_device

    def resolve(name="auto"):
        return real_resolve("cpu") if name == "cpu" else gpu

    monkeypatch.setattr(cli_common, "resolve_device", resolve)
    return gpu


def load_model_failing_on_gpu(real_load_model, calls):
    def load(model_path, device, **options):
        calls.append(device.kind)
        if device.is_cuda:
            raise GPU_OUT_OF_MEMORY[0]
        return real_load_model(model_path, device, **options)

    return load


@pytest.mark.parametrize("device_flag", ["cuda", "auto"])
def test_gpu_out_of_memory_is_one_line_with_advice(device_flag, tmp_path, rng, tiny_model,
                                                   monkeypatch):  # fmt: skip
    fake_gpu(monkeypatch, automatic=device_flag == "auto")
    calls = []
    monkeypatch.setattr(
        analogy_io, "load_model", load_model_failing_on_gpu(analogy_io.load_model, calls)
    )
    out = tmp_path / "out"
    result = analogy([*write_pair(tmp_path, rng), "-o", str(out), "--device", device_flag],
                     tiny_model)  # fmt: skip
    line = assert_one_error(result, 4)
    assert "out of GPU memory on Test GPU 8 GB" in line
    assert "--work-size (now 64) or --ratio" in line
    # Only a device that auto picked comes with the CPU as a way out.
    assert ("--device cpu" in line) == (device_flag == "auto")
    assert calls == ["cuda"] and not out.exists()


@pytest.mark.parametrize("answer", ["y", "n"])
def test_auto_device_offers_the_cpu_on_a_terminal(answer, tmp_path, rng, tiny_model, monkeypatch):
    fake_gpu(monkeypatch, automatic=True)
    monkeypatch.setattr(cli_common, "is_interactive", lambda: True)
    calls = []
    monkeypatch.setattr(
        analogy_io, "load_model", load_model_failing_on_gpu(analogy_io.load_model, calls)
    )
    out = tmp_path / "out"
    result = analogy([*write_pair(tmp_path, rng), "-o", str(out)], tiny_model, input=answer + "\n")
    assert "Continue on the CPU instead" in result.output
    if answer == "y":
        assert result.exit_code == 0, result.output
        assert "continuing on the CPU" in result.output
        assert calls == ["cuda", "cpu"]
        assert load_image(out / "A_prime.png").shape == (48, 64, 3)
    else:
        assert_one_error(result, 4)
        assert calls == ["cuda"] and not out.exists()


def test_host_out_of_memory_is_one_line(tmp_path, rng, tiny_model, monkeypatch):
    def exhausted(*args, **kwargs):
        raise MemoryError("Unable to allocate 3.20 GiB for an array with shape (64, 448, 448)")

    monkeypatch.setattr("diva_numba.run.analogy_files.analogy", exhausted)
    out = tmp_path / "out"
    result = analogy([*write_pair(tmp_path, rng), "-o", str(out), "--device", "cpu"], tiny_model)
    line = assert_one_error(result, 4)
    assert "out of memory on CPU" in line and "--work-size" in line and "--device cpu" not in line
    assert not out.exists()


def test_transfer_falls_back_to_the_cpu_mid_clip(clip, tmp_path, tiny_model, monkeypatch):
    """Frames done on the GPU are kept; the CPU continues from the frame that failed."""
    path, style = clip
    fake_gpu(monkeypatch, automatic=True)
    monkeypatch.setattr(cli_common, "is_interactive", lambda: True)
    real_load_model, real_analogy = transfer_module.load_model, frame_loop.analogy
    devices, frames_run = [], []

    def load(model_path, device, **options):
        devices.append(device.kind)
        model = real_load_model(model_path, cli_common.resolve_device("cpu"), **options)
        model.pretend_gpu = device.is_cuda
        return model

    def analogy_running_out_at_frame_3(model, *args, **kwargs):
        frames_run.append(model.pretend_gpu)
        if model.pretend_gpu and len(frames_run) == 3:
            raise GPU_OUT_OF_MEMORY[1]
        return real_analogy(model, *args, **kwargs)

    monkeypatch.setattr(transfer_module, "load_model", load)
    monkeypatch.setattr(frame_loop, "analogy", analogy_running_out_at_frame_3)
    out = tmp_path / "out.mp4"
    # Seeded frames: each runs the analogy that fails.
    args = [str(style), str(path), "-o", str(out), "--no-anchors"]
    result = transfer(args, tiny_model, input="y\n")
    assert result.exit_code == 0, result.output
    assert devices == ["cuda", "cpu"]
    assert frames_run == [True, True, True, False, False, False, False]
    assert "resuming after 2 of 6 frames" in result.output
    assert probe_video(out).frame_count == FRAMES
    assert not (tmp_path / "out.mp4.work").exists()


# --- a GPU that fails its probe -----------------------------------------------------------------
# The probe (device.cuda_status) runs before any work; its fakes are in probe_fakes.py.


def info(**kwargs):
    result = CliRunner().invoke(cli, ["info"], **kwargs)
    assert result.exit_code == 0, result.output
    return dict(line.split(": ", 1) for line in result.stdout.splitlines() if ": " in line)


@pytest.mark.parametrize("fault", ["nvvm", "ptx", "typing", "cublas", "cublas-values"])
def test_info_names_what_failed(fault, monkeypatch):
    reason = probe_fakes.install_fault(monkeypatch, fault)
    rows = {key.strip(): value.strip() for key, value in info().items()}
    assert rows["GPU"].startswith(f"none usable: {reason}")
    assert rows["device (auto)"] == "cpu"
    assert rows["features on the GPU"].startswith("no usable GPU; with one: ")


def test_info_on_a_working_gpu_says_what_computes_the_features(monkeypatch):
    import onnxruntime

    probe_fakes.install(monkeypatch)
    rows = {key.strip(): value.strip() for key, value in info().items()}
    assert rows["GPU"] == probe_fakes.GPU_NAME and rows["device (auto)"] == "cuda"
    assert rows["onnxruntime"] == f"onnxruntime {onnxruntime.__version__} (CPU build)"
    assert rows["onnxruntime providers"] == ", ".join(onnxruntime.get_available_providers())
    assert rows["features on the CPU"].startswith("onnxruntime, CPUExecutionProvider, ")
    assert rows["features on the GPU"] == (
        "diva-numba's own GPU forward pass (onnxruntime has no CUDA provider)"
    )
    monkeypatch.setattr(
        onnxruntime,
        "get_available_providers",
        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"],
    )
    rows = {key.strip(): value.strip() for key, value in info().items()}
    assert rows["features on the GPU"].startswith(
        "onnxruntime, CUDAExecutionProvider with TF32 off"
    )


def test_auto_runs_on_the_cpu_with_the_reason(tmp_path, rng, tiny_model, monkeypatch):
    reason = probe_fakes.install_fault(monkeypatch, "ptx")
    out = tmp_path / "out"
    result = analogy([*write_pair(tmp_path, rng), "-o", str(out)], tiny_model)
    assert result.exit_code == 0, result.output
    notices = [line for line in result.stderr.splitlines() if "using the CPU" in line]
    assert len(notices) == 1 and notices[0].startswith(f"diva-numba: using the CPU: {reason}")
    assert load_image(out / "A_prime.png").shape == (48, 64, 3)


@pytest.mark.parametrize("fault", ["nvvm", "ptx", "launch", "cublas", "kernel-values"])
def test_device_cuda_exits_4_before_any_work(fault, tmp_path, rng, tiny_model, monkeypatch):
    reason = probe_fakes.install_fault(monkeypatch, fault)
    loads = []
    monkeypatch.setattr(analogy_io, "load_model", lambda *args: loads.append(args))
    out = tmp_path / "out"
    result = analogy([*write_pair(tmp_path, rng), "-o", str(out), "--device", "cuda"], tiny_model)
    line = assert_one_error(result, 4)
    assert line.startswith(f"Error: --device cuda: no usable GPU: {reason}")
    assert loads == [] and not out.exists() and hidden_files(tmp_path) == []
