"""Patch-average voting: warp a map through a nearest-neighbour field.

Every target patch, centred at ``q``, is matched to the source patch centred at
``field[q]``, so its pixel ``q + d`` receives the source value at
``field[q] + d``. Collecting at a target position ``p`` what every patch
covering it sends (``q = p + o``, ``d = -o``)::

    out[:, p] = mean over offsets o (|o_y|, |o_x| <= patch_size // 2) with p + o
                inside the target and field[p + o] - o inside the source
                of source[:, field[p + o] - o]

When nothing valid reaches ``p`` (only possible if the field points outside
the source) it falls back to ``source[:, clamp(field[p])]``, so no division by
zero can happen.

The valid source positions of a pixel are gathered once, in raster order of
the offsets, by a ``shared`` function; both targets then sum them per channel
in that order and divide once, so CPU and CUDA results are bitwise equal.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import cuda

from diva_numba.kernels import targets
from diva_numba.kernels.targets import clamp_index, shared

#: Largest supported patch side (a CUDA thread keeps its taps in local memory).
MAX_PATCH_SIZE = 5
_MAX_TAPS = MAX_PATCH_SIZE * MAX_PATCH_SIZE


@shared
def _gather_vote_sources(field, y, x, half, source_height, source_width, sources):
    """Flat source indices voting for target (y, x), in ``sources[:count]``; returns count."""
    target_height, target_width = field.shape[0], field.shape[1]
    count = 0
    for dy in range(-half, half + 1):
        ty = y + dy
        if ty < 0 or ty >= target_height:
            continue
        for dx in range(-half, half + 1):
            tx = x + dx
            if tx < 0 or tx >= target_width:
                continue
            sy = field[ty, tx, 0] - dy
            sx = field[ty, tx, 1] - dx
            if 0 <= sy < source_height and 0 <= sx < source_width:
                sources[count] = sy * source_width + sx
                count += 1
    if count == 0:
        sy = clamp_index(field[y, x, 0], source_height)
        sx = clamp_index(field[y, x, 1], source_width)
        sources[0] = sy * source_width + sx
        count = 1
    return count


@shared
def _mean_vote(plane, sources, count):
    """Mean of ``plane`` at ``sources[:count]``, summed in order (the targets agree bitwise)."""
    total = np.float32(0.0)
    for k in range(count):
        total += plane[sources[k]]
    return total / np.float32(count)


@numba.njit(parallel=True, cache=True)
def _vote_rows(source, field, half, source_height, source_width, out):
    # source is (C, Hs * Ws) and out (C, Ht * Wt): flat pixels keep the gathers 1-D.
    height, width = field.shape[0], field.shape[1]
    taps = (2 * half + 1) * (2 * half + 1)
    for y in numba.prange(height):
        sources = np.empty((width, taps), dtype=np.int64)
        counts = np.empty(width, dtype=np.int64)
        for x in range(width):
            counts[x] = _gather_vote_sources(
                field, y, x, half, source_height, source_width, sources[x]
            )
        row = y * width
        # Channel outside x: each output row is written contiguously.
        for c in range(source.shape[0]):
            plane = source[c]
            for x in range(width):
                out[c, row + x] = _mean_vote(plane, sources[x], counts[x])


@cuda.jit(cache=True)
def _vote_kernel(source, field, half, source_height, source_width, out):
    x, y = cuda.grid(2)
    height, width = field.shape[0], field.shape[1]
    if y >= height or x >= width:
        return
    sources = cuda.local.array(_MAX_TAPS, dtype=numba.int32)
    count = _gather_vote_sources(field, y, x, half, source_height, source_width, sources)
    pixel = y * width + x
    for c in range(source.shape[0]):
        out[c, pixel] = _mean_vote(source[c], sources, count)


def _check_vote_inputs(source, field, patch_size):
    if source.ndim != 3 or source.dtype != np.float32 or 0 in source.shape:
        raise ValueError(
            f"source must be a non-empty float32 (C, H, W) array, got {source.dtype} {source.shape}"
        )
    if field.ndim != 3 or field.shape[2] != 2 or field.dtype != np.int32 or 0 in field.shape:
        raise ValueError(
            f"field must be a non-empty int32 (H, W, 2) array, got {field.dtype} {field.shape}"
        )
    if patch_size not in range(1, MAX_PATCH_SIZE + 1, 2):
        raise ValueError(f"patch_size must be odd and at most {MAX_PATCH_SIZE}, got {patch_size}")


def vote(source, field, *, patch_size):
    """Warp ``source`` through ``field`` with patch averaging.

    Parameters
    ----------
    source : float32 array, shape (C, Hs, Ws)
        Feature map or image (any channel count, e.g. 3 for pixels).
    field : int32 array, shape (Ht, Wt, 2)
        For each target position, the absolute ``(y, x)`` of its match in ``source``.
    patch_size : int
        Odd patch side, 1 to :data:`MAX_PATCH_SIZE` (3 or 5 in the analogy).

    Returns
    -------
    float32 array, shape (C, Ht, Wt)
        Same kind of array as ``source``.

    Notes
    -----
    Memory traffic floor (each array read or written once):
    ``4 * C * Hs * Ws + 8 * Ht * Wt + 4 * C * Ht * Wt`` bytes; see :func:`traffic_bytes`.
    The gathers themselves touch ``patch_size**2`` source values per output value,
    mostly from cache because neighbouring matches are coherent.
    """
    if targets.is_cuda_array(source):
        return vote_cuda(source, field, patch_size=patch_size)
    return vote_cpu(source, field, patch_size=patch_size)


def vote_cpu(source, field, *, patch_size):
    """CPU twin of :func:`vote`."""
    _check_vote_inputs(source, field, patch_size)
    channels, source_height, source_width = source.shape
    height, width = field.shape[:2]
    flat_source = np.ascontiguousarray(source).reshape(channels, source_height * source_width)
    out = np.empty((channels, height * width), dtype=np.float32)
    _vote_rows(
        flat_source, np.ascontiguousarray(field), patch_size // 2, source_height, source_width, out
    )
    return out.reshape(channels, height, width)


def vote_cuda(source, field, *, patch_size):
    """CUDA kernel of :func:`vote`; ``field`` may be a host array (it is copied over)."""
    _check_vote_inputs(source, field, patch_size)
    channels, source_height, source_width = source.shape
    height, width = field.shape[:2]
    field = targets.as_device(field, like=source)
    flat_source = source.reshape(channels, source_height * source_width)
    out = targets.device_empty((channels, height * width), np.float32, like=source)
    grid, block = targets.launch_2d(height, width)
    _vote_kernel[grid, block](flat_source, field, patch_size // 2, source_height, source_width, out)
    return out.reshape(channels, height, width)


def traffic_bytes(*, source_shape, field_shape):
    """Least bytes :func:`vote` must move between memory and chip.

    Parameters
    ----------
    source_shape : tuple of int
        ``(C, Hs, Ws)``.
    field_shape : tuple of int
        ``(Ht, Wt)`` or ``(Ht, Wt, 2)``.

    Returns
    -------
    int
        Source and field read once, output written once.
    """
    channels, source_height, source_width = source_shape
    target_pixels = field_shape[0] * field_shape[1]
    return 4 * channels * source_height * source_width + (8 + 4 * channels) * target_pixels
