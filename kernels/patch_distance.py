"""Patch distance: the matching cost of the analogy's nearest-neighbour search.

For a pixel ``p`` of the source pair ``(A, A')`` and a candidate ``q`` of the
target pair ``(B, B')``, over the patch offsets ``o`` (``|o_y|, |o_x| <= r``,
``r = patch_size // 2``) for which ``p + o`` lies in A and ``q + o`` lies in B::

    d(p, q) = -(sum_o <A(p+o), B(q+o)> + sum_o <A'(p+o), B'(q+o)>) / n_valid

with ``<., .>`` the dot product over channels. The maps are meant to be L2
normalised per pixel, so ``d`` is a negative mean cosine in ``[-2, 2]``;
smaller is better. One call measures one direction; the reverse field uses
``(B, A, B', A')``.

:func:`pair_distance` is the ``shared`` per-pair function that PatchMatch
builds on. It indexes the maps *pixel-major*, ``map[y, x, c]``: the CPU twin
hands it channel-last copies, so the channel loop is contiguous and the
compiler vectorises it (this needs the ``reassoc`` fast-math flag: the sum is
split into SIMD lanes); the CUDA kernel hands it channel-last *views* of the
channel-first arrays, so the memory stays ``(C, H, W)`` and the threads of a
warp (neighbouring x) read neighbouring addresses of each channel plane. The
CUDA kernels take the four maps as four arguments and build the tuple inside:
Numba's CUDA dispatcher cannot type a tuple of CuPy arrays passed to a launch
(numba issue 8483), only each array on its own.
Because of the reassociation, and because the CUDA compiler fuses
multiply-adds, CPU and CUDA distances agree to float32 rounding, not bitwise.
Inputs whose products and sums are exact in float32 (small dyadic values) give
bitwise equal distances, hence equal PatchMatch fields, on both targets.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
from numba import cuda

from diva_numba.kernels import targets
from diva_numba.kernels.targets import clamp_index, larger, shared, smaller

#: Fast-math flags of the CPU twins: ``reassoc`` lets the channel sums vectorise,
#: ``contract`` allows fused multiply-adds. Division stays exact (no ``arcp``).
CPU_FASTMATH = {"reassoc", "contract"}

# --------------------------------------------------------------------------- shared maths


@shared
def pair_distance(maps, py, px, qy, qx, radius):
    """Patch distance of source pixel ``(py, px)`` and target pixel ``(qy, qx)``.

    ``maps`` is ``(A, A', B, B')``, each indexed ``[y, x, c]``; ``(qy, qx)``
    must lie inside B. Returns a float32.
    """
    source, source_prime, target, target_prime = maps
    source_height, source_width, channels = source.shape
    target_height, target_width = target.shape[0], target.shape[1]
    # Valid offsets form a rectangle: clip it once instead of testing each offset.
    dy_low = larger(-radius, -smaller(py, qy))
    dy_high = smaller(radius, smaller(source_height - 1 - py, target_height - 1 - qy))
    dx_low = larger(-radius, -smaller(px, qx))
    dx_high = smaller(radius, smaller(source_width - 1 - px, target_width - 1 - qx))
    total = np.float32(0.0)
    for dy in range(dy_low, dy_high + 1):
        sy = py + dy
        ty = qy + dy
        for dx in range(dx_low, dx_high + 1):
            sx = px + dx
            tx = qx + dx
            for c in range(channels):
                total += (
                    source[sy, sx, c] * target[ty, tx, c]
                    + source_prime[sy, sx, c] * target_prime[ty, tx, c]
                )
    valid = (dy_high - dy_low + 1) * (dx_high - dx_low + 1)
    return -total / np.float32(valid)


@shared
def _field_pixel_distance(maps, field, y, x, radius):
    target = maps[2]
    qy = clamp_index(field[y, x, 0], target.shape[0])
    qx = clamp_index(field[y, x, 1], target.shape[1])
    return pair_distance(maps, y, x, qy, qx, radius)


# --------------------------------------------------------------------------- CPU twin


@numba.njit(parallel=True, cache=True, fastmath=CPU_FASTMATH)
def _distance_rows(maps, field, radius, out):
    height, width = out.shape
    for row in numba.prange(height):
        y = np.int64(row)  # prange indices are unsigned: -y would wrap around
        for x in range(width):
            out[y, x] = _field_pixel_distance(maps, field, y, x, radius)


# --------------------------------------------------------------------------- CUDA kernel


@cuda.jit(cache=True)
def _distance_kernel(a, a_prime, b, b_prime, field, radius, out):
    x, y = cuda.grid(2)
    height, width = out.shape
    if y >= height or x >= width:
        return
    out[y, x] = _field_pixel_distance((a, a_prime, b, b_prime), field, y, x, radius)


# --------------------------------------------------------------------------- layouts and checks


def channel_last_copies(a, a_prime, b, b_prime):
    """``(A, A', B, B')`` as C-contiguous ``(H, W, C)`` NumPy copies (the CPU layout)."""
    return tuple(
        np.ascontiguousarray(np.asarray(m).transpose(1, 2, 0)) for m in (a, a_prime, b, b_prime)
    )


def channel_last_views(a, a_prime, b, b_prime):
    """``(A, A', B, B')`` as ``(H, W, C)`` views of the ``(C, H, W)`` GPU arrays (no copy).

    Pass them to a kernel as four arguments (``*views``), never as one tuple.
    """
    return tuple(_channel_last_view(m) for m in (a, a_prime, b, b_prime))


def _channel_last_view(features):
    try:
        return features.transpose((1, 2, 0))
    except NotImplementedError:
        # Numba's own device arrays only transpose 2-D arrays; build the strided view by hand.
        from numba.cuda.cudadrv.devicearray import DeviceNDArray

        channels, height, width = features.shape
        c_stride, y_stride, x_stride = features.strides
        return DeviceNDArray(
            shape=(height, width, channels),
            strides=(y_stride, x_stride, c_stride),
            dtype=features.dtype,
            stream=features.stream,
            gpu_data=features.gpu_data,
        )


def check_feature_pairs(a, a_prime, b, b_prime):
    """Validate the four maps of one search direction; raise ValueError if unusable."""
    for name, features in (("a", a), ("a_prime", a_prime), ("b", b), ("b_prime", b_prime)):
        if features.ndim != 3 or features.dtype != np.float32 or 0 in features.shape:
            raise ValueError(
                f"{name} must be a non-empty float32 (C, H, W) array, "
                f"got {features.dtype} {features.shape}"
            )
    if a_prime.shape != a.shape:
        raise ValueError(f"a_prime {a_prime.shape} differs from a {a.shape}")
    if b_prime.shape != b.shape:
        raise ValueError(f"b_prime {b_prime.shape} differs from b {b.shape}")
    if b.shape[0] != a.shape[0]:
        raise ValueError(f"a has {a.shape[0]} channels but b has {b.shape[0]}")
    on_gpu = {targets.is_cuda_array(m) for m in (a, a_prime, b, b_prime)}
    if len(on_gpu) != 1:
        raise ValueError("a, a_prime, b and b_prime must all be GPU arrays or all host arrays")


def check_patch_size(patch_size):
    """Raise ValueError unless ``patch_size`` is an odd positive integer."""
    if not isinstance(patch_size, int | np.integer) or patch_size < 1 or patch_size % 2 == 0:
        raise ValueError(f"patch_size must be an odd positive integer, got {patch_size!r}")


def check_field(field, shape, name="field"):
    """Raise ValueError unless ``field`` is int32 of ``shape`` (``(H, W, 2)``)."""
    if field.dtype != np.int32 or tuple(field.shape) != tuple(shape):
        raise ValueError(f"{name} must be int32 {tuple(shape)}, got {field.dtype} {field.shape}")


# --------------------------------------------------------------------------- public API


def patch_distance(a, a_prime, b, b_prime, field, *, patch_size):
    """Patch distance of every source pixel to its match in ``field``.

    Parameters
    ----------
    a, a_prime : float32 array, shape (C, Ha, Wa)
        The source pair (A and A'), L2-normalised per pixel.
    b, b_prime : float32 array, shape (C, Hb, Wb)
        The target pair (B and B').
    field : int32 array, shape (Ha, Wa, 2)
        Absolute ``(y, x)`` match in B of each source pixel; entries outside B
        are clamped into it.
    patch_size : int
        Odd patch side (3 or 5 in the analogy).

    Returns
    -------
    float32 array, shape (Ha, Wa)
        ``d(p, field[p])`` as defined in the module docstring; same kind of
        array as ``a``.

    Notes
    -----
    See :func:`traffic_bytes` and :func:`flops` for the benchmark's floors.
    """
    if targets.is_cuda_array(a):
        return patch_distance_cuda(a, a_prime, b, b_prime, field, patch_size=patch_size)
    return patch_distance_cpu(a, a_prime, b, b_prime, field, patch_size=patch_size)


def patch_distance_cpu(a, a_prime, b, b_prime, field, *, patch_size):
    """CPU twin of :func:`patch_distance` (NumPy in, NumPy out)."""
    check_feature_pairs(a, a_prime, b, b_prime)
    check_patch_size(patch_size)
    check_field(field, (a.shape[1], a.shape[2], 2))
    out = np.empty(a.shape[1:], dtype=np.float32)
    maps = channel_last_copies(a, a_prime, b, b_prime)
    _distance_rows(maps, np.ascontiguousarray(field), patch_size // 2, out)
    return out


def patch_distance_cuda(a, a_prime, b, b_prime, field, *, patch_size):
    """CUDA kernel of :func:`patch_distance`; ``field`` may be a host array (it is copied over)."""
    check_feature_pairs(a, a_prime, b, b_prime)
    check_patch_size(patch_size)
    check_field(field, (a.shape[1], a.shape[2], 2))
    field = targets.as_device(field, like=a)
    out = targets.device_empty(a.shape[1:], np.float32, like=a)
    grid, block = targets.launch_2d(a.shape[1], a.shape[2])
    _distance_kernel[grid, block](
        *channel_last_views(a, a_prime, b, b_prime), field, patch_size // 2, out
    )
    return out


# --------------------------------------------------------------------------- cost model


@dataclass(frozen=True)
class DistanceCost:
    """Work of one :func:`patch_distance` call, for bandwidth and FLOP-rate figures.

    Attributes
    ----------
    flops : int
        Multiplies and adds, counting every pixel with a full patch (an upper
        bound: border pixels have fewer valid offsets).
    gathered_bytes : int
        Bytes the kernel reads if no patch value is reused from a cache: both
        patches of both pairs per pixel, plus the field entry and the output.
    compulsory_bytes : int
        Bytes no implementation can avoid: the four maps read once, the field
        read once, the distances written once.
    """

    flops: int
    gathered_bytes: int
    compulsory_bytes: int


def cost(*, source_shape, target_shape, patch_size):
    """Floors for :func:`patch_distance` on maps of the given shapes.

    Parameters
    ----------
    source_shape : tuple of int
        ``(C, Ha, Wa)`` of A (and A').
    target_shape : tuple of int
        ``(C, Hb, Wb)`` of B (and B').
    patch_size : int

    Returns
    -------
    DistanceCost
        Per source pixel: ``4 * C * patch_size**2`` FLOPs (a multiply-add per
        channel, offset and pair) and ``4 * (2 * 2 * C * patch_size**2) + 8 + 4``
        gathered bytes. Compulsory: ``4 * 2 * C * (Ha * Wa + Hb * Wb)`` feature
        bytes plus ``8 + 4`` bytes per source pixel.
    """
    channels, source_height, source_width = source_shape
    _, target_height, target_width = target_shape
    source_pixels = source_height * source_width
    taps = patch_size * patch_size
    field_and_output = (8 + 4) * source_pixels
    return DistanceCost(
        flops=4 * channels * taps * source_pixels,
        gathered_bytes=4 * 2 * 2 * channels * taps * source_pixels + field_and_output,
        compulsory_bytes=4 * 2 * channels * (source_pixels + target_height * target_width)
        + field_and_output,
    )
