"""Priors on nearest-neighbour fields: match confidence, edge-aware smoothing, upsampling.

* :func:`match_distinctiveness` scores how much better a pixel's match ``q`` is than
  the positions around it: the smallest rise of the patch distance
  (:func:`~diva_numba.kernels.patch_distance.pair_distance`) over the 8 neighbours
  ``q + step * (dy, dx)``. The minimum, not the mean: a match on a straight edge is
  distinctive across the edge but not along it (the aperture problem) and scores low.
* :func:`smooth_field` fits a smooth displacement field to positions weighted by such
  a confidence (normalised convolution, ``filter(w D) / filter(w)``), with the
  edge-aware recursive filter of :mod:`~diva_numba.kernels.field_smoothing` (where it
  lives; re-exported here with :class:`FieldPriorParams`) guided by the structure
  image, so that confident matches spread over their region and not across its
  edges. It works on displacements (position minus the pixel's own coordinates): a
  translation is kept exactly whatever the weights.
* :func:`upsample_positions` carries a float position field to a finer grid and a
  larger matched image (bilinear, pixel centres aligned); :func:`round_positions`
  turns it back into an int32 field inside the matched image.

Positions are float32 ``(H, W, 2)`` absolute ``(y, x)`` in the matched image B.
Float32 throughout; CPU and CUDA agree to float32 rounding (CPU reassociation in the
distances, fused multiply-adds and ``expf`` on the GPU), bitwise where the arithmetic
is exact. :func:`round_positions` is exact on both.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import cuda

from diva_numba.kernels import targets
from diva_numba.kernels.field_smoothing import (
    FieldPriorParams,
    check_positions,
    smooth_field,
    smooth_field_cpu,
    smooth_field_cuda,
)
from diva_numba.kernels.nnf_resample import nearest_cell
from diva_numba.kernels.patch_distance import (
    CPU_FASTMATH,
    channel_last_copies,
    channel_last_views,
    check_feature_pairs,
    check_field,
    check_patch_size,
    pair_distance,
)
from diva_numba.kernels.targets import clamp_index, shared, smaller, zero_like

__all__ = [
    "FieldPriorParams",
    "carry_positions",
    "match_distinctiveness",
    "match_distinctiveness_cpu",
    "match_distinctiveness_cuda",
    "round_positions",
    "round_positions_cpu",
    "round_positions_cuda",
    "smooth_field",
    "smooth_field_cpu",
    "smooth_field_cuda",
    "upsample_positions",
    "upsample_positions_cpu",
    "upsample_positions_cuda",
]

# --------------------------------------------------------------------------- shared maths


@shared
def _distinctiveness_pixel(maps, field, y, x, radius, step):
    target = maps[2]
    height, width = target.shape[0], target.shape[1]
    qy = clamp_index(field[y, x, 0], height)
    qx = clamp_index(field[y, x, 1], width)
    own = pair_distance(maps, y, x, qy, qx, radius)
    best = own
    found = False
    for neighbour in range(9):
        ny = clamp_index(qy + step * (neighbour // 3 - 1), height)
        nx = clamp_index(qx + step * (neighbour % 3 - 1), width)
        if ny == qy and nx == qx:
            continue  # the centre, or a neighbour clamped back onto q
        other = pair_distance(maps, y, x, ny, nx, radius)
        if not found or other < best:
            best = other
            found = True
    gap = best - own
    zero = zero_like(gap)
    return gap if found and gap > zero else zero


@shared
def _coarse_coordinate(index, size, coarse_size):
    """Cell and fraction of ``(index + 0.5) * coarse_size / size - 0.5``, clamped.

    Integer maths up to one exact division: the same float32 on both targets.
    """
    numerator = (2 * index + 1) * coarse_size - size
    denominator = 2 * size
    if numerator <= 0:
        return 0, np.float32(0.0)
    cell = numerator // denominator
    if cell >= coarse_size - 1:
        return coarse_size - 1, np.float32(0.0)
    return cell, np.float32(numerator - cell * denominator) / np.float32(denominator)


@shared
def _lerp(low, high, fraction):
    return low + fraction * (high - low)


@shared
def _upsample_pixel(positions, new_height, old_height, new_width, old_width, out, y, x):
    """Bilinear position at target ``(y, x)``, moved to the new size of the matched image."""
    y0, fy = _coarse_coordinate(y, out.shape[0], positions.shape[0])
    x0, fx = _coarse_coordinate(x, out.shape[1], positions.shape[1])
    _upsample_at(positions, y0, fy, x0, fx, new_height, old_height, new_width, old_width, out, y, x)


@shared
def _upsample_at(
    positions, y0, fy, x0, fx, new_height, old_height, new_width, old_width, out, y, x
):
    """:func:`_upsample_pixel` from the coarse cell and fractions of ``(y, x)``."""
    y1 = smaller(y0 + 1, positions.shape[0] - 1)
    x1 = smaller(x0 + 1, positions.shape[1] - 1)
    half = np.float32(0.5)
    for c in range(2):
        top = _lerp(positions[y0, x0, c], positions[y0, x1, c], fx)
        bottom = _lerp(positions[y1, x0, c], positions[y1, x1, c], fx)
        moved = _lerp(top, bottom, fy) + half
        if c == 0:
            out[y, x, c] = moved * new_height / old_height - half
        else:
            out[y, x, c] = moved * new_width / old_width - half


@shared
def _carry_pixel(positions, field, trusted, new_height, old_height, new_width, old_width, y, x):
    """Where trusted, the match of the nearest pixel of ``field``'s grid, moved from B's
    size ``old`` to ``new`` (pixel centres aligned, as in :func:`_upsample_pixel`)."""
    field_y = nearest_cell(y, positions.shape[0], field.shape[0])
    field_x = nearest_cell(x, positions.shape[1], field.shape[1])
    _carry_at(positions, field, trusted, field_y, field_x, new_height, old_height, new_width,
              old_width, y, x)  # fmt: skip


@shared
def _carry_at(positions, field, trusted, field_y, field_x, new_height, old_height, new_width,
              old_width, y, x):  # fmt: skip
    """:func:`_carry_pixel` from the nearest pixel ``(field_y, field_x)``."""
    if trusted[y, x] == 0:
        return
    half = np.float32(0.5)
    positions[y, x, 0] = (
        np.float32(field[field_y, field_x, 0]) + half
    ) * new_height / old_height - half
    positions[y, x, 1] = (
        np.float32(field[field_y, field_x, 1]) + half
    ) * new_width / old_width - half


@shared
def _rounded_index(value, size):
    """``floor(value + 0.5)`` clamped into ``[0, size - 1]``; NaN gives 0."""
    if not value >= zero_like(value):
        return 0
    if value >= np.float32(size - 1):
        return size - 1
    whole = int(value)  # value >= 0: truncation is floor (math.floor goes through float64)
    # The fraction is exact in float32, ``value + 0.5`` is not (0.49999997 + 0.5 -> 1).
    return whole + 1 if value - np.float32(whole) >= np.float32(0.5) else whole


@shared
def _round_pixel(positions, source_height, source_width, out, y, x):
    out[y, x, 0] = _rounded_index(positions[y, x, 0], source_height)
    out[y, x, 1] = _rounded_index(positions[y, x, 1], source_width)


# --------------------------------------------------------------------------- CPU twins


@numba.njit(parallel=True, cache=True, fastmath=CPU_FASTMATH)
def _distinctiveness_rows(maps, field, radius, step, out):
    height, width = out.shape
    for row in numba.prange(height):
        y = np.int64(row)  # prange indices are unsigned: -y would wrap around
        for x in range(width):
            out[y, x] = _distinctiveness_pixel(maps, field, y, x, radius, step)


# The CPU twins find each column's coarse cell (or nearest pixel) once, not per pixel:
# integer divisions are most of the per-pixel work, and the results are the same.


@numba.njit(parallel=True, cache=True)
def _upsample_rows(positions, scales, out):
    height, width = out.shape[0], out.shape[1]
    cells = np.empty(width, dtype=np.int64)
    fractions = np.empty(width, dtype=np.float32)
    for x in range(width):
        cells[x], fractions[x] = _coarse_coordinate(x, width, positions.shape[1])
    for row in numba.prange(height):
        y = np.int64(row)  # prange indices are unsigned
        y0, fy = _coarse_coordinate(y, height, positions.shape[0])
        for x in range(width):
            _upsample_at(positions, y0, fy, cells[x], fractions[x], *scales, out, y, x)


@numba.njit(parallel=True, cache=True)
def _carry_rows(positions, field, trusted, scales):
    height, width = positions.shape[0], positions.shape[1]
    columns = np.empty(width, dtype=np.int64)
    for x in range(width):
        columns[x] = nearest_cell(x, width, field.shape[1])
    for row in numba.prange(height):
        y = np.int64(row)  # prange indices are unsigned
        field_y = nearest_cell(y, height, field.shape[0])
        for x in range(width):
            _carry_at(positions, field, trusted, field_y, columns[x], *scales, y, x)


@numba.njit(parallel=True, cache=True)
def _round_rows(positions, source_height, source_width, out):
    for row in numba.prange(out.shape[0]):
        y = np.int64(row)  # prange indices are unsigned
        for x in range(out.shape[1]):
            _round_pixel(positions, source_height, source_width, out, y, x)


# --------------------------------------------------------------------------- CUDA kernels


@cuda.jit(cache=True)
def _distinctiveness_kernel(a, a_prime, b, b_prime, field, radius, step, out):
    x, y = cuda.grid(2)
    if y < out.shape[0] and x < out.shape[1]:
        out[y, x] = _distinctiveness_pixel((a, a_prime, b, b_prime), field, y, x, radius, step)


@cuda.jit(cache=True)
def _upsample_kernel(positions, new_height, old_height, new_width, old_width, out):
    x, y = cuda.grid(2)
    if y < out.shape[0] and x < out.shape[1]:
        _upsample_pixel(positions, new_height, old_height, new_width, old_width, out, y, x)


@cuda.jit(cache=True)
def _carry_kernel(positions, field, trusted, new_height, old_height, new_width, old_width):
    x, y = cuda.grid(2)
    if y < positions.shape[0] and x < positions.shape[1]:
        _carry_pixel(positions, field, trusted, new_height, old_height, new_width, old_width, y, x)


@cuda.jit(cache=True)
def _round_kernel(positions, source_height, source_width, out):
    x, y = cuda.grid(2)
    if y < out.shape[0] and x < out.shape[1]:
        _round_pixel(positions, source_height, source_width, out, y, x)


# --------------------------------------------------------------------------- checks


def _check_shape(shape, name):
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"{name} must be (height, width) with both >= 1, got {shape}")
    return int(shape[0]), int(shape[1])


# --------------------------------------------------------------------------- public API


def match_distinctiveness(a, a_prime, b, b_prime, field, *, patch_size, step=1):
    """How much better each pixel's match is than the positions around it.

    Parameters
    ----------
    a, a_prime : float32 array, shape (C, Ha, Wa)
        The source pair, as for :func:`~diva_numba.kernels.patch_distance.patch_distance`.
    b, b_prime : float32 array, shape (C, Hb, Wb)
        The target pair.
    field : int32 array, shape (Ha, Wa, 2)
        Absolute ``(y, x)`` match ``q`` in B of each source pixel, clamped into B.
    patch_size : int
        Odd patch side of the distance.
    step : int
        Distance in pixels of B from ``q`` to its 8 neighbours.

    Returns
    -------
    float32 array, shape (Ha, Wa)
        ``max(0, min_q' d(p, q') - d(p, q))`` over ``q' = q + step * (dy, dx)``,
        ``(dy, dx)`` in ``{-1, 0, 1}^2`` but ``(0, 0)``, clamped into B; neighbours that
        clamp back onto ``q`` are skipped (0 where all do: B is one pixel). Same kind
        of array as ``a``; ``field`` may be a host array on either target.
    """
    if targets.is_cuda_array(a):
        return match_distinctiveness_cuda(
            a, a_prime, b, b_prime, field, patch_size=patch_size, step=step
        )
    return match_distinctiveness_cpu(
        a, a_prime, b, b_prime, field, patch_size=patch_size, step=step
    )


def _check_distinctiveness(a, a_prime, b, b_prime, field, patch_size, step):
    check_feature_pairs(a, a_prime, b, b_prime)
    check_patch_size(patch_size)
    check_field(field, (a.shape[1], a.shape[2], 2))
    if not isinstance(step, int | np.integer) or step < 1:
        raise ValueError(f"step must be a positive integer, got {step!r}")


def match_distinctiveness_cpu(a, a_prime, b, b_prime, field, *, patch_size, step=1):
    """CPU twin of :func:`match_distinctiveness` (NumPy in, NumPy out)."""
    _check_distinctiveness(a, a_prime, b, b_prime, field, patch_size, step)
    out = np.empty(a.shape[1:], dtype=np.float32)
    maps = channel_last_copies(a, a_prime, b, b_prime)
    _distinctiveness_rows(maps, np.ascontiguousarray(field), patch_size // 2, int(step), out)
    return out


def match_distinctiveness_cuda(a, a_prime, b, b_prime, field, *, patch_size, step=1):
    """CUDA kernel of :func:`match_distinctiveness`; ``field`` may be a host array."""
    _check_distinctiveness(a, a_prime, b, b_prime, field, patch_size, step)
    field = targets.as_device(field, like=a)
    out = targets.device_empty(a.shape[1:], np.float32, like=a)
    grid, block = targets.launch_2d(a.shape[1], a.shape[2])
    views = channel_last_views(a, a_prime, b, b_prime)
    _distinctiveness_kernel[grid, block](*views, field, patch_size // 2, int(step), out)
    return out


def upsample_positions(positions, *, target_shape, source_shape, coarse_source_shape):
    """Bilinear upsampling of a float position field to a new grid and matched size.

    The field maps pixel centres of A (grid ``(H, W)``) to positions in B (grid
    ``coarse_source_shape`` ``(Hb, Wb)``). Target pixel ``p`` of the new grid lies,
    per axis, at ``(p + 0.5) * H / Ht - 0.5`` of the old one (clamped into it); the
    positions are interpolated bilinearly there, and the interpolated ``u`` becomes
    ``(u + 0.5) * Hbt / Hb - 0.5`` per axis (pixel centres of B aligned at both
    sizes). An affine field is carried to the same affine map at the new sizes,
    exactly away from the half-cell border the clamping holds constant.

    Parameters
    ----------
    positions : float32 array, shape (H, W, 2)
        Absolute ``(y, x)`` positions in B at the old size.
    target_shape : (int, int)
        ``(Ht, Wt)``: A's grid at the new size.
    source_shape : (int, int)
        ``(Hbt, Wbt)``: B's size at the new size.
    coarse_source_shape : (int, int)
        ``(Hb, Wb)``: B's size the positions refer to.

    Returns
    -------
    float32 array, shape (Ht, Wt, 2)
        Positions in B at the new size, not clamped (see :func:`round_positions`).
        Same kind of array as ``positions``.
    """
    shapes = {"target_shape": target_shape, "source_shape": source_shape,
              "coarse_source_shape": coarse_source_shape}  # fmt: skip
    if targets.is_cuda_array(positions):
        return upsample_positions_cuda(positions, **shapes)
    return upsample_positions_cpu(positions, **shapes)


def _upsample_setup(positions, target_shape, source_shape, coarse_source_shape):
    check_positions(positions)
    height, width = _check_shape(target_shape, "target_shape")
    new_height, new_width = _check_shape(source_shape, "source_shape")
    old_height, old_width = _check_shape(coarse_source_shape, "coarse_source_shape")
    scales = tuple(np.float32(n) for n in (new_height, old_height, new_width, old_width))
    return (height, width, 2), scales


def upsample_positions_cpu(positions, *, target_shape, source_shape, coarse_source_shape):
    """CPU twin of :func:`upsample_positions`."""
    shape, scales = _upsample_setup(positions, target_shape, source_shape, coarse_source_shape)
    out = np.empty(shape, dtype=np.float32)
    _upsample_rows(np.ascontiguousarray(positions), scales, out)
    return out


def upsample_positions_cuda(positions, *, target_shape, source_shape, coarse_source_shape):
    """CUDA kernel of :func:`upsample_positions`."""
    shape, scales = _upsample_setup(positions, target_shape, source_shape, coarse_source_shape)
    out = targets.device_empty(shape, np.float32, like=positions)
    grid, block = targets.launch_2d(shape[0], shape[1])
    _upsample_kernel[grid, block](positions, *scales, out)
    return out


def carry_positions(positions, field, trusted, *, source_shape, field_source_shape):
    """Replace ``positions`` where ``trusted`` with the matches of an integer field on a
    finer grid (in place).

    Level pixel ``p`` takes the match of ``field``'s nearest pixel (the nearest-
    cell convention of :func:`~diva_numba.kernels.nnf_resample.nearest_cells`),
    a position in B at ``field_source_shape``, moved to B at ``source_shape``
    with pixel centres aligned (``(u + 0.5) * Hb / Hbf - 0.5`` per axis). A video
    frame's synthesis starts every level from the previous output's field this
    way where the flow is trusted.

    Parameters
    ----------
    positions : float32 array, shape (H, W, 2)
        Positions in B at ``source_shape``; updated in place.
    field : int32 array, shape (Hf, Wf, 2)
        Matches in B at ``field_source_shape``.
    trusted : bool or uint8 array, shape (H, W)
        Where ``field`` replaces ``positions``.
    source_shape, field_source_shape : (int, int)

    Returns
    -------
    positions
    """
    if targets.is_cuda_array(positions):
        return carry_positions_cuda(positions, field, trusted, source_shape=source_shape,
                                    field_source_shape=field_source_shape)  # fmt: skip
    return carry_positions_cpu(positions, field, trusted, source_shape=source_shape,
                               field_source_shape=field_source_shape)  # fmt: skip


def carry_positions_cpu(positions, field, trusted, *, source_shape, field_source_shape):
    """CPU twin of :func:`carry_positions`."""
    mask, scales = _carry_arguments(positions, field, trusted, source_shape, field_source_shape)
    _carry_rows(positions, field, mask, scales)
    return positions


def carry_positions_cuda(positions, field, trusted, *, source_shape, field_source_shape):
    """CUDA kernel of :func:`carry_positions`."""
    mask, scales = _carry_arguments(positions, field, trusted, source_shape, field_source_shape)
    grid, block = targets.launch_2d(*positions.shape[:2])
    _carry_kernel[grid, block](positions, field, mask, *scales)
    return positions


def _carry_arguments(positions, field, trusted, source_shape, field_source_shape):
    """The checked mask and the float32 size ratios of :func:`carry_positions`."""
    height, width = check_positions(positions)
    check_field(field, (*field.shape[:2], 2), "field")
    if tuple(trusted.shape) != (height, width):
        raise ValueError(f"trusted must be {(height, width)}, got {tuple(trusted.shape)}")
    new_height, new_width = _check_shape(source_shape, "source_shape")
    old_height, old_width = _check_shape(field_source_shape, "field_source_shape")
    scales = tuple(np.float32(n) for n in (new_height, old_height, new_width, old_width))
    mask = trusted.view(np.uint8) if trusted.dtype == np.bool_ else trusted
    return mask, scales


def round_positions(positions, source_shape):
    """Float positions -> the int32 field of the nearest pixels inside the matched image.

    Parameters
    ----------
    positions : float32 array, shape (H, W, 2)
        Absolute ``(y, x)`` positions.
    source_shape : (int, int)
        ``(Hs, Ws)`` of the matched image.

    Returns
    -------
    int32 array, shape (H, W, 2)
        ``floor(position + 0.5)`` clamped into ``[0, Hs - 1] x [0, Ws - 1]`` (NaN
        goes to 0); same kind of array as ``positions``, equal on both targets.
    """
    if targets.is_cuda_array(positions):
        return round_positions_cuda(positions, source_shape)
    return round_positions_cpu(positions, source_shape)


def round_positions_cpu(positions, source_shape):
    """CPU twin of :func:`round_positions`."""
    height, width = check_positions(positions)
    source_height, source_width = _check_shape(source_shape, "source_shape")
    out = np.empty((height, width, 2), dtype=np.int32)
    _round_rows(np.ascontiguousarray(positions), source_height, source_width, out)
    return out


def round_positions_cuda(positions, source_shape):
    """CUDA kernel of :func:`round_positions`."""
    height, width = check_positions(positions)
    source_height, source_width = _check_shape(source_shape, "source_shape")
    out = targets.device_empty((height, width, 2), np.int32, like=positions)
    grid, block = targets.launch_2d(height, width)
    _round_kernel[grid, block](positions, source_height, source_width, out)
    return out
