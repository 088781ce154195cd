"""The device side of the benchmarks: its limits, and timing a call on it.

The device's limits are measured in the same run as the cases: memory bandwidth
(the best of streaming a large array with the array library's copy and, on the
CPU, with an in-place update on all Numba threads; read + write counted) and
float32 matrix-multiply rate.

Before every timed call the backend evicts the last-level cache (CPU L3, GPU L2)
by streaming through a buffer twice its size, so the inputs come from memory as the
traffic model assumes; otherwise maps smaller than the cache would appear to beat
the memory bandwidth. On CUDA the inputs are CuPy arrays and every timed call is
bracketed by a device synchronisation, so times include the Python launch overhead
a pipeline call pays. This module imports ``cupy`` only when asked to run on CUDA.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numba
import numpy as np

from diva_numba.gpu.device import Device

#: Bytes per float32 or int32.
FLOAT_BYTES = 4


@dataclass(frozen=True)
class DeviceLimits:
    """The device's measured memory bandwidth and float32 matrix rate.

    Attributes
    ----------
    bandwidth : float
        Bytes per second streamed through a large array (read + write counted).
    matmul_rate : float
        Floating-point operations per second of a large float32 matrix product.
    bandwidth_method, matmul_method : str
        How they were measured.
    """

    bandwidth: float
    matmul_rate: float
    bandwidth_method: str
    matmul_method: str


class _CpuBackend:
    """NumPy arrays; wall-clock time of each call."""

    xp = np
    #: Size setting -> (MiB copied, matrix side) for the limits.
    limit_sizes = {"small": (4, 512), "real": (256, 2048)}
    matmul_note = ""

    def __init__(self):
        self.description = f"{_cpu_model()}, {_numba_threads()} threads"
        self._eviction_buffer = np.ones(2 * _last_level_cache_bytes() // FLOAT_BYTES, np.float32)

    @staticmethod
    def upload(array: np.ndarray):
        return np.ascontiguousarray(array)

    @staticmethod
    def bandwidth_probes(source, target) -> dict[str, Callable[[], object]]:
        """Calls that read and write one array's worth of memory each."""
        # np.copyto runs on one thread; the kernels run on all of Numba's.
        return {
            "numpy.copyto": lambda: np.copyto(target, source),
            f"in-place add on {_numba_threads()} Numba threads": lambda: _add_one(target),
        }

    def time_call(self, call: Callable[[], object]) -> float:
        # Reading twice the last-level cache evicts what the previous call left there,
        # so the kernel fetches its inputs from memory, as the traffic model assumes.
        self._eviction_buffer.sum()
        start = time.perf_counter()
        call()
        return time.perf_counter() - start


class _CudaBackend:
    """CuPy arrays; wall-clock time between device synchronisations."""

    limit_sizes = {"small": (4, 512), "real": (1024, 8192)}

    def __init__(self, device: Device):
        import cupy

        self.xp = cupy
        self.description = device.description
        properties = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        self._eviction_buffer = cupy.empty(
            2 * properties["l2CacheSize"] // FLOAT_BYTES, cupy.float32
        )
        # CuPy uses TF32 tensor cores for float32 products only when CUPY_TF32 is a
        # positive integer; the network's GEMMs run under the same setting as the limit.
        self.matmul_note = ", TF32 allowed (CUPY_TF32)" if _cupy_allows_tf32() else ", no TF32"

    def upload(self, array: np.ndarray):
        return self.xp.asarray(np.ascontiguousarray(array))

    def bandwidth_probes(self, source, target) -> dict[str, Callable[[], object]]:
        """Calls that read and write one array's worth of memory each."""
        return {"cupy.copyto": lambda: self.xp.copyto(target, source)}

    def time_call(self, call: Callable[[], object]) -> float:
        # Writing twice the L2 cache evicts what the previous call left there (see the CPU).
        self._eviction_buffer.fill(0)
        synchronize = self.xp.cuda.runtime.deviceSynchronize
        synchronize()
        start = time.perf_counter()
        call()
        synchronize()
        return time.perf_counter() - start


def make_backend(device: Device):
    """The backend that builds inputs for ``device`` and times calls on it.

    Parameters
    ----------
    device : Device
        ``cpu``: NumPy arrays, wall-clock time. ``cuda``: CuPy arrays (imports
        CuPy), time between device synchronisations.

    Returns
    -------
    object
        Has ``xp`` (the array module), ``description``, ``upload(array)``,
        ``bandwidth_probes(source, target)`` and ``time_call(call)``.
    """
    return _CudaBackend(device) if device.is_cuda else _CpuBackend()


@numba.njit(parallel=True)
def _add_one(values):
    for index in numba.prange(values.size):
        values[index] += np.float32(1.0)


def _cupy_allows_tf32() -> bool:
    try:
        return int(os.environ.get("CUPY_TF32", "0")) > 0
    except ValueError:
        return False


def measure_limits(backend, size: str, *, repeats: int = 5) -> DeviceLimits:
    """Best-of-``repeats`` memory bandwidth and float32 matmul rate of the backend's device."""
    xp = backend.xp
    stream_mib, side = backend.limit_sizes[size]
    source = xp.ones(stream_mib * 2**20 // FLOAT_BYTES, dtype=xp.float32)
    target = xp.empty_like(source)
    rates = {
        name: 2 * source.nbytes / _best_time(backend, call, repeats)
        for name, call in backend.bandwidth_probes(source, target).items()
    }
    a = xp.ones((side, side), dtype=xp.float32)
    b = xp.ones((side, side), dtype=xp.float32)
    product = xp.empty_like(a)
    matmul_seconds = _best_time(backend, lambda: xp.matmul(a, b, out=product), repeats)
    probes = ", ".join(f"{name} {rate / 1e9:,.1f} GB/s" for name, rate in rates.items())
    return DeviceLimits(
        bandwidth=max(rates.values()),
        matmul_rate=2 * side**3 / matmul_seconds,
        bandwidth_method=f"best of {probes}; {stream_mib} MiB, best of {repeats}",
        matmul_method=(
            f"float32 {xp.__name__}.matmul {side}^3{backend.matmul_note}, best of {repeats}"
        ),
    )


def _best_time(backend, call, count: int) -> float:
    call()
    return min(backend.time_call(call) for _ in range(count))


def _last_level_cache_bytes() -> int:
    """Size of the CPU's largest cache (from Linux's sysfs), or 32 MiB when unknown."""
    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    largest = 0
    for size_file in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        try:
            text = size_file.read_text().strip()
            largest = max(largest, int(text.rstrip("KMG")) * units.get(text[-1], 1))
        except (OSError, ValueError):
            continue
    return largest or 32 * 2**20


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "CPU"


def _numba_threads() -> int:
    return numba.config.NUMBA_NUM_THREADS


__all__ = ["FLOAT_BYTES", "DeviceLimits", "make_backend", "measure_limits"]
