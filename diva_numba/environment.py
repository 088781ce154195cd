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
}

#: The module whose import reads each variable.
_READ_BY = {
    "OMP_WAIT_POLICY": "numba",
    "OPENBLAS_THREAD_TIMEOUT": "numpy",
    "NUMBA_CUDA_ARRAY_INTERFACE_SYNC": "numba",
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
    return late
