"""im2col and col2im for 3x3 convolutions with padding 1 and stride 1.

A 3x3 convolution of a ``(C, H, W)`` map is the GEMM ``weight.reshape(O, C * 9) @ cols``
with ``cols = im2col(image)`` of shape ``(C * 9, H * W)``: row ``c * 9 + ky * 3 + kx``
holds channel ``c`` shifted by ``(ky - 1, kx - 1)``, zero outside the map. That row
order is the C-order flattening of an ``(O, C, 3, 3)`` weight, so the weight needs
no copy.

:func:`col2im` is the exact adjoint of :func:`im2col` (``<im2col(x), y> ==
<x, col2im(y)>``): it carries the gradient of the columns back to the input, summing
the nine taps that read each input pixel. Every output element is written by one
thread (the CPU twin accumulates one channel plane per thread; the CUDA kernel
gathers the nine taps per pixel), so there are no races and no atomics.

The CPU twins copy whole shifted rows (the inner loops vectorise); the CUDA kernels
compute one element per thread. Both decode rows and bounds with the same helpers,
and both add a pixel's nine taps in the same order, so col2im agrees bitwise.

The deconvolution fuses the layers' element-wise work into these passes (one Numba
launch per conv each way): ``im2col(x, bias=b)`` unfolds ``relu(x + b)`` (the
previous conv's GEMM output, its bias and ReLU applied on the fly);
``col2im(..., pre_activation=z, bias=b)`` gives the gradient through the ReLU of
``z + b`` as well; :func:`col2im_unpool` also routes it back through a 2x2 max-pool.
"""

from __future__ import annotations

import numpy as np
from numba import cuda, njit, prange

from diva_numba.kernels.activations import biased_relu, is_window_maximum, relu_open
from diva_numba.kernels.targets import device_empty, is_cuda_array, launch_2d, shared, zero_of

#: Taps per input channel (3x3 kernel).
TAPS = 9


@shared
def tap_offset(row):
    """Channel and ``(dy, dx)`` shift read by im2col row ``row``."""
    tap = row % TAPS
    return row // TAPS, tap // 3 - 1, tap % 3 - 1


@shared
def shifted_range(size, shift):
    """Coordinates ``i`` in ``[0, size)`` whose source ``i + shift`` is also inside."""
    # if/else rather than min/max: the builtins have no CUDA lowering.
    low = -shift if shift < 0 else 0
    high = size - shift if shift > 0 else size
    return low, high


@shared
def im2col_value(image, row, pixel):
    """``cols[row, pixel]``: the input value tap ``row`` reads for output ``pixel``."""
    height, width = image.shape[1], image.shape[2]
    channel, dy, dx = tap_offset(row)
    y_lo, y_hi = shifted_range(height, dy)
    x_lo, x_hi = shifted_range(width, dx)
    y = pixel // width
    x = pixel % width
    if y_lo <= y < y_hi and x_lo <= x < x_hi:
        return image[channel, y + dy, x + dx]
    return zero_of(image)


@shared
def im2col_relu_value(image, bias, row, pixel):
    """``cols[row, pixel]`` of ``relu(image + bias[c])``: zero outside the map."""
    height, width = image.shape[1], image.shape[2]
    channel, dy, dx = tap_offset(row)
    y_lo, y_hi = shifted_range(height, dy)
    x_lo, x_hi = shifted_range(width, dx)
    y = pixel // width
    x = pixel % width
    if y_lo <= y < y_hi and x_lo <= x < x_hi:
        return biased_relu(image[channel, y + dy, x + dx], bias[channel])
    return zero_of(image)


@shared
def col2im_value(cols, channel, y, x, width):
    """Sum of the column entries whose tap reads input pixel ``(y, x)`` of ``channel``."""
    height = cols.shape[1] // width
    total = zero_of(cols)
    for tap in range(TAPS):
        _, dy, dx = tap_offset(tap)
        # Output pixel (y - dy, x - dx) reads this input through the tap.
        y_lo, y_hi = shifted_range(height, -dy)
        x_lo, x_hi = shifted_range(width, -dx)
        if y_lo <= y < y_hi and x_lo <= x < x_hi:
            total += cols[channel * TAPS + tap, (y - dy) * width + (x - dx)]
    return total


# --- CPU ------------------------------------------------------------------------------


@njit(parallel=True, cache=True)
def _im2col_cpu(image, cols):
    height, width = image.shape[1], image.shape[2]
    for row in prange(cols.shape[0]):
        channel, dy, dx = tap_offset(row)
        y_lo, y_hi = shifted_range(height, dy)
        x_lo, x_hi = shifted_range(width, dx)
        cols[row, : y_lo * width] = 0
        cols[row, y_hi * width :] = 0
        for y in range(y_lo, y_hi):
            line = cols[row, y * width : (y + 1) * width]
            line[:x_lo] = 0
            line[x_hi:] = 0
            source = image[channel, y + dy]
            for x in range(x_lo, x_hi):
                line[x] = source[x + dx]


@njit(parallel=True, cache=True)
def _im2col_relu_cpu(image, bias, cols):
    height, width = image.shape[1], image.shape[2]
    for row in prange(cols.shape[0]):
        channel, dy, dx = tap_offset(row)
        y_lo, y_hi = shifted_range(height, dy)
        x_lo, x_hi = shifted_range(width, dx)
        cols[row, : y_lo * width] = 0
        cols[row, y_hi * width :] = 0
        offset = bias[channel]
        for y in range(y_lo, y_hi):
            line = cols[row, y * width : (y + 1) * width]
            line[:x_lo] = 0
            line[x_hi:] = 0
            source = image[channel, y + dy]
            for x in range(x_lo, x_hi):
                line[x] = biased_relu(source[x + dx], offset)


@njit(cache=True)
def _fold_plane(cols, channel, plane):
    """``plane = col2im(cols)[channel]``: taps added in order 0..8 (as :func:`col2im_value`)."""
    height, width = plane.shape
    plane[:] = 0
    for tap in range(TAPS):
        _, dy, dx = tap_offset(tap)
        row = cols[channel * TAPS + tap]
        y_lo, y_hi = shifted_range(height, dy)
        x_lo, x_hi = shifted_range(width, dx)
        # Column pixel (y, x) read input (y + dy, x + dx): add it back there.
        for y in range(y_lo, y_hi):
            target = plane[y + dy]
            for x in range(x_lo, x_hi):
                target[x + dx] += row[y * width + x]


@njit(parallel=True, cache=True)
def _col2im_cpu(cols, image):
    for channel in prange(image.shape[0]):
        _fold_plane(cols, channel, image[channel])


@njit(parallel=True, cache=True)
def _col2im_relu_cpu(cols, pre_activation, bias, image):
    height, width = image.shape[1], image.shape[2]
    for channel in prange(image.shape[0]):
        plane = image[channel]
        _fold_plane(cols, channel, plane)
        offset = bias[channel]
        for y in range(height):
            for x in range(width):
                if not relu_open(pre_activation[channel, y, x], offset):
                    plane[y, x] = 0


@njit(parallel=True, cache=True)
def _col2im_unpool_cpu(cols, argmax, pre_activation, bias, image):
    height, width = image.shape[1], image.shape[2]
    pooled_height, pooled_width = argmax.shape[1], argmax.shape[2]
    for channel in prange(image.shape[0]):
        pooled = np.empty((pooled_height, pooled_width), dtype=image.dtype)
        _fold_plane(cols, channel, pooled)
        offset = bias[channel]
        for y in range(height):
            for x in range(width):
                if is_window_maximum(argmax, channel, y, x, width) and relu_open(
                    pre_activation[channel, y, x], offset
                ):
                    image[channel, y, x] = pooled[y // 2, x // 2]
                else:
                    image[channel, y, x] = 0


def im2col_cpu(image: np.ndarray, *, out: np.ndarray | None = None, bias=None) -> np.ndarray:
    """CPU twin of :func:`im2col`."""
    channels, height, width = image.shape
    if out is None:
        out = np.empty((channels * TAPS, height * width), dtype=image.dtype)
    if bias is None:
        _im2col_cpu(image, out)
    else:
        _im2col_relu_cpu(image, bias, out)
    return out


def col2im_cpu(
    cols: np.ndarray, height: int, width: int, *, out=None, pre_activation=None, bias=None
) -> np.ndarray:
    """CPU twin of :func:`col2im`."""
    if out is None:
        out = np.empty((cols.shape[0] // TAPS, height, width), dtype=cols.dtype)
    if _through_relu(pre_activation, bias):
        _col2im_relu_cpu(cols, pre_activation, bias, out)
    else:
        _col2im_cpu(cols, out)
    return out


def col2im_unpool_cpu(cols, argmax, pre_activation, bias, *, out=None):
    """CPU twin of :func:`col2im_unpool`."""
    if out is None:
        out = np.empty(pre_activation.shape, dtype=cols.dtype)
    _col2im_unpool_cpu(cols, argmax, pre_activation, bias, out)
    return out


def _through_relu(pre_activation, bias):
    if (pre_activation is None) != (bias is None):
        raise ValueError("pre_activation and bias go together")
    return pre_activation is not None


# --- CUDA -----------------------------------------------------------------------------


@cuda.jit(cache=True)
def _im2col_kernel(image, cols):
    pixel, row = cuda.grid(2)
    if row < cols.shape[0] and pixel < cols.shape[1]:
        cols[row, pixel] = im2col_value(image, row, pixel)


@cuda.jit(cache=True)
def _im2col_relu_kernel(image, bias, cols):
    pixel, row = cuda.grid(2)
    if row < cols.shape[0] and pixel < cols.shape[1]:
        cols[row, pixel] = im2col_relu_value(image, bias, row, pixel)


@cuda.jit(cache=True)
def _col2im_kernel(cols, image):
    pixel, channel = cuda.grid(2)
    width = image.shape[2]
    if channel < image.shape[0] and pixel < image.shape[1] * width:
        y = pixel // width
        x = pixel % width
        image[channel, y, x] = col2im_value(cols, channel, y, x, width)


@cuda.jit(cache=True)
def _col2im_relu_kernel(cols, pre_activation, bias, image):
    pixel, channel = cuda.grid(2)
    width = image.shape[2]
    if channel < image.shape[0] and pixel < image.shape[1] * width:
        y = pixel // width
        x = pixel % width
        value = zero_of(image)
        if relu_open(pre_activation[channel, y, x], bias[channel]):
            value = col2im_value(cols, channel, y, x, width)
        image[channel, y, x] = value


@cuda.jit(cache=True)
def _col2im_unpool_kernel(cols, argmax, pre_activation, bias, image):
    pixel, channel = cuda.grid(2)
    width = image.shape[2]
    if channel < image.shape[0] and pixel < image.shape[1] * width:
        y = pixel // width
        x = pixel % width
        value = zero_of(image)
        if is_window_maximum(argmax, channel, y, x, width) and relu_open(
            pre_activation[channel, y, x], bias[channel]
        ):
            # Only a window's maximum folds its taps: each pooled value is summed once.
            value = col2im_value(cols, channel, y // 2, x // 2, argmax.shape[2])
        image[channel, y, x] = value


def im2col_cuda(image, *, out=None, bias=None, stream=0):
    """CUDA twin of :func:`im2col` (CuPy or Numba device arrays), queued on ``stream``."""
    channels, height, width = image.shape
    if out is None:
        out = device_empty((channels * TAPS, height * width), image.dtype, like=image)
    grid, block = launch_2d(out.shape[0], out.shape[1])
    if bias is None:
        _im2col_kernel[grid, block, stream](image, out)
    else:
        _im2col_relu_kernel[grid, block, stream](image, bias, out)
    return out


def col2im_cuda(
    cols, height: int, width: int, *, out=None, pre_activation=None, bias=None, stream=0
):
    """CUDA twin of :func:`col2im` (CuPy or Numba device arrays), queued on ``stream``."""
    channels = cols.shape[0] // TAPS
    if out is None:
        out = device_empty((channels, height, width), cols.dtype, like=cols)
    grid, block = launch_2d(channels, height * width)
    if _through_relu(pre_activation, bias):
        _col2im_relu_kernel[grid, block, stream](cols, pre_activation, bias, out)
    else:
        _col2im_kernel[grid, block, stream](cols, out)
    return out


def col2im_unpool_cuda(cols, argmax, pre_activation, bias, *, out=None, stream=0):
    """CUDA twin of :func:`col2im_unpool`, queued on ``stream``."""
    channels, height, width = pre_activation.shape
    if out is None:
        out = device_empty((channels, height, width), cols.dtype, like=cols)
    grid, block = launch_2d(channels, height * width)
    _col2im_unpool_kernel[grid, block, stream](cols, argmax, pre_activation, bias, out)
    return out


# --- dispatch -------------------------------------------------------------------------


def im2col(image, *, out=None, bias=None, stream=0):
    """Unfold the 3x3 neighbourhoods (padding 1) of a feature map into columns.

    Parameters
    ----------
    image : float32 or float64 array, shape (C, H, W), C-contiguous
    out : array, shape (C * 9, H * W), same dtype and device, optional
        Written in full; allocated when omitted.
    bias : array, shape (C,), same dtype and device, optional
        When given, unfolds ``relu(image + bias[c])`` instead (``image`` being a
        conv's GEMM output): bitwise :func:`~diva_numba.kernels.activations.relu_forward`
        then this function, without writing the activation.
    stream : Numba stream or 0, optional
        The CUDA stream the launch is queued on (0: the default stream); ignored on
        the CPU.

    Returns
    -------
    cols : array, shape (C * 9, H * W)
        ``cols[c * 9 + ky * 3 + kx, y * W + x] = image[c, y + ky - 1, x + kx - 1]``,
        zero where that position lies outside the map.
    """
    if is_cuda_array(image):
        return im2col_cuda(image, out=out, bias=bias, stream=stream)
    return im2col_cpu(image, out=out, bias=bias)


def col2im(cols, height: int, width: int, *, out=None, pre_activation=None, bias=None, stream=0):
    """Fold columns back onto the map, summing overlapping taps (adjoint of :func:`im2col`).

    Parameters
    ----------
    cols : float32 or float64 array, shape (C * 9, H * W), C-contiguous
    height, width : int
        Spatial size ``H, W`` of the map.
    out : array, shape (C, H, W), same dtype and device, optional
        Overwritten (not accumulated into); allocated when omitted.
    pre_activation, bias : arrays, shapes (C, H, W) and (C,), optional, together
        When given, the map was ``relu(pre_activation + bias[c])`` and the result is
        the gradient with respect to ``pre_activation``: zero where that ReLU is
        closed (bitwise this function then
        :func:`~diva_numba.kernels.activations.relu_backward`).
    stream : Numba stream or 0, optional
        As for :func:`im2col`.

    Returns
    -------
    image : array, shape (C, H, W)
        ``image[c, y, x]`` is the sum of ``cols[c * 9 + ky * 3 + kx, p]`` over the
        output pixels ``p`` whose tap ``(ky, kx)`` reads ``(y, x)``.
    """
    if is_cuda_array(cols):
        return col2im_cuda(
            cols, height, width, out=out, pre_activation=pre_activation, bias=bias, stream=stream
        )
    return col2im_cpu(cols, height, width, out=out, pre_activation=pre_activation, bias=bias)


def col2im_unpool(cols, argmax, pre_activation, bias, *, out=None, stream=0):
    """:func:`col2im` of a pooled map, carried back through the pool and the ReLU before it.

    The backward pass of ``conv(maxpool(relu(z + b)))`` with respect to ``z`` in one
    pass: the columns' gradient folds onto the pooled map, each window's gradient
    goes to its recorded maximum, and the ReLU of ``z + b`` gates it. Bitwise
    :func:`col2im`, then :func:`~diva_numba.kernels.activations.maxpool_backward`,
    then :func:`~diva_numba.kernels.activations.relu_backward`.

    Parameters
    ----------
    cols : float32 or float64 array, shape (C * 9, h * w), C-contiguous
        Gradient of the columns of the pooled ``(C, h, w)`` map.
    argmax : int32 array, shape (C, h, w), same device
        From :func:`~diva_numba.kernels.activations.maxpool_forward` (flat ``y * W + x``).
    pre_activation : array, shape (C, H, W), same dtype and device as ``cols``
        ``z``, the map before bias, ReLU and pool; ``h = (H + 1) // 2``, ``w = (W + 1) // 2``.
    bias : array, shape (C,), same dtype and device
    out : array, shape (C, H, W), optional
        Overwritten in full; allocated when omitted.
    stream : Numba stream or 0, optional
        As for :func:`im2col`.

    Returns
    -------
    array, shape (C, H, W): the gradient with respect to ``pre_activation``.
    """
    if is_cuda_array(cols):
        return col2im_unpool_cuda(cols, argmax, pre_activation, bias, out=out, stream=stream)
    return col2im_unpool_cpu(cols, argmax, pre_activation, bias, out=out)
