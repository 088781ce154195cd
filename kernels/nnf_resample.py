"""Moving nearest-neighbour fields between levels and between video frames.

Two operations on int32 ``(H, W, 2)`` fields of absolute ``(y, x)`` matches:

* :func:`upsample_field` carries a field to the next (finer) level;
* :func:`pull_field` seeds ``phi_ab`` of frame ``t`` (frame -> style) from frame
  ``t - 1``: the frame moved, so each pixel takes the match of where its content
  was.

Resampling conventions, used throughout:

* *nearest cell*: position ``i`` of an ``n``-long axis lies nearest to cell
  ``floor((i + 0.5) * m / n)`` of an ``m``-long axis over the same extent
  (pixel centres aligned; for a ratio of 2 this is ``i // 2``);
* *flows* are float32 ``(Hf, Wf, 2)`` arrays of ``(dx, dy)`` pixel displacements,
  as OpenCV returns them. They may have another resolution than the grid they
  move positions of: a grid position samples the flow at its nearest cell and
  the vector is scaled by ``grid size / flow size`` per axis, so a flow of the
  input frames works at every feature level;
* moved positions round half up, ``floor(v + 0.5)``.

All position maths is integer, or float64 arranged so that a fused
multiply-add cannot change its rounding; it is shared by both targets, so CPU
and CUDA results are equal.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import cuda

from diva_numba.kernels import targets
from diva_numba.kernels.targets import clamp_index, shared


def nearest_cells(size: int, count: int, xp=np):
    """For each of ``size`` positions of an axis, its nearest of ``count`` cells over the
    same extent (the *nearest cell* convention above), as an ``xp`` integer array."""
    return ((2 * xp.arange(size) + 1) * count) // (2 * size)


# --------------------------------------------------------------------------- shared maths


@shared
def nearest_cell(position, size, cell_count):
    return ((2 * position + 1) * cell_count) // (2 * size)


@shared
def _scaled_offset(offset, new_size, old_size):
    # Integer rounding (half up) of offset * new_size / old_size: no float
    # rounding to disagree on between targets.
    return (2 * offset * new_size + old_size) // (2 * old_size)


@shared
def _upsampled_match(field, y, x, height, width, source_height, source_width):
    old_height, old_width = field.shape[0], field.shape[1]
    parent_y = nearest_cell(y, height, old_height)
    parent_x = nearest_cell(x, width, old_width)
    match_y = y + _scaled_offset(field[parent_y, parent_x, 0] - parent_y, height, old_height)
    match_x = x + _scaled_offset(field[parent_y, parent_x, 1] - parent_x, width, old_width)
    return clamp_index(match_y, source_height), clamp_index(match_x, source_width)


@shared
def _rounded_inside(coordinate, size):
    """``floor(coordinate + 0.5)`` kept within [-1, size], and whether it is in [0, size)."""
    # Bounding first keeps the integer conversion defined for any flow magnitude.
    bounded = coordinate
    if bounded < -1.0:
        bounded = -1.0
    elif bounded > size:
        bounded = float(size)
    rounded = int(math.floor(bounded + 0.5))
    return rounded, 0 <= rounded < size


@shared
def _follow_flow(y, x, flow, height, width):
    """Where (y, x) of a height x width grid moves under ``flow``: (y, x, inside)."""
    flow_height, flow_width = flow.shape[0], flow.shape[1]
    cell_y = nearest_cell(y, height, flow_height)
    cell_x = nearest_cell(x, width, flow_width)
    # y + dy * height / flow_height, arranged so that the product is exact in
    # float64: then a fused multiply-add (which the CUDA compiler may emit)
    # rounds exactly like a multiply and an add, and both targets agree.
    moved_y = (np.float64(flow[cell_y, cell_x, 1]) * height + y * flow_height) / flow_height
    moved_x = (np.float64(flow[cell_y, cell_x, 0]) * width + x * flow_width) / flow_width
    finite = math.isfinite(moved_y) and math.isfinite(moved_x)
    if not finite:
        # A broken flow vector moves nothing and marks the position invalid.
        moved_y = float(y)
        moved_x = float(x)
    new_y, inside_y = _rounded_inside(moved_y, height)
    new_x, inside_x = _rounded_inside(moved_x, width)
    return new_y, new_x, finite and inside_y and inside_x


@shared
def _pulled_match(field, flow, y, x, source_height, source_width):
    """(match y, match x, invalid) of frame pixel (y, x) from the previous frame's field."""
    height, width = field.shape[0], field.shape[1]
    from_y, from_x, inside = _follow_flow(y, x, flow, height, width)
    from_y = clamp_index(from_y, height)
    from_x = clamp_index(from_x, width)
    return (
        clamp_index(field[from_y, from_x, 0], source_height),
        clamp_index(field[from_y, from_x, 1], source_width),
        0 if inside else 1,
    )


# --------------------------------------------------------------------------- CPU twins


@numba.njit(parallel=True, cache=True)
def _upsample_rows(field, source_height, source_width, out):
    height, width = out.shape[0], out.shape[1]
    for y in numba.prange(height):
        for x in range(width):
            out[y, x, 0], out[y, x, 1] = _upsampled_match(
                field, y, x, height, width, source_height, source_width
            )


@numba.njit(parallel=True, cache=True)
def _pull_rows(field, flow, source_height, source_width, out, invalid):
    height, width = field.shape[0], field.shape[1]
    for y in numba.prange(height):
        for x in range(width):
            out[y, x, 0], out[y, x, 1], invalid[y, x] = _pulled_match(
                field, flow, y, x, source_height, source_width
            )


# --------------------------------------------------------------------------- CUDA kernels


@cuda.jit(cache=True)
def _upsample_kernel(field, source_height, source_width, out):
    x, y = cuda.grid(2)
    height, width = out.shape[0], out.shape[1]
    if y >= height or x >= width:
        return
    out[y, x, 0], out[y, x, 1] = _upsampled_match(
        field, y, x, height, width, source_height, source_width
    )


@cuda.jit(cache=True)
def _pull_kernel(field, flow, source_height, source_width, out, invalid):
    x, y = cuda.grid(2)
    height, width = field.shape[0], field.shape[1]
    if y >= height or x >= width:
        return
    out[y, x, 0], out[y, x, 1], invalid[y, x] = _pulled_match(
        field, flow, y, x, source_height, source_width
    )


# --------------------------------------------------------------------------- checks


def _check_field(field):
    if field.ndim != 3 or field.shape[2] != 2 or field.dtype != np.int32 or 0 in field.shape:
        raise ValueError(
            f"field must be a non-empty int32 (H, W, 2) array, got {field.dtype} {field.shape}"
        )


def _check_shape(shape, name):
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"{name} must be (height, width) with both >= 1, got {shape}")
    return int(shape[0]), int(shape[1])


def _check_flow(flow):
    if flow.ndim != 3 or flow.shape[2] != 2 or 0 in flow.shape:
        raise ValueError(f"flow must be a non-empty (H, W, 2) array of (dx, dy), got {flow.shape}")
    if targets.is_cuda_array(flow):
        if flow.dtype != np.float32:
            raise ValueError(f"a GPU flow must be float32, got {flow.dtype}")
        return flow
    return np.ascontiguousarray(flow, dtype=np.float32)


# --------------------------------------------------------------------------- public API


def upsample_field(field, *, target_shape, source_shape):
    """Resample a field to another grid and source size (the next, finer level).

    Nearest-neighbour on the offset field ``field - identity``: target position
    ``p`` takes the offset of its nearest cell ``p0`` in the old grid, scales it
    by ``new size / old size`` of the field's grid per axis (rounded half up) and
    adds it to ``p``; the match is then clamped into the new source map.

    Parameters
    ----------
    field : int32 array, shape (H, W, 2)
        Absolute ``(y, x)`` matches at the old level.
    target_shape : (int, int)
        ``(Ht, Wt)``: the field's grid at the new level.
    source_shape : (int, int)
        ``(Hs, Ws)``: the matched map's size at the new level, for clamping.

    Returns
    -------
    int32 array, shape (Ht, Wt, 2)
        Same kind of array as ``field``.

    Notes
    -----
    Memory traffic floor: ``8 * H * W + 8 * Ht * Wt`` bytes; see :func:`traffic_bytes`.
    """
    if targets.is_cuda_array(field):
        return upsample_field_cuda(field, target_shape=target_shape, source_shape=source_shape)
    return upsample_field_cpu(field, target_shape=target_shape, source_shape=source_shape)


def upsample_field_cpu(field, *, target_shape, source_shape):
    """CPU twin of :func:`upsample_field`."""
    _check_field(field)
    height, width = _check_shape(target_shape, "target_shape")
    source_height, source_width = _check_shape(source_shape, "source_shape")
    out = np.empty((height, width, 2), dtype=np.int32)
    _upsample_rows(np.ascontiguousarray(field), source_height, source_width, out)
    return out


def upsample_field_cuda(field, *, target_shape, source_shape):
    """CUDA kernel of :func:`upsample_field`."""
    _check_field(field)
    height, width = _check_shape(target_shape, "target_shape")
    source_height, source_width = _check_shape(source_shape, "source_shape")
    out = targets.device_empty((height, width, 2), np.int32, like=field)
    grid, block = targets.launch_2d(height, width)
    _upsample_kernel[grid, block](field, source_height, source_width, out)
    return out


def pull_field(field, flow, *, source_shape):
    """Seed frame ``t``'s ``phi_ab`` (frame -> style) from frame ``t - 1``'s.

    Pixel ``p`` of frame ``t`` showed, in frame ``t - 1``, the content at
    ``q = round(p + f(p))`` (``f`` the backward flow); it keeps that content's
    match in the style image: ``new[p] = field[q]``. Where ``q`` lies outside the
    frame, ``p`` is marked invalid and takes ``field[clamp(q)]``, the match of the
    nearest frame position along the flow, as a starting guess for a fresh search
    (a non-finite flow vector marks ``p`` invalid and keeps ``field[p]``).

    Parameters
    ----------
    field : int32 array, shape (H, W, 2)
        ``phi_ab`` of frame ``t - 1`` at this level (values in the style map).
    flow : float32 array, shape (Hf, Wf, 2)
        Backward flow, frame ``t`` -> ``t - 1``, ``(dx, dy)`` in its own pixels, at
        any resolution (scaled to ``(H, W)``; see the module notes). A host array
        is accepted by the CUDA path too.
    source_shape : (int, int)
        The style map's ``(Hs, Ws)`` at this level; matches are clamped into it.

    Returns
    -------
    field : int32 array, shape (H, W, 2)
    invalid : uint8 array, shape (H, W)
        1 where the content came from outside the previous frame.

    Notes
    -----
    Memory traffic floor: ``8 * Hf * Wf + 8 * H * W + 9 * H * W`` bytes (flow and
    old field read, new field and mask written); see :func:`traffic_bytes`.
    """
    if targets.is_cuda_array(field):
        return pull_field_cuda(field, flow, source_shape=source_shape)
    return pull_field_cpu(field, flow, source_shape=source_shape)


def pull_field_cpu(field, flow, *, source_shape):
    """CPU twin of :func:`pull_field`."""
    return _flow_op_cpu(_pull_rows, field, flow, _check_shape(source_shape, "source_shape"))


def pull_field_cuda(field, flow, *, source_shape):
    """CUDA kernel of :func:`pull_field`."""
    return _flow_op_cuda(_pull_kernel, field, flow, _check_shape(source_shape, "source_shape"))


def _flow_op_cpu(rows, field, flow, bounds):
    """Run a field-through-flow CPU loop: new field and invalid mask."""
    _check_field(field)
    flow = _check_flow(flow)
    out = np.empty(field.shape, dtype=np.int32)
    invalid = np.empty(field.shape[:2], dtype=np.uint8)
    rows(np.ascontiguousarray(field), flow, bounds[0], bounds[1], out, invalid)
    return out, invalid


def _flow_op_cuda(kernel, field, flow, bounds):
    """Launch a field-through-flow CUDA kernel: new field and invalid mask."""
    _check_field(field)
    flow = targets.as_device(_check_flow(flow), like=field)
    height, width = field.shape[:2]
    out = targets.device_empty((height, width, 2), np.int32, like=field)
    invalid = targets.device_empty((height, width), np.uint8, like=field)
    grid, block = targets.launch_2d(height, width)
    kernel[grid, block](field, flow, bounds[0], bounds[1], out, invalid)
    return out, invalid


def traffic_bytes(kernel, *, field_shape, out_shape=None, flow_shape=None):
    """Least bytes a kernel of this module must move between memory and chip.

    Parameters
    ----------
    kernel : {"upsample_field", "pull_field"}
    field_shape : tuple of int
        ``(H, W)`` or ``(H, W, 2)`` of the input field.
    out_shape : tuple of int, optional
        ``(Ht, Wt)`` of the upsampled field (``upsample_field`` only).
    flow_shape : tuple of int, optional
        ``(Hf, Wf)`` or ``(Hf, Wf, 2)`` of the flow (``pull_field`` only).

    Returns
    -------
    int
        Each input read once, each output written once.
    """
    field_pixels = field_shape[0] * field_shape[1]
    if kernel == "upsample_field":
        return 8 * field_pixels + 8 * out_shape[0] * out_shape[1]
    if kernel == "pull_field":
        return 8 * flow_shape[0] * flow_shape[1] + (8 + 9) * field_pixels
    raise ValueError(f"unknown kernel {kernel!r}")
