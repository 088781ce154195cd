"""Choosing the compute device and moving arrays between host and GPU.

GPU arrays are CuPy arrays; the code imports ``cupy`` whatever CUDA build
provides it (``cupy-cuda12x``, ``cupy-cuda13x``, ...). Kernels dispatch on the
array they are given, so the rest of the pipeline only decides once, here.
:func:`cuda_status` probes the GPU once per process before any work (a Numba
kernel on CuPy arrays, a cuBLAS product), so that a broken CUDA set-up is one
line at the start of a run, not a failure in the middle of a frame.
"""

from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

import numpy as np
from numba.core.errors import NumbaError, NumbaPerformanceWarning

from diva_numba.errors import DeviceError
from diva_numba.kernels.targets import is_cuda_array

DeviceName = Literal["auto", "cuda", "cpu"]
T = TypeVar("T")
log = logging.getLogger("diva_numba")


@dataclass(frozen=True)
class Device:
    """The device a run uses.

    Attributes
    ----------
    kind : {"cuda", "cpu"}
    description : str
        Human-readable name (GPU model or "CPU, N threads").
    note : str
        Why this device was picked when the user asked for ``auto`` ("" otherwise).
    automatic : bool
        Picked by ``auto`` rather than named by the user; only then may a run
        that runs out of GPU memory offer to continue on the CPU.
    """

    kind: Literal["cuda", "cpu"]
    description: str
    note: str = ""
    automatic: bool = False

    @property
    def is_cuda(self) -> bool:
        return self.kind == "cuda"


#: Elements of the probe kernel's arrays: more than one block of :data:`_PROBE_BLOCK` and
#: not a multiple of it, so that the bounds check of the last block runs too.
_PROBE_SIZE = 50
_PROBE_BLOCK = 32
#: The longest part of an exception's message that a reason quotes.
_DETAIL_CHARS = 160


class _ProbeFailure(Exception):
    """A step of the GPU probe failed; the message is the user's one-line reason."""


@functools.cache
def cuda_status() -> tuple[bool, str]:
    """Whether the GPU can run this project's work, and if not, a one-line reason why.

    Probed once per process, before any work, so that a broken CUDA set-up is
    reported here and not in the middle of a frame: Numba sees a GPU; CuPy
    imports, sees it and runs its own kernels; a tiny Numba CUDA kernel compiles
    (libNVVM), loads (the driver accepts its PTX) and runs on CuPy arrays, as the
    pipeline's kernels are launched; a cuBLAS product runs through
    ``cupy.matmul``; and every result read back is right. The reason names the
    step that failed.
    """
    try:
        _probe_gpu()
    except _ProbeFailure as failure:
        return False, str(failure)
    return True, ""


def _numba_cuda():
    """Numba's CUDA target, unless it is missing or its simulator stands in for it."""
    try:
        from numba import cuda
    except Exception as exc:  # numba without its CUDA target
        raise _ProbeFailure(f"Numba's CUDA target is unavailable ({error_line(exc)})") from None
    from numba.core import config

    if config.ENABLE_CUDASIM:
        raise _ProbeFailure("Numba's CUDA simulator is on (NUMBA_ENABLE_CUDASIM=1), not a GPU")
    return cuda


def _cupy():
    """The ``cupy`` module, whichever CUDA build provides it."""
    try:
        import cupy
    except ImportError as exc:
        if exc.name == "cupy":
            raise _ProbeFailure(
                "CuPy is not installed (pip install 'diva-numba[cuda]', [cuda13] for CUDA 13)"
            ) from None
        raise _ProbeFailure(f"CuPy cannot be imported ({error_line(exc)})") from None
    except Exception as exc:  # a CuPy build for a CUDA that the machine lacks, and the like
        raise _ProbeFailure(f"CuPy cannot be imported ({error_line(exc)})") from None
    return cupy


def _probe_gpu() -> None:
    cuda = _numba_cuda()
    try:
        available = cuda.is_available()
    except Exception as exc:
        raise _ProbeFailure(f"Numba cannot talk to the CUDA driver ({error_line(exc)})") from None
    if not available:
        raise _ProbeFailure("Numba sees no CUDA GPU")
    cupy = _cupy()
    try:
        count = cupy.cuda.runtime.getDeviceCount()
        total = float(cupy.arange(4, dtype=cupy.float32).sum().item()) if count > 0 else None
    except Exception as exc:
        raise _ProbeFailure(f"CuPy cannot use the GPU ({error_line(exc)})") from None
    if total is None:
        raise _ProbeFailure("CuPy sees no CUDA GPU")
    if total != 6:
        raise _ProbeFailure(f"CuPy read back a wrong sum from the GPU ({total:g} for 0+1+2+3)")
    _probe_kernel(cuda, cupy)
    _probe_cublas(cupy)


def _probe_kernel_function(cuda):
    """The probe kernel's Python function; Numba compiles it on first launch."""
    from diva_numba.kernels.targets import larger

    # As the pipeline's kernels are: cuda.grid, a bounds check, a shared device function.
    def probe(values, scale, out):
        index = cuda.grid(1)
        if index < out.size:
            out[index] = larger(values[index] * scale, values[index]) + index

    return probe


def _probe_kernel(cuda, cupy) -> None:
    """Compile and launch a tiny Numba kernel on CuPy arrays, and check what it wrote."""
    values = np.linspace(-4, 4, _PROBE_SIZE, dtype=np.float32)
    expected = np.maximum(values * 2, values) + np.arange(_PROBE_SIZE, dtype=np.float32)
    try:
        values_gpu = cupy.asarray(values)
        out = cupy.zeros(_PROBE_SIZE, dtype=cupy.float32)
    except Exception as exc:
        raise _ProbeFailure(f"CuPy cannot use the GPU ({error_line(exc)})") from None
    try:
        kernel = cuda.jit(_probe_kernel_function(cuda))
        blocks = -(-_PROBE_SIZE // _PROBE_BLOCK)
        with warnings.catch_warnings():
            # Two blocks are meant: no "low occupancy" warning at the start of every run.
            warnings.simplefilter("ignore", NumbaPerformanceWarning)
            kernel[blocks, _PROBE_BLOCK](values_gpu, np.float32(2), out)
        cuda.synchronize()
        got = np.asarray(out.get())
    except Exception as exc:
        raise _ProbeFailure(_kernel_failure(exc, cupy)) from None
    _check_values("the probe kernel", got, expected)


def _probe_cublas(cupy) -> None:
    """cuBLAS products as the convolutions run them: ``matmul`` into ``out``, and of a transpose."""
    # Small integers: exact in float32 (and in TF32), so that any difference is an error.
    a = np.arange(1, 13, dtype=np.float32).reshape(3, 4)
    b = np.arange(20, dtype=np.float32).reshape(4, 5) - 10
    try:
        a_gpu, b_gpu = cupy.asarray(a), cupy.asarray(b)
        product = cupy.empty((3, 5), dtype=cupy.float32)
        cupy.matmul(a_gpu, b_gpu, out=product)
        back = cupy.matmul(a_gpu.T, product)
        got_product, got_back = np.asarray(product.get()), np.asarray(back.get())
    except Exception as exc:
        raise _ProbeFailure(f"cuBLAS failed: {error_line(exc)}") from None
    _check_values("cuBLAS (cupy.matmul)", got_product, a @ b)
    _check_values("cuBLAS (cupy.matmul of a transpose)", got_back, a.T @ (a @ b))


def _check_values(what: str, got: np.ndarray, expected: np.ndarray) -> None:
    if got.shape != expected.shape:
        detail = f"shape {got.shape} instead of {expected.shape}"
    else:
        wrong = ~np.isclose(got, expected, rtol=1e-6, atol=1e-6)
        if not wrong.any():
            return
        index = int(np.argmax(wrong.ravel()))
        detail = f"element {index} is {got.ravel()[index]:g}, not {expected.ravel()[index]:g}"
    raise _ProbeFailure(f"{what} read back wrong values from the GPU ({detail})")


#: How the failures of a kernel's compile or load read, lower-cased (Numba's built-in CUDA
#: target and numba-cuda, with the driver's linker or nvJitLink).
_NVVM_MISSING = ("cannot be found", "not found", "no such file", "cannot open", "failure finding")
_PTX_TOO_NEW = ("unsupported_ptx_version", "unsupported .version", "unsupported toolchain")
_NO_BINARY = ("no_binary_for_gpu", "no kernel image")


def _kernel_failure(exc: BaseException, cupy) -> str:
    """The reason for a failed compile, load or launch of the probe kernel."""
    text = f"{type(exc).__name__}: {exc}".lower()
    if "nvvm" in text and any(marker in text for marker in _NVVM_MISSING):
        major = _cuda_version(cupy, "runtimeGetVersion", major_only=True)
        wheel = f"numba-cuda[cu{major}]" if major else "numba-cuda[cu12] or numba-cuda[cu13]"
        return (
            f"Numba cannot compile CUDA kernels: libNVVM not found (install {wheel} "
            "or set CUDA_HOME)"
        )
    if any(marker in text for marker in _PTX_TOO_NEW):
        driver = _cuda_version(cupy, "driverGetVersion")
        which = f"the driver supports CUDA {driver}" if driver else "the driver is too old"
        return (
            "the GPU driver is older than the PTX that Numba generates "
            f"(CUDA_ERROR_UNSUPPORTED_PTX_VERSION; {which}): update the NVIDIA driver, or "
            "install numba-cuda with a CUDA toolkit no newer than the driver"
        )
    if any(marker in text for marker in _NO_BINARY):
        return f"Numba cannot build CUDA kernels for this GPU ({error_line(exc)})"
    if "nvvm" in text or isinstance(exc, NumbaError):  # libNVVM, typing, lowering
        return f"Numba cannot compile CUDA kernels: {error_line(exc)}"
    return f"Numba cannot run CUDA kernels on CuPy arrays: {error_line(exc)}"


def _cuda_version(cupy, function: str, *, major_only: bool = False) -> str:
    """``"12.4"`` (or ``"12"``) from CuPy's runtime, or "" when it cannot tell."""
    try:
        number = int(getattr(cupy.cuda.runtime, function)())
    except Exception:
        return ""
    major, minor = number // 1000, (number % 1000) // 10
    return str(major) if major_only else f"{major}.{minor}"


def error_line(exc: BaseException) -> str:
    """``Type: message`` on one line: the first line that says something, shortened."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    # Numba's compiler errors open with the pipeline that failed; the cause comes next.
    informative = [line for line in lines if not line.startswith("Failed in ")] or lines
    message = informative[0] if informative else ""
    if len(message) > _DETAIL_CHARS:
        message = message[: _DETAIL_CHARS - 3].rstrip() + "..."
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def _cpu_description() -> str:
    import numba

    return f"CPU, {numba.config.NUMBA_NUM_THREADS} threads"


def _gpu_description() -> str:
    cupy = _cupy()
    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    name = props["name"]
    return name.decode() if isinstance(name, bytes) else str(name)


def resolve_device(name: DeviceName = "auto") -> Device:
    """Turn the user's ``--device`` choice into a usable :class:`Device`.

    Parameters
    ----------
    name : {"auto", "cuda", "cpu"}
        ``auto`` picks CUDA only when the GPU passes the probe of
        :func:`cuda_status`, and otherwise the CPU with the probe's reason in
        :attr:`Device.note`.

    Raises
    ------
    DeviceError
        If ``cuda`` was asked for and the GPU fails the probe (the message says
        which step failed).
    """
    if name == "cpu":
        return Device("cpu", _cpu_description())
    ok, reason = cuda_status()
    if name == "cuda":
        if not ok:
            raise DeviceError(f"--device cuda: no usable GPU: {reason}")
        return Device("cuda", _gpu_description())
    if name != "auto":
        raise DeviceError(f"unknown device {name!r}; use auto, cuda or cpu")
    if ok:
        return Device("cuda", _gpu_description(), automatic=True)
    return Device("cpu", _cpu_description(), note=f"using the CPU: {reason}", automatic=True)


def device_kind(device: Device | str) -> Literal["cuda", "cpu"]:
    """``"cuda"`` or ``"cpu"`` for a :class:`Device` or a device name (``auto`` resolved)."""
    if isinstance(device, Device):
        return device.kind
    if device in ("cuda", "cpu"):
        return device
    return resolve_device(device).kind


def within_memory(
    device: Device,
    work: Callable[[Device], T],
    *,
    smaller: str,
    cpu_fallback: bool | Callable[[str], bool] = False,
) -> T:
    """Run ``work(device)``, turning running out of memory into advice.

    Parameters
    ----------
    device : Device
    work : callable
        The whole computation on one device: model loading and every
        allocation must happen inside it, so that a retry starts clean.
    smaller : str
        What the user can lower, e.g. ``"--size (now 480) or --ratio"``.
    cpu_fallback : bool or callable, default False
        When ``auto`` chose the GPU and it ran out of memory: run ``work`` again
        on the CPU (True), or ask the callable, given the reason, whether to.

    Returns
    -------
    What ``work`` returns.

    Raises
    ------
    DeviceError
        Out of memory, with the advice; when ``auto`` chose the GPU the line
        also offers ``--device cpu``.
    """
    try:
        return work(device)
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        where = "GPU memory" if device.is_cuda else "memory"
        message = f"out of {where} on {device.description}; try a smaller {smaller}"
    # Outside the except block: the failed attempt's frames, and its arrays, are gone.
    if device.is_cuda and device.automatic:
        release_gpu_memory()
        if cpu_fallback is True or (callable(cpu_fallback) and cpu_fallback(message)):
            cpu = resolve_device("cpu")
            log.warning("continuing on the %s", cpu.description)
            return within_memory(cpu, work, smaller=smaller)
        message += ", or run on the CPU with --device cpu"
    raise DeviceError(message)


#: How out-of-memory failures read in the libraries that allocate GPU memory without
#: raising MemoryError: Numba's CudaAPIError, CuPy's CUDARuntimeError and CUBLASError,
#: onnxruntime's (unexported) RuntimeException and its BFC arena.
_OUT_OF_MEMORY_MARKERS = (
    "out of memory",
    "out_of_memory",
    "failed to allocate memory",
    "alloc_failed",
    "cudaerrormemoryallocation",
)


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` reports an allocation failure, on the host or on the GPU.

    CuPy's ``OutOfMemoryError`` is a :class:`MemoryError`, like NumPy's; the
    other libraries say it only in their messages.
    """
    if isinstance(exc, MemoryError):
        return True
    text = f"{type(exc).__name__}: {exc}".lower()
    return any(marker in text for marker in _OUT_OF_MEMORY_MARKERS)


def release_gpu_memory() -> None:
    """Return CuPy's cached blocks to the driver (after dropping the arrays)."""
    import gc

    gc.collect()
    try:
        import cupy
    except ImportError:
        return
    try:
        cupy.get_default_memory_pool().free_all_blocks()
        cupy.get_default_pinned_memory_pool().free_all_blocks()
    except Exception:  # no usable GPU: nothing was cached
        pass


__all__ = [
    "Device",
    "array_module",
    "cuda_status",
    "device_kind",
    "error_line",
    "is_cuda_array",
    "is_out_of_memory",
    "release_gpu_memory",
    "resolve_device",
    "download_together",
    "to_device",
    "to_host",
    "upload_together",
    "within_memory",
]


def array_module(array):
    """``cupy`` for CuPy arrays, ``numpy`` otherwise."""
    if is_cuda_array(array):
        import cupy

        return cupy
    return np


def to_host(array) -> np.ndarray:
    """A NumPy copy (or view) of any array."""
    if isinstance(array, np.ndarray):
        return array
    if hasattr(array, "get"):
        return array.get()
    if hasattr(array, "copy_to_host"):
        return array.copy_to_host()
    return np.asarray(array)


def to_device(array, device: Device):
    """The array on ``device``: a CuPy array for CUDA, a NumPy array for the CPU."""
    if device.is_cuda:
        import cupy

        return cupy.asarray(array)
    return to_host(array)


#: Byte alignment of each array packed by :func:`upload_together` (any element type).
_PACK_ALIGNMENT = 16


def upload_together(arrays: dict, device: Device) -> dict:
    """The host ``arrays`` on ``device``, in one host->device transfer.

    On a GPU they travel packed in one byte buffer and come back as views of
    it (each starting on a 16-byte boundary); on the CPU they are the arrays
    themselves, with no copy.
    """
    if not device.is_cuda:
        return {key: to_host(value) for key, value in arrays.items()}
    import cupy

    host = {key: np.ascontiguousarray(value) for key, value in arrays.items()}
    offsets, total = {}, 0
    for key, value in host.items():
        offsets[key] = total
        total += -(-value.nbytes // _PACK_ALIGNMENT) * _PACK_ALIGNMENT
    packed = np.zeros(total, np.uint8)
    for key, value in host.items():
        packed[offsets[key] : offsets[key] + value.nbytes] = value.reshape(-1).view(np.uint8)
    on_device = cupy.asarray(packed)
    return {
        key: on_device[offsets[key] : offsets[key] + value.nbytes]
        .view(value.dtype)
        .reshape(value.shape)
        for key, value in host.items()
    }


def download_together(arrays: dict) -> dict:
    """Host copies of ``arrays``: the device arrays in one device->host transfer.

    Host arrays are copied too, so that the caller may hand the result to
    another thread while the originals are reused.
    """
    on_device = [key for key, value in arrays.items() if is_cuda_array(value)]
    copies = {key: np.array(value) for key, value in arrays.items() if key not in on_device}
    if on_device:
        xp = array_module(arrays[on_device[0]])
        packed = xp.concatenate(
            [xp.ascontiguousarray(arrays[key]).reshape(-1).view(xp.uint8) for key in on_device]
        )
        host = to_host(packed)
        offset = 0
        for key in on_device:
            value = arrays[key]
            nbytes = value.size * value.dtype.itemsize
            copies[key] = host[offset : offset + nbytes].view(value.dtype).reshape(value.shape)
            offset += nbytes
    return copies
