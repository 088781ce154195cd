"""diva-numba: Deep Image Video Analogy with hand-written Numba kernels."""

import os

# Numba's OpenMP workers and OpenBLAS's threads both busy-wait after each parallel
# region and then steal each other's cores between the GEMMs and the Numba kernels.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
# Kernels and CuPy calls share CuPy's current stream, so Numba need not synchronise
# on every launch that takes a CuPy array.
os.environ.setdefault("NUMBA_CUDA_ARRAY_INTERFACE_SYNC", "0")

from importlib.metadata import PackageNotFoundError, version  # noqa: E402

try:
    __version__ = version("diva-numba")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

from diva_numba.errors import DivaError  # noqa: E402

__all__ = ["DivaError", "__version__"]
