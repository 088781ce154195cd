"""A fake GPU for the device probe: Numba's CUDA target and CuPy stood in by host code.

:class:`FakeCuda` runs the probe's kernel function in Python, one thread after the
other (``cuda.grid`` returns the current thread), so the kernel body the probe
compiles on a real GPU is what runs here too; :class:`FakeCupy` keeps its arrays on
the host. Each failure mode of a real set-up is injected by a keyword: the error a
compile or launch raises, a ``matmul`` that raises, wrong values read back.
:func:`install` puts both behind ``diva_numba.gpu.device`` with a fresh probe cache.
"""

from __future__ import annotations

import functools
import types

import numpy as np
from numba.core.errors import TypingError

import diva_numba.cli.system_info as info_module
import diva_numba.gpu.device as device_module

GPU_NAME = "Fake GPU 80 GB"


class NvvmSupportError(ImportError):
    """Shaped like Numba's: libNVVM could not be loaded."""


class LinkerError(RuntimeError):
    """Shaped like Numba's: the driver's linker rejected the PTX."""


class CudaAPIError(Exception):
    """Shaped like Numba's driver error."""


class CUBLASError(RuntimeError):
    """Shaped like CuPy's cupy_backends.cuda.libs.cublas.CUBLASError."""


NVVM_MISSING = NvvmSupportError(
    "libNVVM cannot be found. Do `conda install cudatoolkit`:\n"
    "libnvvm.so: cannot open shared object file: No such file or directory"
)
PTX_TOO_NEW = LinkerError(
    "[222] Call to cuLinkAddData results in CUDA_ERROR_UNSUPPORTED_PTX_VERSION\n"
    "ptxas application ptx input, line 9; fatal   : Unsupported .version 8.7; current "
    "version is '8.4'"
)
TYPING_ERROR = TypingError(
    "Failed in cuda mode pipeline (step: nopython frontend)\n"
    "No implementation of function Function(<built-in function max>) found for signature:\n"
    " \n >>> max(float32, float64)"
)
ILLEGAL_ADDRESS = CudaAPIError("[700] Call to cuLaunchKernel results in CUDA_ERROR_ILLEGAL_ADDRESS")
CUBLAS_FAILURE = CUBLASError("CUBLAS_STATUS_NOT_INITIALIZED")


class FakeGpuArray(np.ndarray):
    """A host array with CuPy's ``get``."""

    def get(self):
        return np.array(self)


def on_gpu(array) -> FakeGpuArray:
    return np.array(array).view(FakeGpuArray)


class FakeCuda:
    """``numba.cuda`` for a GPU that works unless told how to fail.

    Parameters
    ----------
    available : bool or Exception
        What ``is_available()`` returns, or raises.
    compile_error, launch_error : Exception, optional
        Raised by the first launch (Numba compiles then) or by every launch.
    corrupt : bool
        The kernel runs, but one value comes back wrong.
    """

    def __init__(self, *, available=True, compile_error=None, launch_error=None, corrupt=False):
        self.available = available
        self.compile_error = compile_error
        self.launch_error = launch_error
        self.corrupt = corrupt
        self.compiled = 0
        self.launches = 0
        self._thread = 0

    def is_available(self):
        if isinstance(self.available, BaseException):
            raise self.available
        return self.available

    def grid(self, ndim):
        assert ndim == 1
        return self._thread

    def synchronize(self):
        pass

    def jit(self, function):
        cuda = self

        class Dispatcher:
            def __getitem__(self, configuration):
                blocks, threads = configuration

                def launch(*args):
                    if cuda.compiled == 0:
                        if cuda.compile_error is not None:
                            raise cuda.compile_error
                        cuda.compiled += 1
                    if cuda.launch_error is not None:
                        raise cuda.launch_error
                    cuda.launches += 1
                    for cuda._thread in range(blocks * threads):
                        function(*args)
                    if cuda.corrupt:
                        args[-1][3] += 1

                return launch

        return Dispatcher()


class FakeCupy(types.SimpleNamespace):
    """``cupy`` on the host, with a working cuBLAS unless told otherwise.

    Parameters
    ----------
    devices : int
        What ``getDeviceCount()`` returns.
    matmul_error : Exception, optional
        Raised by ``matmul``.
    wrong_product : bool
        ``matmul`` returns zeros.
    runtime, driver : int
        CUDA versions as CuPy reports them (``12080`` is 12.8).
    """

    float32 = np.float32

    def __init__(
        self, *, devices=1, matmul_error=None, wrong_product=False, runtime=12080, driver=12040
    ):
        runtime_api = types.SimpleNamespace(
            getDeviceCount=lambda: devices,
            runtimeGetVersion=lambda: runtime,
            driverGetVersion=lambda: driver,
            getDeviceProperties=lambda device_id: {"name": GPU_NAME.encode()},
        )
        super().__init__(
            cuda=types.SimpleNamespace(
                runtime=runtime_api, Device=lambda: types.SimpleNamespace(id=0)
            )
        )
        self.matmul_error = matmul_error
        self.wrong_product = wrong_product

    def asarray(self, array):
        return on_gpu(array)

    def zeros(self, shape, dtype=np.float32):
        return on_gpu(np.zeros(shape, dtype))

    def empty(self, shape, dtype=np.float32):
        return on_gpu(np.empty(shape, dtype))

    def arange(self, *args, dtype=None):
        return on_gpu(np.arange(*args, dtype=dtype))

    def matmul(self, a, b, out=None):
        if self.matmul_error is not None:
            raise self.matmul_error
        result = np.matmul(np.asarray(a), np.asarray(b))
        if self.wrong_product:
            result = np.zeros_like(result)
        if out is None:
            return on_gpu(result)
        out[...] = result
        return out


def install(monkeypatch, cuda: FakeCuda | None = None, cupy: FakeCupy | None = None):
    """Put the fakes behind ``diva_numba.gpu.device``'s probe, with a probe cache of their own.

    The real, cached ``cuda_status`` is left alone (and restored as it was): each test
    gets a fresh cache, so that the probe runs again against its fakes.
    """
    cuda = cuda or FakeCuda()
    cupy = cupy or FakeCupy()
    monkeypatch.setattr(device_module, "_numba_cuda", lambda: cuda)
    monkeypatch.setattr(device_module, "_cupy", lambda: cupy)
    fresh = functools.cache(device_module.cuda_status.__wrapped__)
    monkeypatch.setattr(device_module, "cuda_status", fresh)
    monkeypatch.setattr(info_module, "cuda_status", fresh)
    return cuda, cupy


#: id: (FakeCuda keywords, FakeCupy keywords, what the reason must contain).
FAULTS = {
    "no-gpu": ({"available": False}, {}, "Numba sees no CUDA GPU"),
    "driver": (
        {"available": CudaAPIError("[100] Call to cuInit results in CUDA_ERROR_NO_DEVICE")},
        {},
        "Numba cannot talk to the CUDA driver (CudaAPIError: [100] Call to cuInit",
    ),
    "cupy-no-gpu": ({}, {"devices": 0}, "CuPy sees no CUDA GPU"),
    "nvvm": (
        {"compile_error": NVVM_MISSING},
        {"runtime": 13000},
        "Numba cannot compile CUDA kernels: libNVVM not found (install numba-cuda[cu13] or "
        "set CUDA_HOME)",
    ),
    "ptx": (
        {"launch_error": PTX_TOO_NEW},
        {"driver": 12040},
        "the GPU driver is older than the PTX that Numba generates "
        "(CUDA_ERROR_UNSUPPORTED_PTX_VERSION; the driver supports CUDA 12.4)",
    ),
    "typing": (
        {"compile_error": TYPING_ERROR},
        {},
        "Numba cannot compile CUDA kernels: TypingError: No implementation of function "
        "Function(<built-in function max>)",
    ),
    "launch": (
        {"launch_error": ILLEGAL_ADDRESS},
        {},
        "Numba cannot run CUDA kernels on CuPy arrays: CudaAPIError: [700] Call to "
        "cuLaunchKernel results in CUDA_ERROR_ILLEGAL_ADDRESS",
    ),
    "kernel-values": (
        {"corrupt": True},
        {},
        "the probe kernel read back wrong values from the GPU (element 3 is",
    ),
    "cublas": (
        {},
        {"matmul_error": CUBLAS_FAILURE},
        "cuBLAS failed: CUBLASError: CUBLAS_STATUS_NOT_INITIALIZED",
    ),
    "cublas-values": (
        {},
        {"wrong_product": True},
        "cuBLAS (cupy.matmul) read back wrong values from the GPU (element 1 is 0, not 10)",
    ),
}


def install_fault(monkeypatch, fault: str):
    """A fake GPU that fails its probe as ``FAULTS[fault]`` says; returns the expected reason."""
    cuda_options, cupy_options, reason = FAULTS[fault]
    install(monkeypatch, FakeCuda(**cuda_options), FakeCupy(**cupy_options))
    return reason
