"""Helpers shared by the CPU and CUDA targets of every kernel module.

Per-pixel arithmetic is written once as a ``shared`` function (Numba's
``register_jitable``): it compiles for ``njit`` CPU code and inside CUDA
kernels alike, so the two targets cannot drift apart.
"""

from __future__ import annotations

import math

import numpy as np
from numba.core import types
from numba.extending import overload, register_jitable
from numba.np import numpy_support

shared = register_jitable


# Conditionals rather than the min/max builtins: those go through a varargs
# overload that Numba's CUDA target does not compile.
@shared
def smaller(first, second):
    """The smaller of two numbers, on both targets."""
    return first if first < second else second


@shared
def larger(first, second):
    """The larger of two numbers, on both targets."""
    return first if first > second else second


@shared
def clamp_index(value, size):
    """``value`` clamped into ``[0, size - 1]``, on both targets."""
    if value < 0:
        return 0
    if value >= size:
        return size - 1
    return value


# Typed zeros. A bare ``0.0`` is a float64: mixed with float32 data it promotes the
# arithmetic around it to float64 (tests/test_cuda_ptx.py checks the PTX for that).
def zero_like(value):
    """A zero of ``value``'s type (float32 for a float32 value), on both targets."""
    return type(value)(0)


@overload(zero_like)
def _zero_like_typed(value):
    if isinstance(value, types.Float | types.Integer):
        zero = numpy_support.as_dtype(value).type(0)
        return lambda value: zero
    return None


@shared
def zero_of(array):
    """A zero of ``array``'s dtype, on both targets."""
    return array.dtype.type(0)


#: Threads per block along x and y for 2-D launches; tests shrink them so that
#: small inputs still span several blocks.
BLOCK_2D = [16, 8]
#: Threads per block for 1-D launches.
BLOCK_1D = [256]


def is_cuda_array(array) -> bool:
    """True for arrays that live on a GPU."""
    # Numba's device arrays (real and simulated) carry __cuda_ndarray__; asking them
    # first spares building their __cuda_array_interface__.
    return bool(getattr(array, "__cuda_ndarray__", False)) or hasattr(
        array, "__cuda_array_interface__"
    )


def kernel_array(array):
    """``array`` as Numba launches take it fastest: a device array over the same memory.

    A CuPy array passed to a launch is wrapped into a Numba device array twice per
    launch (once to type it, once to pass it), and each wrap synchronises the
    stream CuPy exports with it (the CUDA Array Interface's default), so the host
    waits for the GPU before every launch. Wrapping a long-lived buffer once here,
    without that synchronisation, avoids both: this project queues all its work on
    the default stream, in order. Host and Numba arrays are returned unchanged, and
    so is everything under the CUDA simulator (which launches on any array).
    """
    from numba import config

    if (
        config.ENABLE_CUDASIM
        or bool(getattr(array, "__cuda_ndarray__", False))
        or not hasattr(array, "__cuda_array_interface__")
    ):
        return array
    from numba import cuda

    return cuda.as_cuda_array(array, sync=False)


def launch_2d(height: int, width: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Grid and block for one thread per pixel, x fastest (coalesced over W)."""
    bx, by = BLOCK_2D
    return (math.ceil(width / bx), math.ceil(height / by)), (bx, by)


def launch_1d(count: int) -> tuple[int, int]:
    """Grid and block for one thread per element."""
    (b,) = BLOCK_1D
    return max(1, math.ceil(count / b)), b


def device_empty(shape, dtype, like):
    """An uninitialised GPU array of the same kind as ``like`` (CuPy or Numba)."""
    if type(like).__module__.startswith("cupy"):
        import cupy

        return cupy.empty(shape, dtype=dtype)
    from numba import cuda

    return cuda.device_array(shape, dtype=np.dtype(dtype))


def device_ones(shape, dtype, like):
    """A GPU array of ones of the same kind as ``like``, made on the device when it can be."""
    if type(like).__module__.startswith("cupy"):
        import cupy

        return cupy.ones(shape, dtype=dtype)
    from numba import cuda

    return cuda.to_device(np.ones(shape, dtype=dtype))


def device_zeros(shape, dtype, like):
    """A zeroed GPU array of the same kind as ``like``."""
    if type(like).__module__.startswith("cupy"):
        import cupy

        return cupy.zeros(shape, dtype=dtype)
    from numba import cuda

    out = cuda.device_array(shape, dtype=np.dtype(dtype))
    out.copy_to_device(np.zeros(shape, dtype=dtype))
    return out


def as_device(array, like):
    """``array`` on the GPU, as the same kind of array as ``like``."""
    if is_cuda_array(array):
        return array
    if type(like).__module__.startswith("cupy"):
        import cupy

        return cupy.asarray(array)
    from numba import cuda

    return cuda.to_device(np.ascontiguousarray(array))
