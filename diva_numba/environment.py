"""Process-wide settings of the libraries underneath, applied by the entry points.

Each of these is read once, when its library initialises, so it only takes
effect if it is set before NumPy (OpenBLAS), Numba's OpenMP layer and Numba's
CUDA target load. The command line (:mod:`diva_numba.cli`), the benchmark
scripts and the test suite call :func:`apply_runtime_defaults` first thing; a
Python program that uses the library should do the same before it imports
NumPy, or set the variables in its environment. A value already in the
environment is never changed.
"""

from __future__ import annotations

import ctypes
import os
import sys

#: Variable -> (value, why).
RUNTIME_DEFAULTS: dict[str, tuple[str, str]] = {
    "OMP_WAIT_POLICY": (
        "PASSIVE",
        "Numba's OpenMP workers would otherwise busy-wait after each parallel region and "
        "steal the cores OpenBLAS needs for the GEMMs in between",
    ),
    "OPENBLAS_THREAD_TIMEOUT": (
        "4",
        "OpenBLAS's threads likewise spin after each GEMM while Numba's kernels run",
    ),
    "NUMBA_CUDA_ARRAY_INTERFACE_SYNC": (
        "0",
        "kernels and CuPy calls share CuPy's current stream, so Numba need not synchronise "
        "on every launch that takes a CuPy array",
    ),
    "NUMBA_CUDA_LOW_OCCUPANCY_WARNINGS": (
        "0",
        "Numba's CUDA target warns at every launch of fewer than 128 blocks; the coarse "
        "levels' small maps and the reductions' last pass launch such grids by design, and "
        "a run would print a 'Grid size' line for each",
    ),
}

#: The module whose import reads each variable.
_READ_BY = {
    "OMP_WAIT_POLICY": "numba",
    "OPENBLAS_THREAD_TIMEOUT": "numpy",
    "NUMBA_CUDA_ARRAY_INTERFACE_SYNC": "numba",
    "NUMBA_CUDA_LOW_OCCUPANCY_WARNINGS": "numba.cuda",
}


def apply_runtime_defaults() -> list[str]:
    """Set every unset variable of :data:`RUNTIME_DEFAULTS`.

    Returns
    -------
    list of str
        The variables set now that can no longer take effect, because the
        library that reads them is already imported (empty from an entry point).
    """
    late = []
    for name, (value, _why) in RUNTIME_DEFAULTS.items():
        if name in os.environ:
            continue
        os.environ[name] = value
        if _READ_BY[name] in sys.modules:
            late.append(name)
    keep_freed_memory()
    return late


#: glibc's mallopt parameters (malloc.h) and the values set for them.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: Allocations above this come straight from the kernel and go back to it when freed.
MMAP_THRESHOLD = 256 << 20
#: Free memory at the heap's top above this goes back to the kernel.
TRIM_THRESHOLD = 512 << 20


def keep_freed_memory() -> bool:
    """Let glibc's malloc keep freed arrays for reuse instead of returning them to the kernel.

    A video frame at 1080p allocates and frees arrays of tens of MB (the
    synthesis's levels, the vote, the moved fields). glibc serves each from
    fresh pages of the kernel (``mmap`` above 32 MB at first, and above its
    adaptive threshold after), and every page faults on first touch: measured,
    a seeded 1080p frame's synthesis took 0.47-0.72 s with glibc's defaults and
    0.46-0.50 s with memory kept (2 CPU cores), the difference all in page
    faults (converting the vote to pixels: 85 ms against 8). The peak memory
    of a 1080p run rose by 7 % (1.19 GB against 1.11); the process keeps up to
    :data:`TRIM_THRESHOLD` freed. Skipped
    where glibc is not the C library, or where the environment sets either
    threshold itself (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``).

    Returns
    -------
    bool
        True when the thresholds were set.
    """
    if not sys.platform.startswith("linux"):
        return False
    if any(name in os.environ for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(
        mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
