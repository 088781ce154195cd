"""Vector operations of the L-BFGS optimiser and of the deconvolution loss.

The optimiser keeps its scalars (dot products, curvature pairs' ``y.s`` and ``y.y``,
the loss) in a small float64 "scalar register" array that lives on the same device
as the vectors. Reductions write into a slot of that register and vector updates
read their coefficients from it, so the two-loop recursion runs on the GPU without
copying a scalar to the host; the optimiser reads the whole register once per
function evaluation.

Reductions accumulate in float64 whatever the vector dtype. The CUDA reductions
are two-pass (per-block partial sums, then one block adds the partials in a fixed
order), so results do not depend on thread scheduling.
"""

from __future__ import annotations

import numpy as np
from numba import cuda, float64, njit, prange

from diva_numba.kernels.targets import device_empty, is_cuda_array, launch_1d, shared

#: Largest block the CUDA reductions support (size of their shared-memory buffer).
MAX_BLOCK = 1024
#: At most this many blocks (and partial sums) per CUDA reduction.
MAX_PARTIALS = 1024


@shared
def product64(a, b):
    """``a * b`` in float64, whatever the storage dtype."""
    return float64(a) * float64(b)


@shared
def ratio(scalars, plus, minus, over):
    """``(scalars[plus] - scalars[minus]) / scalars[over]``: a coefficient read on device."""
    return (scalars[plus] - scalars[minus]) / scalars[over]


# --- CPU ------------------------------------------------------------------------------


@njit(parallel=True, cache=True)
def _dot_cpu(a, b):
    total = 0.0
    for index in prange(a.size):
        total += product64(a[index], b[index])
    return total


@njit(parallel=True, cache=True)
def _squared_error_cpu(output, target, grad):
    total = 0.0
    for index in prange(output.size):
        difference = float64(output[index]) - float64(target[index])
        grad[index] = 2.0 * difference
        total += difference * difference
    return total


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


@cuda.jit(device=True)
def _block_sum(buffer, value):
    """Sum of ``value`` over the block; valid in thread 0. Every thread must call it."""
    thread = cuda.threadIdx.x
    size = cuda.blockDim.x
    buffer[thread] = value
    cuda.syncthreads()
    half = 1
    while half < size:
        half *= 2
    half //= 2
    while half > 0:
        if thread < half and thread + half < size:
            buffer[thread] += buffer[thread + half]
        cuda.syncthreads()
        half //= 2
    return buffer[0]


@cuda.jit
def _dot_partials_kernel(a, b, partials):
    buffer = cuda.shared.array(MAX_BLOCK, float64)
    total = 0.0
    for index in range(cuda.grid(1), a.size, cuda.gridsize(1)):
        total += product64(a[index], b[index])
    block_total = _block_sum(buffer, total)
    if cuda.threadIdx.x == 0:
        partials[cuda.blockIdx.x] = block_total


@cuda.jit
def _squared_error_partials_kernel(output, target, grad, partials):
    buffer = cuda.shared.array(MAX_BLOCK, float64)
    total = 0.0
    for index in range(cuda.grid(1), output.size, cuda.gridsize(1)):
        difference = float64(output[index]) - float64(target[index])
        grad[index] = 2.0 * difference
        total += difference * difference
    block_total = _block_sum(buffer, total)
    if cuda.threadIdx.x == 0:
        partials[cuda.blockIdx.x] = block_total


@cuda.jit
def _finish_sum_kernel(partials, scalars, slot):
    buffer = cuda.shared.array(MAX_BLOCK, float64)
    total = 0.0
    for index in range(cuda.threadIdx.x, partials.size, cuda.blockDim.x):
        total += partials[index]
    block_total = _block_sum(buffer, total)
    if cuda.threadIdx.x == 0:
        scalars[slot] = block_total


@cuda.jit
def _combine_kernel(out, a, b, alpha, beta):
    index = cuda.grid(1)
    if index < out.size:
        out[index] = alpha * a[index] + beta * b[index]


@cuda.jit
def _add_scaled_kernel(y, x, scalars, plus, minus, over):
    index = cuda.grid(1)
    if index < y.size:
        y[index] = y[index] + ratio(scalars, plus, minus, over) * x[index]


@cuda.jit
def _scale_kernel(y, scalars, numerator, denominator):
    index = cuda.grid(1)
    if index < y.size:
        y[index] = scalars[numerator] / scalars[denominator] * y[index]


@cuda.jit
def _copy_scalar_kernel(value, scalars, slot):
    if cuda.grid(1) == 0:
        scalars[slot] = value[0]


@cuda.jit
def _store_scalar_kernel(value, scalars, slot):
    if cuda.grid(1) == 0:
        scalars[slot] = value


def _reduction_launch(count, like):
    blocks, threads = launch_1d(count)
    if threads > MAX_BLOCK:
        raise ValueError(f"reduction blocks hold at most {MAX_BLOCK} threads, got {threads}")
    blocks = min(blocks, MAX_PARTIALS)
    return blocks, threads, device_empty((blocks,), np.float64, like=like)


def _finish_sum(partials, scalars, slot, threads):
    _finish_sum_kernel[1, threads](partials, scalars, slot)


# --- dispatch -------------------------------------------------------------------------


def dot(a, b, scalars, slot: int) -> None:
    """``scalars[slot] = sum(a * b)``, accumulated in float64.

    Parameters
    ----------
    a, b : float32 or float64 arrays, shape (n,), C-contiguous, same device
    scalars : float64 array, shape (k,), same device
        The scalar register; only ``scalars[slot]`` is written.
    slot : int
    """
    if is_cuda_array(a):
        blocks, threads, partials = _reduction_launch(a.size, like=a)
        _dot_partials_kernel[blocks, threads](a, b, partials)
        _finish_sum(partials, scalars, slot, threads)
    else:
        scalars[slot] = _dot_cpu(a, b)


def squared_error(output, target, *, grad_out, scalars, slot: int) -> None:
    """Loss ``sum((output - target)**2)`` and its gradient ``2 * (output - target)``.

    Parameters
    ----------
    output, target : float32 or float64 arrays, shape (n,), C-contiguous, same device
    grad_out : array, shape (n,), same dtype and device as ``output``
        Overwritten with ``2 * (output - target)``.
    scalars : float64 array, shape (k,), same device
        ``scalars[slot]`` receives the loss (accumulated in float64).
    slot : int
    """
    if is_cuda_array(output):
        blocks, threads, partials = _reduction_launch(output.size, like=output)
        _squared_error_partials_kernel[blocks, threads](output, target, grad_out, partials)
        _finish_sum(partials, scalars, slot, threads)
    else:
        scalars[slot] = _squared_error_cpu(output, target, grad_out)


def combine(out, a, b, *, alpha: float, beta: float) -> None:
    """``out = alpha * a + beta * b`` with host coefficients (copies, differences, steps).

    Parameters
    ----------
    out, a, b : arrays, shape (n,), same dtype and device; ``out`` may alias ``a`` or ``b``
    alpha, beta : float
    """
    if is_cuda_array(out):
        grid, block = launch_1d(out.size)
        _combine_kernel[grid, block](out, a, b, float(alpha), float(beta))
    else:
        _combine_cpu(out, a, b, float(alpha), float(beta))


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
        grid, block = launch_1d(y.size)
        _add_scaled_kernel[grid, block](y, x, scalars, plus, minus, over)
    else:
        _add_scaled_cpu(y, x, scalars, plus, minus, over)


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
        grid, block = launch_1d(y.size)
        _scale_kernel[grid, block](y, scalars, numerator, denominator)
    else:
        _scale_cpu(y, scalars, numerator, denominator)


def copy_scalar(value, scalars, slot: int) -> None:
    """``scalars[slot] = value``, where ``value`` is a number or a one-element array.

    On the GPU neither form waits for the device: a one-element GPU array is copied by
    a kernel, a host number travels as a kernel argument.
    """
    if not is_cuda_array(scalars):
        scalars[slot] = float(np.asarray(value).reshape(()))
    elif is_cuda_array(value):
        _copy_scalar_kernel[1, 1](value.reshape(1), scalars, slot)
    else:
        _store_scalar_kernel[1, 1](float(np.asarray(value).reshape(())), scalars, slot)
