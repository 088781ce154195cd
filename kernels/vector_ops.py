"""Element-wise vector updates of the optimiser: copies, steps, scaled additions.

:func:`copy` is a plain copy (what a CUDA graph's fixed input buffers are loaded
with). Coefficients are float64, given by the host as launch arguments (:func:`combine`) or
read on the device from slots of the scalar register that the reductions write
(:func:`add_scaled`, :func:`scale`; :mod:`diva_numba.kernels.reductions`), so an
update never waits for a scalar to reach the host. Each element is computed in
float64 and rounded once to the vectors' dtype.
"""

from __future__ import annotations

from numba import cuda, njit, prange

from diva_numba.kernels.targets import is_cuda_array, launch_1d, shared


@shared
def ratio(scalars, plus, minus, over):
    """``(scalars[plus] - scalars[minus]) / scalars[over]``: a coefficient read on device."""
    return (scalars[plus] - scalars[minus]) / scalars[over]


# --- CPU ------------------------------------------------------------------------------


@njit(parallel=True, cache=True)
def _copy_cpu(out, a):
    for index in prange(out.size):
        out[index] = a[index]


@njit(parallel=True, cache=True)
def _combine_cpu(out, a, b, alpha, beta):
    for index in prange(out.size):
        out[index] = alpha * a[index] + beta * b[index]


@njit(parallel=True, cache=True)
def _add_scaled_cpu(y, x, scalars, plus, minus, over):
    coefficient = ratio(scalars, plus, minus, over)
    for index in prange(y.size):
        y[index] = y[index] + coefficient * x[index]


@njit(parallel=True, cache=True)
def _scale_cpu(y, scalars, numerator, denominator):
    factor = scalars[numerator] / scalars[denominator]
    for index in prange(y.size):
        y[index] = factor * y[index]


# --- CUDA -----------------------------------------------------------------------------


@cuda.jit(cache=True)
def _copy_kernel(out, a):
    index = cuda.grid(1)
    if index < out.size:
        out[index] = a[index]


@cuda.jit(cache=True)
def _combine_kernel(out, a, b, alpha, beta):
    index = cuda.grid(1)
    if index < out.size:
        out[index] = alpha * a[index] + beta * b[index]


@cuda.jit(cache=True)
def _add_scaled_kernel(y, x, scalars, plus, minus, over):
    index = cuda.grid(1)
    if index < y.size:
        y[index] = y[index] + ratio(scalars, plus, minus, over) * x[index]


@cuda.jit(cache=True)
def _scale_kernel(y, scalars, numerator, denominator):
    index = cuda.grid(1)
    if index < y.size:
        y[index] = scalars[numerator] / scalars[denominator] * y[index]


# --- dispatch -------------------------------------------------------------------------


def copy(out, a, *, stream=0) -> None:
    """``out = a``, element for element (bitwise, NaN and infinities included).

    :func:`combine` with ``alpha=1, beta=0`` would turn an infinity into NaN
    (``0 * inf``); this is a copy.

    Parameters
    ----------
    out, a : arrays, shape (n,), same dtype and device
    stream : Numba stream or 0, optional
        The CUDA stream the launch is queued on (0: the default stream); ignored on
        the CPU.
    """
    if out.shape != a.shape or out.dtype != a.dtype:
        raise ValueError(f"copy of {a.dtype} {a.shape} into {out.dtype} {out.shape}")
    if is_cuda_array(out):
        copy_cuda(out, a, stream=stream)
    else:
        copy_cpu(out, a)


def copy_cpu(out, a) -> None:
    """CPU twin of :func:`copy`."""
    _copy_cpu(out, a)


def copy_cuda(out, a, *, stream=0) -> None:
    """CUDA kernel of :func:`copy`."""
    grid, block = launch_1d(out.size)
    _copy_kernel[grid, block, stream](out, a)


def combine(out, a, b, *, alpha: float, beta: float) -> None:
    """``out = alpha * a + beta * b`` with host coefficients (copies, differences, steps).

    Parameters
    ----------
    out, a, b : arrays, shape (n,), same dtype and device; ``out`` may alias ``a`` or ``b``
    alpha, beta : float
    """
    if is_cuda_array(out):
        combine_cuda(out, a, b, alpha=alpha, beta=beta)
    else:
        combine_cpu(out, a, b, alpha=alpha, beta=beta)


def combine_cpu(out, a, b, *, alpha: float, beta: float) -> None:
    """CPU twin of :func:`combine`."""
    _combine_cpu(out, a, b, float(alpha), float(beta))


def combine_cuda(out, a, b, *, alpha: float, beta: float) -> None:
    """CUDA kernel of :func:`combine`."""
    grid, block = launch_1d(out.size)
    _combine_kernel[grid, block](out, a, b, float(alpha), float(beta))


def add_scaled(y, x, scalars, *, plus: int, minus: int, over: int) -> None:
    """``y += (scalars[plus] - scalars[minus]) / scalars[over] * x`` with device scalars.

    The coefficient is read from the scalar register on the device, so the caller
    never waits for it. Point ``plus`` or ``minus`` at a slot holding zero for a plain
    ratio.

    Parameters
    ----------
    y, x : arrays, shape (n,), same dtype and device
    scalars : float64 array, shape (k,), same device
    plus, minus, over : int
        Slots of the scalar register.
    """
    if is_cuda_array(y):
        add_scaled_cuda(y, x, scalars, plus=plus, minus=minus, over=over)
    else:
        add_scaled_cpu(y, x, scalars, plus=plus, minus=minus, over=over)


def add_scaled_cpu(y, x, scalars, *, plus: int, minus: int, over: int) -> None:
    """CPU twin of :func:`add_scaled`."""
    _add_scaled_cpu(y, x, scalars, plus, minus, over)


def add_scaled_cuda(y, x, scalars, *, plus: int, minus: int, over: int) -> None:
    """CUDA kernel of :func:`add_scaled`."""
    grid, block = launch_1d(y.size)
    _add_scaled_kernel[grid, block](y, x, scalars, plus, minus, over)


def scale(y, scalars, *, numerator: int, denominator: int) -> None:
    """``y *= scalars[numerator] / scalars[denominator]`` with device scalars.

    Parameters
    ----------
    y : array, shape (n,)
    scalars : float64 array, shape (k,), same device
    numerator, denominator : int
        Slots of the scalar register.
    """
    if is_cuda_array(y):
        scale_cuda(y, scalars, numerator=numerator, denominator=denominator)
    else:
        scale_cpu(y, scalars, numerator=numerator, denominator=denominator)


def scale_cpu(y, scalars, *, numerator: int, denominator: int) -> None:
    """CPU twin of :func:`scale`."""
    _scale_cpu(y, scalars, numerator, denominator)


def scale_cuda(y, scalars, *, numerator: int, denominator: int) -> None:
    """CUDA kernel of :func:`scale`."""
    grid, block = launch_1d(y.size)
    _scale_kernel[grid, block](y, scalars, numerator, denominator)
