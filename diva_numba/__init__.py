"""diva-numba: Deep Image Video Analogy with hand-written Numba kernels."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("diva-numba")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

from diva_numba.errors import DivaError

__all__ = ["DivaError", "__version__"]
