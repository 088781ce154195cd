"""The GPU probe of ``device.cuda_status``: every way a CUDA set-up fails, without a GPU.

The fakes of ``probe_fakes.py`` stand in for Numba's CUDA target and CuPy; the probe's
kernel body itself runs (in Python) on the fake, and compiles with the real CUDA
compiler in ``test_probe_kernel_compiles_to_ptx`` where a CUDA toolkit is found.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import probe_fakes
import pytest

import diva_numba.gpu.device as device_module
from diva_numba.errors import DeviceError
from diva_numba.gpu.device import Device, cuda_status, resolve_device


@pytest.fixture(autouse=True)
def fresh_probe():
    """The real probe's cache emptied around every test (the fakes get their own)."""
    cuda_status.cache_clear()
    yield
    cuda_status.cache_clear()


def test_working_gpu_passes_and_is_probed_once(monkeypatch):
    cuda, _ = probe_fakes.install(monkeypatch)
    assert device_module.cuda_status() == (True, "")
    auto = resolve_device("auto")
    assert auto == Device("cuda", probe_fakes.GPU_NAME, automatic=True)
    assert resolve_device("cuda") == Device("cuda", probe_fakes.GPU_NAME)
    # Compiled and launched once per process, however often the device is resolved.
    assert (cuda.compiled, cuda.launches) == (1, 1)


@pytest.mark.parametrize("fault", list(probe_fakes.FAULTS))
def test_each_failure_is_named(fault, monkeypatch):
    reason = probe_fakes.install_fault(monkeypatch, fault)
    ok, got = device_module.cuda_status()
    assert not ok
    assert got.startswith(reason), got
    assert "\n" not in got and len(got) < 300
    auto = resolve_device("auto")
    assert auto.kind == "cpu" and auto.automatic
    assert auto.note == f"using the CPU: {got}"
    with pytest.raises(DeviceError) as raised:
        resolve_device("cuda")
    assert str(raised.value) == f"--device cuda: no usable GPU: {got}"
    assert raised.value.exit_code == 4


def test_failed_probe_is_cached(monkeypatch):
    cuda, _ = probe_fakes.install(
        monkeypatch, probe_fakes.FakeCuda(launch_error=probe_fakes.PTX_TOO_NEW)
    )
    first = device_module.cuda_status()
    cuda.launch_error = None  # a second probe would pass now: it must not run
    assert device_module.cuda_status() == first
    assert resolve_device("auto").kind == "cpu"


def test_nvvm_advice_without_a_cuda_version(monkeypatch):
    cupy = probe_fakes.FakeCupy()
    cupy.cuda.runtime.runtimeGetVersion = lambda: 1 / 0
    probe_fakes.install(
        monkeypatch, probe_fakes.FakeCuda(compile_error=probe_fakes.NVVM_MISSING), cupy
    )
    _, reason = device_module.cuda_status()
    assert "libNVVM not found (install numba-cuda[cu12] or numba-cuda[cu13]" in reason


def test_ptx_advice_without_a_driver_version(monkeypatch):
    cupy = probe_fakes.FakeCupy()
    cupy.cuda.runtime.driverGetVersion = lambda: 1 / 0
    probe_fakes.install(
        monkeypatch, probe_fakes.FakeCuda(launch_error=probe_fakes.PTX_TOO_NEW), cupy
    )
    _, reason = device_module.cuda_status()
    assert "(CUDA_ERROR_UNSUPPORTED_PTX_VERSION; the driver is too old)" in reason
    assert "update the NVIDIA driver" in reason


def test_nvjitlink_wording_of_old_ptx_is_recognised(monkeypatch):
    error = RuntimeError(
        "NVJITLINK_ERROR_PTX_COMPILE error when calling nvJitLinkAddData\n"
        "ptxas application ptx input, line 9; fatal   : Unsupported .version 8.7; "
        "current version is '8.4'"
    )
    probe_fakes.install(monkeypatch, probe_fakes.FakeCuda(launch_error=error))
    _, reason = device_module.cuda_status()
    assert reason.startswith("the GPU driver is older than the PTX")


def test_long_messages_are_shortened(monkeypatch):
    error = RuntimeError("x" * 1000 + "\nsecond line")
    probe_fakes.install(monkeypatch, probe_fakes.FakeCuda(launch_error=error))
    _, reason = device_module.cuda_status()
    assert reason.endswith("...") and "second line" not in reason and len(reason) < 250


def test_cupy_that_cannot_be_imported(monkeypatch):
    monkeypatch.setattr(device_module, "_numba_cuda", lambda: probe_fakes.FakeCuda())
    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy raises ImportError
    assert cuda_status() == (
        False,
        "CuPy is not installed (pip install 'diva-numba[cuda]', [cuda13] for CUDA 13)",
    )


def test_cupy_failing_on_the_gpu(monkeypatch):
    cupy = probe_fakes.FakeCupy()
    cupy.arange = lambda *args, **kwargs: (_ for _ in ()).throw(
        RuntimeError("cudaErrorInsufficientDriver: CUDA driver version is insufficient")
    )
    probe_fakes.install(monkeypatch, cupy=cupy)
    _, reason = device_module.cuda_status()
    assert reason == (
        "CuPy cannot use the GPU (RuntimeError: cudaErrorInsufficientDriver: CUDA driver "
        "version is insufficient)"
    )


def test_the_cuda_simulator_is_not_a_gpu():
    # The test session runs Numba's CUDA simulator (tests/conftest.py).
    if os.environ.get("DIVA_TEST_GPU") == "1":
        pytest.skip("the simulator is off on a real GPU")
    assert cuda_status() == (
        False,
        "Numba's CUDA simulator is on (NUMBA_ENABLE_CUDASIM=1), not a GPU",
    )


_COMPILE_PROBE = """
import json
from numba import cuda
from numba.cuda import dispatcher
from numba.cuda.cudadrv import nvvm

try:
    nvvm.NVVM()
except Exception as exc:
    print(json.dumps({"skip": f"{type(exc).__name__}: {exc}"}))
    raise SystemExit(0)


class Target:
    compute_capability = (9, 0)


dispatcher.get_current_device = lambda: Target()  # device functions compile for it
from diva_numba.gpu.device import _probe_kernel_function

ptx, _ = cuda.compile_ptx(
    _probe_kernel_function(cuda), "void(float32[::1], float32, float32[::1])", cc=(9, 0)
)
print(json.dumps({"sm_90": ".target sm_90" in ptx}))
"""


def test_probe_kernel_compiles_to_ptx():
    """The probe's kernel, typed as CuPy arrays type, compiles with libNVVM (no GPU needed)."""
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "0"}
    result = subprocess.run(
        [sys.executable, "-c", _COMPILE_PROBE], capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.splitlines()[-1])
    if "skip" in report:
        pytest.skip(f"libNVVM is not usable here: {report['skip'][:200]}")
    assert report == {"sm_90": True}
