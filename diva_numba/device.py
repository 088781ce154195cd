"""Choosing the compute device and moving arrays between host and GPU.

GPU arrays are CuPy arrays; the code imports ``cupy`` whatever CUDA build
provides it (``cupy-cuda12x``, ``cupy-cuda13x``, ...). Kernels dispatch on the
array they are given, so the rest of the pipeline only decides once, here.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

import numpy as np

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


@functools.cache
def cuda_status() -> tuple[bool, str]:
    """Whether a CUDA GPU is usable through both Numba and CuPy, and why not if not."""
    try:
        from numba import cuda
    except Exception as exc:  # numba without its CUDA target
        return False, f"Numba's CUDA target is unavailable ({exc.__class__.__name__})"
    try:
        if not cuda.is_available():
            return False, "Numba sees no CUDA GPU"
    except Exception as exc:
        return False, f"Numba cannot talk to the CUDA driver ({exc})"
    try:
        import cupy
    except ImportError:
        return False, "CuPy is not installed (pip install 'diva-numba[cuda]')"
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return False, "CuPy sees no CUDA GPU"
        cupy.zeros(1).sum().item()
    except Exception as exc:
        return False, f"CuPy cannot use the GPU ({exc.__class__.__name__}: {exc})"
    return True, ""


def _cpu_description() -> str:
    import numba

    return f"CPU, {numba.config.NUMBA_NUM_THREADS} threads"


def _gpu_description() -> str:
    import cupy

    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    name = props["name"]
    return name.decode() if isinstance(name, bytes) else str(name)


def resolve_device(name: DeviceName = "auto") -> Device:
    """Turn the user's ``--device`` choice into a usable :class:`Device`.

    Parameters
    ----------
    name : {"auto", "cuda", "cpu"}
        ``auto`` picks CUDA only when Numba sees a GPU and CuPy works.

    Raises
    ------
    DeviceError
        If ``cuda`` was asked for and no GPU is usable.
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
    "is_cuda_array",
    "is_out_of_memory",
    "release_gpu_memory",
    "resolve_device",
    "to_device",
    "to_host",
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
