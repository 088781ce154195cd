"""The deconvolution's loss and its gradient, fused into one reduction.

The deconvolution (:mod:`diva_numba.network.subnetwork`) minimises ``sum((a - target)**2)``
over the network's output ``a``; the last conv's output reaches the loss as the
GEMM wrote it, before bias and ReLU, and :func:`relu_squared_error` applies them on
the fly. Each public function writes the loss into a slot of the float64 scalar
register and the gradient into an array in one pass: on the GPU one launch, reduced
as :mod:`diva_numba.kernels.reductions` describes (float64, in a fixed order).
"""

from __future__ import annotations

from numba import cuda, float64, njit, prange

from diva_numba.kernels.activations import biased_relu, relu_open
from diva_numba.kernels.reductions import reduce_into, reduction_grid, work_for
from diva_numba.kernels.targets import is_cuda_array, shared, zero_like


@shared
def _plain_error(output, target, grad, index):
    """Squared error of ``output[index]``; writes its gradient ``2 (output - target)``."""
    difference = float64(output[index]) - float64(target[index])
    grad[index] = 2 * difference
    return difference * difference


@shared
def _relu_error(pre_activation, bias, target, grad, channel, pixel):
    """Squared error of ``relu(pre + bias)`` against the target; writes the gradient in ``pre``.

    The gradient with respect to the ReLU's output is ``2 (a - t)``; in the dtype,
    ``(a - t) + (a - t)`` rounds exactly as ``2.0 * (float64(a) - float64(t))`` does
    (doubling is exact), and the ReLU then gates it.
    """
    offset = bias[channel]
    value = biased_relu(pre_activation[channel, pixel], offset)
    expected = target[channel, pixel]
    if relu_open(pre_activation[channel, pixel], offset):
        error = value - expected
        grad[channel, pixel] = error + error
    else:
        grad[channel, pixel] = zero_like(value)
    difference = float64(value) - float64(expected)
    return difference * difference


# --- CPU ------------------------------------------------------------------------------


@njit(parallel=True, cache=True)
def _squared_error_cpu(output, target, grad):
    total = 0.0
    for index in prange(output.size):
        total += _plain_error(output, target, grad, index)
    return total


@njit(parallel=True, cache=True)
def _relu_squared_error_cpu(pre_activation, bias, target, grad):
    plane = pre_activation.shape[1]
    total = 0.0
    for index in prange(pre_activation.size):
        total += _relu_error(pre_activation, bias, target, grad, index // plane, index % plane)
    return total


# --- CUDA -----------------------------------------------------------------------------


@cuda.jit(cache=True)
def _squared_error_kernel(output, target, grad, partials, counter, scalars, slot):
    sums = cuda.local.array(1, float64)
    sums[0] = 0
    for index in range(cuda.grid(1), output.size, cuda.gridsize(1)):
        sums[0] += _plain_error(output, target, grad, index)
    reduce_into(sums, 1, partials, counter, scalars, slot)


@cuda.jit(cache=True)
def _relu_squared_error_kernel(
    pre_activation, bias, target, grad, partials, counter, scalars, slot
):
    sums = cuda.local.array(1, float64)
    sums[0] = 0
    plane = pre_activation.shape[1]
    for index in range(cuda.grid(1), pre_activation.size, cuda.gridsize(1)):
        sums[0] += _relu_error(pre_activation, bias, target, grad, index // plane, index % plane)
    reduce_into(sums, 1, partials, counter, scalars, slot)


# --- dispatch -------------------------------------------------------------------------


def squared_error(output, target, *, grad_out, scalars, slot: int, work=None) -> None:
    """Loss ``sum((output - target)**2)`` and its gradient ``2 * (output - target)``.

    Parameters
    ----------
    output, target : float32 or float64 arrays, shape (n,), C-contiguous, same device
    grad_out : array, shape (n,), same dtype and device as ``output``
        Overwritten with ``2 * (output - target)``.
    scalars : float64 array, shape (k,), same device
        ``scalars[slot]`` receives the loss (accumulated in float64).
    slot : int
    work : ReductionWork, optional
    """
    if is_cuda_array(output):
        squared_error_cuda(output, target, grad_out=grad_out, scalars=scalars, slot=slot,
                           work=work)  # fmt: skip
    else:
        squared_error_cpu(output, target, grad_out=grad_out, scalars=scalars, slot=slot)


def squared_error_cpu(output, target, *, grad_out, scalars, slot: int) -> None:
    """CPU twin of :func:`squared_error`."""
    scalars[slot] = _squared_error_cpu(output, target, grad_out)


def squared_error_cuda(output, target, *, grad_out, scalars, slot: int, work=None) -> None:
    """CUDA kernels of :func:`squared_error`."""
    work = work_for(work, output, 1)
    blocks, threads = reduction_grid(output.size)
    _squared_error_kernel[blocks, threads](
        output, target, grad_out, work.partials, work.counter, scalars, slot
    )


def relu_squared_error(
    pre_activation, bias, target, *, grad_out, scalars, slot: int, work=None, stream=0
) -> None:
    """:func:`squared_error` of ``relu(pre_activation + bias[c])``, gradient through the ReLU.

    The deconvolution's loss fused with the last conv's bias and ReLU:
    ``scalars[slot] = sum((a - target)**2)`` with ``a = relu(pre_activation + bias)``,
    and ``grad_out = 2 (a - target)`` where the ReLU is open, 0 where it is closed
    (the gradient with respect to ``pre_activation``). Bitwise what
    ``relu_forward``, :func:`squared_error` and ``relu_backward`` give in turn.

    Parameters
    ----------
    pre_activation, target : float32 or float64 arrays, shape (C, P), C-contiguous
    bias : array, shape (C,), same dtype and device
    grad_out : array, shape (C, P), same dtype and device
    scalars : float64 array, shape (k,), same device
    slot : int
    work : ReductionWork, optional
    stream : Numba stream or 0, optional
        The CUDA stream the launch is queued on (0: the default stream); ignored on
        the CPU. ``work`` must not serve another stream at the same time.
    """
    if is_cuda_array(pre_activation):
        relu_squared_error_cuda(pre_activation, bias, target, grad_out=grad_out,
                                scalars=scalars, slot=slot, work=work, stream=stream)  # fmt: skip
    else:
        relu_squared_error_cpu(pre_activation, bias, target, grad_out=grad_out,
                               scalars=scalars, slot=slot)  # fmt: skip


def relu_squared_error_cpu(pre_activation, bias, target, *, grad_out, scalars, slot: int) -> None:
    """CPU twin of :func:`relu_squared_error`."""
    scalars[slot] = _relu_squared_error_cpu(pre_activation, bias, target, grad_out)


def relu_squared_error_cuda(
    pre_activation, bias, target, *, grad_out, scalars, slot: int, work=None, stream=0
) -> None:
    """CUDA kernels of :func:`relu_squared_error`."""
    work = work_for(work, pre_activation, 1)
    blocks, threads = reduction_grid(pre_activation.size)
    _relu_squared_error_kernel[blocks, threads, stream](
        pre_activation, bias, target, grad_out, work.partials, work.counter, scalars, slot
    )
