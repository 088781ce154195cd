"""ReLU and 2x2 max-pooling (stride 2, ceil rounding), forward and backward.

Pooling follows Caffe's ceil mode: an ``(H, W)`` map pools to
``((H + 1) // 2, (W + 1) // 2)``; a window on the bottom or right edge of an odd-sized
map is clipped to the map (never padded with zeros), so it may hold 1, 2 or 4
values. The forward pass records, per output, the flat index ``y * W + x`` of the
first maximum in row-major order. The backward pass is a gather: every input pixel
belongs to exactly one window and takes that window's gradient if it is the
recorded maximum, zero otherwise, so every element is written once and there are
no races.

The deconvolution fuses each conv's bias and ReLU into the kernel that next reads its
GEMM output (pooling here; im2col, the loss; and, backwards, col2im through
:func:`relu_open`), so that a conv layer costs one Numba launch each way; the
per-element maths is the same ``shared`` functions either way, so the fused paths
give bitwise the results of the separate ones.
"""

from __future__ import annotations

import numpy as np
from numba import cuda, njit, prange

from diva_numba.kernels.targets import (
    as_device,
    device_empty,
    is_cuda_array,
    launch_1d,
    launch_2d,
    shared,
    zero_like,
    zero_of,
)


@shared
def biased_relu(value, bias):
    """``max(value + bias, 0)``, in the dtype of ``value + bias``."""
    value = value + bias
    return value if value > 0 else zero_like(value)


@shared
def relu_open(value, bias):
    """Whether the ReLU of ``value + bias`` passes its gradient (its output is > 0)."""
    return value + bias > 0


@shared
def relu_gradient(grad, activation):
    """Gradient through a ReLU whose output was ``activation``."""
    return grad if activation > 0 else zero_like(grad)


@shared
def window_maximum(values, channel, out_y, out_x):
    """Maximum of the (clipped) 2x2 window of output ``(out_y, out_x)`` and its flat index."""
    height, width = values.shape[1], values.shape[2]
    y0 = 2 * out_y
    x0 = 2 * out_x
    # Windows on an odd bottom or right edge are clipped (if/else: no min() on CUDA).
    y_end = y0 + 2 if y0 + 2 <= height else height
    x_end = x0 + 2 if x0 + 2 <= width else width
    best = values[channel, y0, x0]
    best_index = y0 * width + x0
    for y in range(y0, y_end):
        for x in range(x0, x_end):
            # Strict comparison keeps the first maximum in row-major order (Caffe's choice).
            if values[channel, y, x] > best:
                best = values[channel, y, x]
                best_index = y * width + x
    return best, best_index


@shared
def window_maximum_relu(values, bias, channel, out_y, out_x):
    """:func:`window_maximum` of ``relu(values + bias)``, without writing that map."""
    height, width = values.shape[1], values.shape[2]
    y0 = 2 * out_y
    x0 = 2 * out_x
    y_end = y0 + 2 if y0 + 2 <= height else height
    x_end = x0 + 2 if x0 + 2 <= width else width
    best = biased_relu(values[channel, y0, x0], bias)
    best_index = y0 * width + x0
    for y in range(y0, y_end):
        for x in range(x0, x_end):
            value = biased_relu(values[channel, y, x], bias)
            if value > best:
                best = value
                best_index = y * width + x
    return best, best_index


@shared
def is_window_maximum(argmax, channel, y, x, width):
    """Whether input ``(y, x)`` is the recorded maximum of its 2x2 window."""
    return argmax[channel, y // 2, x // 2] == y * width + x


@shared
def unpooled_gradient(grad_pooled, argmax, channel, y, x, width):
    """Gradient reaching input ``(y, x)``: its window's gradient if it was the maximum."""
    if is_window_maximum(argmax, channel, y, x, width):
        return grad_pooled[channel, y // 2, x // 2]
    return zero_of(grad_pooled)


# --- CPU ------------------------------------------------------------------------------


@njit(parallel=True, cache=True)
def _relu_forward_cpu(values, bias, out):
    for channel in prange(values.shape[0]):
        for pixel in range(values.shape[1]):
            out[channel, pixel] = biased_relu(values[channel, pixel], bias[channel])


@njit(parallel=True, cache=True)
def _relu_backward_cpu(grad, activation):
    for index in prange(grad.size):
        grad[index] = relu_gradient(grad[index], activation[index])


@njit(parallel=True, cache=True)
def _maxpool_forward_cpu(values, pooled, argmax):
    for channel in prange(pooled.shape[0]):
        for out_y in range(pooled.shape[1]):
            for out_x in range(pooled.shape[2]):
                best, best_index = window_maximum(values, channel, out_y, out_x)
                pooled[channel, out_y, out_x] = best
                argmax[channel, out_y, out_x] = best_index


@njit(parallel=True, cache=True)
def _maxpool_relu_forward_cpu(values, bias, pooled, argmax):
    for channel in prange(pooled.shape[0]):
        for out_y in range(pooled.shape[1]):
            for out_x in range(pooled.shape[2]):
                best, best_index = window_maximum_relu(values, bias[channel], channel, out_y, out_x)
                pooled[channel, out_y, out_x] = best
                argmax[channel, out_y, out_x] = best_index


@njit(parallel=True, cache=True)
def _maxpool_backward_cpu(grad_pooled, argmax, grad):
    width = grad.shape[2]
    for channel in prange(grad.shape[0]):
        for y in range(grad.shape[1]):
            for x in range(width):
                grad[channel, y, x] = unpooled_gradient(grad_pooled, argmax, channel, y, x, width)


# --- CUDA -----------------------------------------------------------------------------


@cuda.jit(cache=True)
def _relu_forward_kernel(values, bias, out):
    pixel, channel = cuda.grid(2)
    if channel < values.shape[0] and pixel < values.shape[1]:
        out[channel, pixel] = biased_relu(values[channel, pixel], bias[channel])


@cuda.jit(cache=True)
def _relu_backward_kernel(grad, activation):
    index = cuda.grid(1)
    if index < grad.size:
        grad[index] = relu_gradient(grad[index], activation[index])


@cuda.jit(cache=True)
def _maxpool_forward_kernel(values, pooled, argmax):
    pixel, channel = cuda.grid(2)
    out_width = pooled.shape[2]
    if channel < pooled.shape[0] and pixel < pooled.shape[1] * out_width:
        out_y = pixel // out_width
        out_x = pixel % out_width
        best, best_index = window_maximum(values, channel, out_y, out_x)
        pooled[channel, out_y, out_x] = best
        argmax[channel, out_y, out_x] = best_index


@cuda.jit(cache=True)
def _maxpool_relu_forward_kernel(values, bias, pooled, argmax):
    pixel, channel = cuda.grid(2)
    out_width = pooled.shape[2]
    if channel < pooled.shape[0] and pixel < pooled.shape[1] * out_width:
        out_y = pixel // out_width
        out_x = pixel % out_width
        best, best_index = window_maximum_relu(values, bias[channel], channel, out_y, out_x)
        pooled[channel, out_y, out_x] = best
        argmax[channel, out_y, out_x] = best_index


@cuda.jit(cache=True)
def _maxpool_backward_kernel(grad_pooled, argmax, grad):
    pixel, channel = cuda.grid(2)
    width = grad.shape[2]
    if channel < grad.shape[0] and pixel < grad.shape[1] * width:
        y = pixel // width
        x = pixel % width
        grad[channel, y, x] = unpooled_gradient(grad_pooled, argmax, channel, y, x, width)


# --- dispatch -------------------------------------------------------------------------


def _pooled_shape(shape):
    channels, height, width = shape
    return channels, (height + 1) // 2, (width + 1) // 2


def relu_forward(values, *, bias=None, out=None):
    """Add a per-channel bias and apply ReLU (the epilogue of a conv GEMM).

    Parameters
    ----------
    values : float32 or float64 array, shape (C, H, W) or (C, H * W), C-contiguous
        Overwritten with ``max(values + bias[c], 0)`` unless ``out`` is given.
    bias : array, shape (C,), same dtype and device, optional
        Zero when omitted.
    out : array, same shape, dtype and device as ``values``, optional
        Receives the result instead of ``values``.

    Returns
    -------
    out, or values when ``out`` is omitted.
    """
    if is_cuda_array(values):
        return relu_forward_cuda(values, bias=bias, out=out)
    return relu_forward_cpu(values, bias=bias, out=out)


def relu_forward_cpu(values, *, bias=None, out=None):
    """CPU twin of :func:`relu_forward`."""
    channels = values.shape[0]
    target = values if out is None else out
    if bias is None:
        bias = np.zeros(channels, dtype=values.dtype)
    _relu_forward_cpu(values.reshape(channels, -1), bias, target.reshape(channels, -1))
    return target


def relu_forward_cuda(values, *, bias=None, out=None):
    """CUDA kernel of :func:`relu_forward`."""
    channels = values.shape[0]
    rows = values.reshape(channels, -1)
    target = values if out is None else out
    if bias is None:
        bias = as_device(np.zeros(channels, dtype=values.dtype), like=values)
    grid, block = launch_2d(channels, rows.shape[1])
    _relu_forward_kernel[grid, block](rows, bias, target.reshape(channels, -1))
    return target


def relu_backward(grad, activation):
    """Gradient through ReLU, in place: ``grad *= (activation > 0)``.

    Parameters
    ----------
    grad : float32 or float64 array, any shape, C-contiguous
        Gradient with respect to the ReLU output; overwritten with the gradient with
        respect to its input.
    activation : array, same shape, dtype and device
        The ReLU output of the forward pass.

    Returns
    -------
    grad : the same array.
    """
    if is_cuda_array(grad):
        return relu_backward_cuda(grad, activation)
    return relu_backward_cpu(grad, activation)


def relu_backward_cpu(grad, activation):
    """CPU twin of :func:`relu_backward`."""
    _relu_backward_cpu(grad.reshape(-1), activation.reshape(-1))
    return grad


def relu_backward_cuda(grad, activation):
    """CUDA kernel of :func:`relu_backward`."""
    grid, block = launch_1d(grad.size)
    _relu_backward_kernel[grid, block](grad.reshape(-1), activation.reshape(-1))
    return grad


def maxpool_forward(values, *, bias=None, out=None, argmax=None, stream=0):
    """2x2 stride-2 max-pool with ceil rounding, recording where each maximum was.

    Parameters
    ----------
    values : float32 or float64 array, shape (C, H, W), C-contiguous
    bias : array, shape (C,), same dtype and device, optional
        When given, pools ``relu(values + bias[c])`` (a conv's GEMM output, its bias
        and ReLU fused into the pool): bitwise what :func:`relu_forward` then this
        function give, without writing the activation.
    out : array, shape (C, (H + 1) // 2, (W + 1) // 2), same dtype and device, optional
    argmax : int32 array, same shape as ``out``, same device, optional
    stream : Numba stream or 0, optional
        The CUDA stream the launch is queued on (0: the default stream); ignored on
        the CPU.

    Returns
    -------
    pooled : array, shape (C, (H + 1) // 2, (W + 1) // 2)
        Maximum of each window (windows on an odd edge are clipped to the map).
    argmax : int32 array, same shape
        Flat index ``y * W + x`` within the channel plane of each window's first
        maximum in row-major order.
    """
    if is_cuda_array(values):
        return maxpool_forward_cuda(values, bias=bias, out=out, argmax=argmax, stream=stream)
    return maxpool_forward_cpu(values, bias=bias, out=out, argmax=argmax)


def maxpool_forward_cpu(values, *, bias=None, out=None, argmax=None):
    """CPU twin of :func:`maxpool_forward`."""
    shape = _pooled_shape(values.shape)
    if out is None:
        out = np.empty(shape, dtype=values.dtype)
    if argmax is None:
        argmax = np.empty(shape, dtype=np.int32)
    if bias is None:
        _maxpool_forward_cpu(values, out, argmax)
    else:
        _maxpool_relu_forward_cpu(values, bias, out, argmax)
    return out, argmax


def maxpool_forward_cuda(values, *, bias=None, out=None, argmax=None, stream=0):
    """CUDA kernel of :func:`maxpool_forward`."""
    shape = _pooled_shape(values.shape)
    if out is None:
        out = device_empty(shape, values.dtype, like=values)
    if argmax is None:
        argmax = device_empty(shape, np.int32, like=values)
    grid, block = launch_2d(shape[0], shape[1] * shape[2])
    if bias is None:
        _maxpool_forward_kernel[grid, block, stream](values, out, argmax)
    else:
        _maxpool_relu_forward_kernel[grid, block, stream](values, bias, out, argmax)
    return out, argmax


def maxpool_backward(grad_pooled, argmax, height: int, width: int, *, out=None):
    """Route the gradient of a max-pool back to the maxima of its windows.

    Parameters
    ----------
    grad_pooled : float32 or float64 array, shape (C, (H + 1) // 2, (W + 1) // 2)
        Gradient with respect to the pooled map.
    argmax : int32 array, same shape and device
        From :func:`maxpool_forward`.
    height, width : int
        Spatial size ``H, W`` of the map before pooling.
    out : array, shape (C, H, W), same dtype and device as ``grad_pooled``, optional
        Overwritten in full.

    Returns
    -------
    grad : array, shape (C, H, W)
        ``grad_pooled`` at each window's maximum, zero elsewhere.
    """
    if is_cuda_array(grad_pooled):
        return maxpool_backward_cuda(grad_pooled, argmax, height, width, out=out)
    return maxpool_backward_cpu(grad_pooled, argmax, height, width, out=out)


def maxpool_backward_cpu(grad_pooled, argmax, height: int, width: int, *, out=None):
    """CPU twin of :func:`maxpool_backward`."""
    if out is None:
        out = np.empty((grad_pooled.shape[0], height, width), dtype=grad_pooled.dtype)
    _maxpool_backward_cpu(grad_pooled, argmax, out)
    return out


def maxpool_backward_cuda(grad_pooled, argmax, height: int, width: int, *, out=None):
    """CUDA kernel of :func:`maxpool_backward`."""
    shape = (grad_pooled.shape[0], height, width)
    if out is None:
        out = device_empty(shape, grad_pooled.dtype, like=grad_pooled)
    grid, block = launch_2d(shape[0], height * width)
    _maxpool_backward_kernel[grid, block](grad_pooled, argmax, out)
    return out
