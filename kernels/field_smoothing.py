"""Edge-aware smoothing of position fields: the domain-transform recursive filter (RF).

:func:`recursive_filter` is Gastal and Oliveira's *Domain Transform for Edge-Aware
Image and Video Processing* (SIGGRAPH 2011), recursive-filter variant. A guide ``I``
(``C`` channels) sets the distance between neighbours ``x - 1`` and ``x`` of a line (a
row or a column)::

    d(x) = 1 + (sigma_space / sigma_range) * sum_c |I_c(x) - I_c(x - 1)|

and one pass over a line is a first-order recursion left to right, then right to
left, with the feedback ``a ** d``::

    F[x] += a ** d(x) * (F[x - 1] - F[x])          x = 1 .. n - 1
    F[x] += a ** d(x + 1) * (F[x + 1] - F[x])      x = n - 2 .. 0

Each of the ``N`` iterations filters every row, then every column, with ``a =
exp(-sqrt(2) / sigma_i)``, ``sigma_i = sigma_space * sqrt(3) * 2 ** (N - i) /
sqrt(4 ** N - 1)``, ``i = 1 .. N`` (their variances add up to ``sigma_space ** 2``).
A guide step of ``sigma_range`` is as far as ``sigma_space`` pixels of flat guide.
Each pass averages (the weights of ``F[x]`` and its neighbour add up to one), so a
constant stays constant. :func:`smooth_field` builds on it: a normalised convolution
of a position field's displacements, weighted by their confidence.

The recursion along a line is written once (:func:`_filter_line`, given the line's
start and step) for rows and columns alike. The CPU twin runs lines in ``prange``
(rows for the horizontal passes, columns for the vertical ones); the CUDA kernels one
thread per line (a 1-D launch): a warp's column threads read neighbouring addresses,
its row threads strided ones. Float32 throughout; the targets agree to float32
rounding (``expf`` is not libm's, the CUDA compiler fuses multiply-adds).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np
from numba import cuda

from diva_numba.kernels import targets
from diva_numba.kernels.targets import shared, zero_of


@dataclass(frozen=True)
class FieldPriorParams:
    """Knobs of :func:`smooth_field`.

    Attributes
    ----------
    sigma_space : float
        How far a match spreads, in pixels of the field's grid (the filter's scale).
    sigma_range : float
        Guide difference (summed over its channels) that counts as an edge: a step
        of this size is as far, for the filter, as ``sigma_space`` pixels of flat
        guide. 0.1 for a 0..1 image: a black-white edge lets almost nothing across.
    iterations : int
        Row-then-column rounds of the recursive filter (3, as Gastal and Oliveira).
    min_support : float
        Filtered weight (same units as the weights) below which a pixel has no
        evidence around it and keeps its own position.
    """

    sigma_space: float = 16.0
    sigma_range: float = 0.1
    iterations: int = 3
    min_support: float = 1e-6

    def __post_init__(self):
        check_filter_settings(self.sigma_space, self.sigma_range, self.iterations)
        if not 0 <= self.min_support < math.inf:
            raise ValueError(f"min_support must be >= 0 and finite, got {self.min_support!r}")


# --------------------------------------------------------------------------- shared maths


@shared
def _edge_pixel(guide, ratio, across_x, across_y, y, x):
    """Domain-transform distances from ``(y, x - 1)`` and from ``(y - 1, x)`` to ``(y, x)``."""
    step_x = zero_of(guide)
    step_y = zero_of(guide)
    for c in range(guide.shape[0]):
        value = guide[c, y, x]
        if x > 0:
            step_x += abs(value - guide[c, y, x - 1])
        if y > 0:
            step_y += abs(value - guide[c, y - 1, x])
    one = np.float32(1.0)
    across_x[y, x] = one + ratio * step_x
    across_y[y, x] = one + ratio * step_y


@shared
def _filter_line(values, distance, start_y, start_x, step_y, step_x, count, log_feedback):
    """One RF pass (causal, then anti-causal) over the ``count`` pixels of a line.

    The line starts at ``(start_y, start_x)`` and advances by ``(step_y, step_x)``;
    ``distance[y, x]`` is the domain-transform distance from the previous pixel of
    the line to ``(y, x)``, ``log_feedback`` is ``log(a)`` (float32). Every channel
    of ``values`` ``(K, H, W)`` is filtered in place.
    """
    channels = values.shape[0]
    for k in range(1, count):
        y = start_y + k * step_y
        x = start_x + k * step_x
        feedback = np.float32(math.exp(distance[y, x] * log_feedback))
        for c in range(channels):
            current = values[c, y, x]
            values[c, y, x] = current + feedback * (values[c, y - step_y, x - step_x] - current)
    for k in range(count - 2, -1, -1):
        y = start_y + k * step_y
        x = start_x + k * step_x
        feedback = np.float32(math.exp(distance[y + step_y, x + step_x] * log_feedback))
        for c in range(channels):
            current = values[c, y, x]
            values[c, y, x] = current + feedback * (values[c, y + step_y, x + step_x] - current)


@shared
def _pack_pixel(positions, weights, buffer, y, x):
    """``(w Dy, w Dx, w)`` of one pixel; unusable weights or positions weigh nothing."""
    zero = zero_of(buffer)
    offset_y = positions[y, x, 0] - positions.dtype.type(y)
    offset_x = positions[y, x, 1] - positions.dtype.type(x)
    weight = weights[y, x]
    finite = math.isfinite(weight) and math.isfinite(offset_y) and math.isfinite(offset_x)
    if not (finite and weight > zero):
        weight = zero
        offset_y = zero
        offset_x = zero
    buffer[0, y, x] = weight * offset_y
    buffer[1, y, x] = weight * offset_x
    buffer[2, y, x] = weight


@shared
def _unpack_pixel(buffer, positions, min_support, out, support, y, x):
    total = buffer[2, y, x]
    support[y, x] = total
    if total > min_support:
        out[y, x, 0] = buffer[0, y, x] / total + positions.dtype.type(y)
        out[y, x, 1] = buffer[1, y, x] / total + positions.dtype.type(x)
    else:
        out[y, x, 0] = positions[y, x, 0]
        out[y, x, 1] = positions[y, x, 1]


# --------------------------------------------------------------------------- CPU twins


@numba.njit(parallel=True, cache=True)
def _edge_rows(guide, ratio, across_x, across_y):
    height, width = across_x.shape
    for row in numba.prange(height):
        y = np.int64(row)  # prange indices are unsigned
        for x in range(width):
            _edge_pixel(guide, ratio, across_x, across_y, y, x)


@numba.njit(parallel=True, cache=True)
def _filter_rows(values, across_x, log_feedback):
    height, width = values.shape[1], values.shape[2]
    for row in numba.prange(height):
        _filter_line(values, across_x, np.int64(row), 0, 0, 1, width, log_feedback)


@numba.njit(parallel=True, cache=True)
def _filter_columns(values, across_y, log_feedback):
    height, width = values.shape[1], values.shape[2]
    for column in numba.prange(width):
        _filter_line(values, across_y, 0, np.int64(column), 1, 0, height, log_feedback)


@numba.njit(parallel=True, cache=True)
def _pack_rows(positions, weights, buffer):
    for row in numba.prange(weights.shape[0]):
        y = np.int64(row)  # prange indices are unsigned
        for x in range(weights.shape[1]):
            _pack_pixel(positions, weights, buffer, y, x)


@numba.njit(parallel=True, cache=True)
def _unpack_rows(buffer, positions, min_support, out, support):
    for row in numba.prange(support.shape[0]):
        y = np.int64(row)  # prange indices are unsigned
        for x in range(support.shape[1]):
            _unpack_pixel(buffer, positions, min_support, out, support, y, x)


# --------------------------------------------------------------------------- CUDA kernels


@cuda.jit(cache=True)
def _edge_kernel(guide, ratio, across_x, across_y):
    x, y = cuda.grid(2)
    if y < across_x.shape[0] and x < across_x.shape[1]:
        _edge_pixel(guide, ratio, across_x, across_y, y, x)


@cuda.jit(cache=True)
def _rows_kernel(values, across_x, log_feedback):
    row = cuda.grid(1)
    if row < values.shape[1]:
        _filter_line(values, across_x, row, 0, 0, 1, values.shape[2], log_feedback)


@cuda.jit(cache=True)
def _columns_kernel(values, across_y, log_feedback):
    column = cuda.grid(1)
    if column < values.shape[2]:
        _filter_line(values, across_y, 0, column, 1, 0, values.shape[1], log_feedback)


@cuda.jit(cache=True)
def _pack_kernel(positions, weights, buffer):
    x, y = cuda.grid(2)
    if y < weights.shape[0] and x < weights.shape[1]:
        _pack_pixel(positions, weights, buffer, y, x)


@cuda.jit(cache=True)
def _unpack_kernel(buffer, positions, min_support, out, support):
    x, y = cuda.grid(2)
    if y < support.shape[0] and x < support.shape[1]:
        _unpack_pixel(buffer, positions, min_support, out, support, y, x)


# --------------------------------------------------------------------------- checks


def iteration_sigmas(sigma_space, iterations):
    """``sigma_i``, ``i = 1 .. iterations``: the spatial scale of each RF iteration."""
    n = iterations
    return [sigma_space * math.sqrt(3.0) * 2.0 ** (n - i) / math.sqrt(4.0**n - 1.0)
            for i in range(1, n + 1)]  # fmt: skip


def check_filter_settings(sigma_space, sigma_range, iterations):
    """Raise ValueError unless both sigmas are positive and finite and ``iterations >= 1``."""
    for name, value in (("sigma_space", sigma_space), ("sigma_range", sigma_range)):
        if not isinstance(value, int | float | np.number) or not 0 < value < math.inf:
            raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    if not isinstance(iterations, int | np.integer) or iterations < 1:
        raise ValueError(f"iterations must be an integer >= 1, got {iterations!r}")


def check_guide(guide, shape):
    """Raise ValueError unless ``guide`` is a non-empty float32 ``(C, *shape)`` array."""
    if guide.ndim != 3 or guide.dtype != np.float32 or guide.shape[0] < 1:
        raise ValueError(f"guide must be float32 (C, H, W), got {guide.dtype} {guide.shape}")
    if tuple(guide.shape[1:]) != tuple(shape):
        raise ValueError(f"guide is {tuple(guide.shape[1:])} but the values are {tuple(shape)}")


def _check_values(values):
    if values.ndim != 3 or values.dtype != np.float32 or 0 in values.shape:
        raise ValueError(
            f"values must be a non-empty float32 (K, H, W) array, got {values.dtype} {values.shape}"
        )
    if not targets.is_cuda_array(values) and not values.flags.c_contiguous:
        raise ValueError("values must be C-contiguous: they are filtered in place")


def check_positions(positions):
    """Raise ValueError unless ``positions`` is a non-empty float32 (H, W, 2) array; (H, W)."""
    if positions.ndim != 3 or positions.shape[2] != 2 or positions.dtype != np.float32:
        raise ValueError(
            f"positions must be a float32 (H, W, 2) array, got {positions.dtype} {positions.shape}"
        )
    if 0 in positions.shape:
        raise ValueError(f"positions must not be empty, got {positions.shape}")
    return int(positions.shape[0]), int(positions.shape[1])


def _check_smoothing(positions, weights, guide, params, on_gpu):
    if not isinstance(params, FieldPriorParams):
        raise TypeError(f"params must be a FieldPriorParams, got {type(params).__name__}")
    shape = check_positions(positions)
    if weights.dtype != np.float32 or tuple(weights.shape) != shape:
        raise ValueError(f"weights must be float32 {shape}, got {weights.dtype} {weights.shape}")
    check_guide(guide, shape)
    if not on_gpu and (targets.is_cuda_array(weights) or targets.is_cuda_array(guide)):
        raise ValueError("positions are a host array: weights and guide must be host arrays too")
    return shape


# --------------------------------------------------------------------------- public API

_DEFAULT_PARAMS = FieldPriorParams()


def recursive_filter(values, guide, *, sigma_space, sigma_range, iterations=3):
    """Smooth every channel of ``values`` in place, stopping at the edges of ``guide``.

    Parameters
    ----------
    values : float32 array, shape (K, H, W)
        The channels to filter (C-contiguous); overwritten with the result.
    guide : float32 array, shape (C, H, W)
        The image whose edges stop the smoothing (values 0..1, or features).
    sigma_space : float
        Spatial scale of the smoothing, in pixels.
    sigma_range : float
        Guide difference (summed over channels) that counts as an edge.
    iterations : int
        Row-then-column rounds; 3 removes the visible stripes of one round.

    Returns
    -------
    float32 array, shape (K, H, W)
        ``values`` itself. On the CUDA path ``guide`` may be a host array (it is
        copied over).

    Notes
    -----
    Memory traffic floor: ``(4 * C + 8) * H * W`` bytes (guide read, two distance
    maps written) plus ``2 * (8 * K + 4) * H * W`` per iteration (a row and a column
    pass, each reading and writing the channels and reading one distance map); see
    :func:`traffic_bytes`.
    """
    if targets.is_cuda_array(values):
        return recursive_filter_cuda(
            values, guide, sigma_space=sigma_space, sigma_range=sigma_range, iterations=iterations
        )
    return recursive_filter_cpu(
        values, guide, sigma_space=sigma_space, sigma_range=sigma_range, iterations=iterations
    )


def recursive_filter_cpu(values, guide, *, sigma_space, sigma_range, iterations=3):
    """CPU twin of :func:`recursive_filter` (NumPy arrays)."""
    _check_values(values)
    check_guide(guide, values.shape[1:])
    check_filter_settings(sigma_space, sigma_range, iterations)
    if targets.is_cuda_array(guide):
        raise ValueError("guide is a GPU array but values are host arrays")
    across_x = np.empty(values.shape[1:], dtype=np.float32)
    across_y = np.empty(values.shape[1:], dtype=np.float32)
    ratio = np.float32(sigma_space / sigma_range)
    _edge_rows(np.ascontiguousarray(guide), ratio, across_x, across_y)
    for sigma in iteration_sigmas(sigma_space, iterations):
        log_feedback = np.float32(-math.sqrt(2.0) / sigma)
        _filter_rows(values, across_x, log_feedback)
        _filter_columns(values, across_y, log_feedback)
    return values


def recursive_filter_cuda(values, guide, *, sigma_space, sigma_range, iterations=3):
    """CUDA kernels of :func:`recursive_filter`; ``guide`` may be a host array."""
    _check_values(values)
    check_guide(guide, values.shape[1:])
    check_filter_settings(sigma_space, sigma_range, iterations)
    guide = targets.as_device(guide, like=values)
    _, height, width = values.shape
    across_x = targets.kernel_array(targets.device_empty((height, width), np.float32, like=values))
    across_y = targets.kernel_array(targets.device_empty((height, width), np.float32, like=values))
    kernel_values = targets.kernel_array(values)
    grid, block = targets.launch_2d(height, width)
    _edge_kernel[grid, block](guide, np.float32(sigma_space / sigma_range), across_x, across_y)
    row_grid, row_block = targets.launch_1d(height)
    column_grid, column_block = targets.launch_1d(width)
    for sigma in iteration_sigmas(sigma_space, iterations):
        log_feedback = np.float32(-math.sqrt(2.0) / sigma)
        _rows_kernel[row_grid, row_block](kernel_values, across_x, log_feedback)
        _columns_kernel[column_grid, column_block](kernel_values, across_y, log_feedback)
    return values


def smooth_field(positions, weights, guide, *, params=_DEFAULT_PARAMS):
    """Confidence-weighted, edge-aware fit of a smooth field to ``positions``.

    With ``D = positions - (y, x)`` the displacements and ``filter`` the recursive
    filter of :func:`~diva_numba.kernels.field_smoothing.recursive_filter` guided by
    ``guide``, the result is ``(y, x) + filter(w D) / filter(w)``, the three channels
    filtered in one pass over a ``(3, H, W)`` buffer.

    Parameters
    ----------
    positions : float32 array, shape (H, W, 2)
        Absolute ``(y, x)`` matches (an int32 field converted by the caller).
    weights : float32 array, shape (H, W)
        Confidence ``w >= 0`` of each match; negative, NaN or infinite weights, and
        non-finite positions, count as 0.
    guide : float32 array, shape (C, H, W)
        The structure image (0..1) or its features: its edges stop the smoothing.
    params : FieldPriorParams
        Filter scales, iterations and ``min_support``.

    Returns
    -------
    positions : float32 array, shape (H, W, 2)
        The smoothed positions; where the support is at most ``min_support`` the
        input position is kept. Not clamped into the matched image.
    support : float32 array, shape (H, W)
        ``filter(w)``: the weight of the evidence behind each smoothed position.

    Same kind of arrays as ``positions``; on the CUDA path ``weights`` and
    ``guide`` may be host arrays (they are copied over).
    """
    if targets.is_cuda_array(positions):
        return smooth_field_cuda(positions, weights, guide, params=params)
    return smooth_field_cpu(positions, weights, guide, params=params)


def _filter_settings(params):
    return {
        "sigma_space": params.sigma_space,
        "sigma_range": params.sigma_range,
        "iterations": params.iterations,
    }


def smooth_field_cpu(positions, weights, guide, *, params=_DEFAULT_PARAMS):
    """CPU twin of :func:`smooth_field` (NumPy in, NumPy out)."""
    height, width = _check_smoothing(positions, weights, guide, params, on_gpu=False)
    positions = np.ascontiguousarray(positions)
    buffer = np.empty((3, height, width), dtype=np.float32)
    _pack_rows(positions, np.ascontiguousarray(weights), buffer)
    recursive_filter_cpu(buffer, guide, **_filter_settings(params))
    out = np.empty((height, width, 2), dtype=np.float32)
    support = np.empty((height, width), dtype=np.float32)
    _unpack_rows(buffer, positions, np.float32(params.min_support), out, support)
    return out, support


def smooth_field_cuda(positions, weights, guide, *, params=_DEFAULT_PARAMS):
    """CUDA kernels of :func:`smooth_field`; ``weights`` and ``guide`` may be host arrays."""
    height, width = _check_smoothing(positions, weights, guide, params, on_gpu=True)
    weights = targets.as_device(weights, like=positions)
    buffer = targets.device_empty((3, height, width), np.float32, like=positions)
    kernel_buffer = targets.kernel_array(buffer)
    grid, block = targets.launch_2d(height, width)
    _pack_kernel[grid, block](positions, weights, kernel_buffer)
    recursive_filter_cuda(buffer, guide, **_filter_settings(params))
    out = targets.device_empty((height, width, 2), np.float32, like=positions)
    support = targets.device_empty((height, width), np.float32, like=positions)
    min_support = np.float32(params.min_support)
    _unpack_kernel[grid, block](kernel_buffer, positions, min_support, out, support)
    return out, support


def traffic_bytes(*, values_shape, guide_channels, iterations):
    """Least bytes :func:`recursive_filter` moves (see its Notes), for bandwidth figures.

    ``values_shape`` is ``(K, H, W)``, ``guide_channels`` the guide's ``C``.
    """
    channels, height, width = values_shape
    pixels = height * width
    return 4 * guide_channels * pixels + 8 * pixels + iterations * 2 * (8 * channels + 4) * pixels
