"""PatchMatch: the nearest-neighbour field from a source pair to a target pair.

For every pixel ``p`` of A (and A') it looks for the ``q`` in B (and B') that
minimises :func:`~diva_numba.kernels.patch_distance.pair_distance`. The field
starts from the identity (clamped into B) or from a given field; then every
iteration runs

* *propagation*, in the jump-flood form of the official GPU kernel: for each
  jump ``j`` (8, 4, 2, 1) every pixel tries the matches of its left, right,
  upper and lower neighbours at distance ``j``, shifted back by ``j``
  (``field[p + j d] - j d``, clamped into B), and keeps one only if it is
  strictly better. Each jump reads the previous pass's field and writes a new
  one (double buffering), so a pass is free of races and its result does not
  depend on the order in which pixels run: CPU and GPU give the same field;
* *random search*: around the current best, with a radius starting at
  ``search_radius`` and halving down to 1, one uniform sample in the window
  (clipped to B) per radius, kept if strictly better. Samples come from a
  counter-based hash of (seed, iteration, pixel, draw): no RNG state, the
  same numbers on both targets, reproducible runs.

Candidates equal to the current best are skipped, which makes converged
regions cheap. Pixels whose ``refine_mask`` is 0 keep their initial match and
still pass it on to their neighbours (video: only occluded or changed pixels
are searched again).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np
from numba import cuda

from diva_numba.kernels import targets
from diva_numba.kernels.patch_distance import (
    CPU_FASTMATH,
    channel_last_copies,
    channel_last_views,
    check_feature_pairs,
    check_field,
    check_patch_size,
    clamp_index,
    larger,
    pair_distance,
    smaller,
)
from diva_numba.kernels.targets import shared

_WORD = 0xFFFFFFFF


@dataclass(frozen=True)
class PatchMatchParams:
    """Knobs of :func:`patchmatch`.

    Attributes
    ----------
    patch_size : int
        Odd patch side: 3 at levels 5..3, 5 at levels 2..1.
    iterations : int
        Propagation + random-search rounds (10 per level in the image analogy;
        the public DIVA fork uses 3 on video frames seeded from the previous one).
    search_radius : int
        First random-search radius in pixels of B; it halves down to 1. 0
        disables the random search.
    seed : int
        Seeds the per-pixel random numbers; only its low 32 bits are used.
    jumps : tuple of int
        Propagation distances, one double-buffered pass each, in this order.
    propagate : bool
        False runs the random search alone (for experiments and tests).
    """

    patch_size: int = 3
    iterations: int = 10
    search_radius: int = 6
    seed: int = 0
    jumps: tuple[int, ...] = (8, 4, 2, 1)
    propagate: bool = True

    def __post_init__(self):
        check_patch_size(self.patch_size)
        if self.iterations < 0:
            raise ValueError(f"iterations must be >= 0, got {self.iterations}")
        if self.search_radius < 0:
            raise ValueError(f"search_radius must be >= 0, got {self.search_radius}")
        if not all(isinstance(j, int) and j >= 1 for j in self.jumps):
            raise ValueError(f"jumps must be positive integers, got {self.jumps!r}")


# --------------------------------------------------------------------------- shared maths


@shared
def mix32(value):
    """A 32-bit integer hash (Wellons' lowbias32 with multipliers below 2**31).

    Works on int64 so that no product overflows, on either target.
    """
    h = numba.int64(value) & _WORD
    h ^= h >> 16
    h = (h * 0x21F0AAAD) & _WORD
    h ^= h >> 15
    h = (h * 0x735A2D97) & _WORD
    h ^= h >> 15
    return h


@shared
def iteration_key(seed, iteration):
    """Hash of the run's seed and the iteration number: one random stream per iteration."""
    return mix32(mix32(seed) ^ iteration)


@shared
def _start_pixel(maps, init_field, field, distance, mask, score_frozen, y, x, radius):
    target = maps[2]
    qy = clamp_index(init_field[y, x, 0], target.shape[0])
    qx = clamp_index(init_field[y, x, 1], target.shape[1])
    field[y, x, 0] = qy
    field[y, x, 1] = qx
    if score_frozen or mask[y, x] != 0:
        distance[y, x] = pair_distance(maps, y, x, qy, qx, radius)
    else:
        # Nothing compares a frozen pixel's own distance: neighbours read its match only.
        distance[y, x] = np.float32(math.inf)


@shared
def _try_candidate(maps, y, x, qy, qx, radius, best, best_y, best_x):
    """The better of the current match and candidate ``(qy, qx)``; ties keep the current."""
    if qy == best_y and qx == best_x:
        return best, best_y, best_x
    candidate = pair_distance(maps, y, x, qy, qx, radius)
    if candidate < best:
        return candidate, qy, qx
    return best, best_y, best_x


@shared
def _propagate_pixel(
    maps, field_in, distance_in, field_out, distance_out, mask, y, x, jump, radius
):
    best_y = field_in[y, x, 0]
    best_x = field_in[y, x, 1]
    best = distance_in[y, x]
    if mask[y, x] != 0:
        height, width = field_in.shape[0], field_in.shape[1]
        target = maps[2]
        for direction in range(4):
            # left, right, up, down: a fixed order, so ties resolve alike everywhere
            sign = 2 * (direction & 1) - 1
            step_y = sign * jump if direction >= 2 else 0
            step_x = 0 if direction >= 2 else sign * jump
            ny = y + step_y
            nx = x + step_x
            if ny < 0 or ny >= height or nx < 0 or nx >= width:
                continue
            qy = clamp_index(field_in[ny, nx, 0] - step_y, target.shape[0])
            qx = clamp_index(field_in[ny, nx, 1] - step_x, target.shape[1])
            best, best_y, best_x = _try_candidate(maps, y, x, qy, qx, radius, best, best_y, best_x)
    field_out[y, x, 0] = best_y
    field_out[y, x, 1] = best_x
    distance_out[y, x] = best


@shared
def _search_pixel(maps, field, distance, mask, y, x, key, search_radius, radius):
    if mask[y, x] == 0:
        return
    target = maps[2]
    target_height, target_width = target.shape[0], target.shape[1]
    best_y = field[y, x, 0]
    best_x = field[y, x, 1]
    best = distance[y, x]
    pixel_key = mix32(key ^ (y * field.shape[1] + x))
    draw = 0
    window = search_radius
    while window >= 1:
        low_y = larger(best_y - window, 0)
        low_x = larger(best_x - window, 0)
        span_y = smaller(best_y + window, target_height - 1) - low_y + 1
        span_x = smaller(best_x + window, target_width - 1) - low_x + 1
        qy = low_y + mix32(pixel_key ^ draw) % span_y
        qx = low_x + mix32(pixel_key ^ (draw + 1)) % span_x
        draw += 2
        window //= 2
        best, best_y, best_x = _try_candidate(maps, y, x, qy, qx, radius, best, best_y, best_x)
    field[y, x, 0] = best_y
    field[y, x, 1] = best_x
    distance[y, x] = best


# --------------------------------------------------------------------------- CPU twins


@numba.njit(parallel=True, cache=True, fastmath=CPU_FASTMATH)
def _start_rows(maps, init_field, field, distance, mask, score_frozen, radius):
    height, width = distance.shape
    for row in numba.prange(height):
        y = np.int64(row)  # prange indices are unsigned: -y would wrap around
        for x in range(width):
            _start_pixel(maps, init_field, field, distance, mask, score_frozen, y, x, radius)


@numba.njit(parallel=True, cache=True, fastmath=CPU_FASTMATH)
def _propagate_rows(maps, field_in, distance_in, field_out, distance_out, mask, jump, radius):
    height, width = distance_in.shape
    for row in numba.prange(height):
        y = np.int64(row)  # prange indices are unsigned: -y would wrap around
        for x in range(width):
            _propagate_pixel(
                maps, field_in, distance_in, field_out, distance_out, mask, y, x, jump, radius
            )


@numba.njit(parallel=True, cache=True, fastmath=CPU_FASTMATH)
def _search_rows(maps, field, distance, mask, key, search_radius, radius):
    height, width = distance.shape
    for row in numba.prange(height):
        y = np.int64(row)  # prange indices are unsigned: -y would wrap around
        for x in range(width):
            _search_pixel(maps, field, distance, mask, y, x, key, search_radius, radius)


# --------------------------------------------------------------------------- CUDA kernels


# The maps come as four arguments and are grouped inside: a launch cannot pass a tuple
# of CuPy arrays (numba issue 8483).


@cuda.jit(cache=True)
def _start_kernel(a, a_prime, b, b_prime, init_field, field, distance, mask, score_frozen, radius):
    x, y = cuda.grid(2)
    if y < distance.shape[0] and x < distance.shape[1]:
        _start_pixel(
            (a, a_prime, b, b_prime), init_field, field, distance, mask, score_frozen, y, x,
            radius,
        )  # fmt: skip


@cuda.jit(cache=True)
def _propagate_kernel(
    a, a_prime, b, b_prime, field_in, distance_in, field_out, distance_out, mask, jump, radius
):
    x, y = cuda.grid(2)
    if y < distance_in.shape[0] and x < distance_in.shape[1]:
        _propagate_pixel(
            (a, a_prime, b, b_prime),
            field_in,
            distance_in,
            field_out,
            distance_out,
            mask,
            y,
            x,
            jump,
            radius,
        )


@cuda.jit(cache=True)
def _search_kernel(a, a_prime, b, b_prime, field, distance, mask, key, search_radius, radius):
    x, y = cuda.grid(2)
    if y < distance.shape[0] and x < distance.shape[1]:
        _search_pixel(
            (a, a_prime, b, b_prime), field, distance, mask, y, x, key, search_radius, radius
        )


# --------------------------------------------------------------------------- targets


class _CpuTarget:
    """Loops over rows with ``prange``; maps are channel-last copies."""

    @staticmethod
    def maps(a, a_prime, b, b_prime):
        return channel_last_copies(a, a_prime, b, b_prime)

    @staticmethod
    def upload(array, like):
        return np.ascontiguousarray(array)

    @staticmethod
    def empty(shape, dtype, like):
        return np.empty(shape, dtype=dtype)

    @staticmethod
    def ones(shape, dtype, like):
        return np.ones(shape, dtype=dtype)

    @staticmethod
    def start(maps, init_field, field, distance, mask, score_frozen, radius):
        _start_rows(maps, init_field, field, distance, mask, score_frozen, radius)

    @staticmethod
    def propagate(maps, field_in, distance_in, field_out, distance_out, mask, jump, radius):
        _propagate_rows(maps, field_in, distance_in, field_out, distance_out, mask, jump, radius)

    @staticmethod
    def search(maps, field, distance, mask, key, search_radius, radius):
        _search_rows(maps, field, distance, mask, key, search_radius, radius)


class _CudaTarget:
    """One thread per pixel, x fastest; maps are channel-last views of the GPU arrays.

    The four views travel to each kernel as four arguments (``*maps``).
    """

    @staticmethod
    def maps(a, a_prime, b, b_prime):
        return channel_last_views(a, a_prime, b, b_prime)

    @staticmethod
    def upload(array, like):
        return targets.as_device(array, like=like)

    @staticmethod
    def empty(shape, dtype, like):
        return targets.device_empty(shape, dtype, like=like)

    @staticmethod
    def ones(shape, dtype, like):
        return targets.device_ones(shape, dtype, like=like)

    @staticmethod
    def start(maps, init_field, field, distance, mask, score_frozen, radius):
        grid, block = targets.launch_2d(*distance.shape)
        _start_kernel[grid, block](*maps, init_field, field, distance, mask, score_frozen, radius)

    @staticmethod
    def propagate(maps, field_in, distance_in, field_out, distance_out, mask, jump, radius):
        grid, block = targets.launch_2d(*distance_in.shape)
        _propagate_kernel[grid, block](
            *maps, field_in, distance_in, field_out, distance_out, mask, jump, radius
        )

    @staticmethod
    def search(maps, field, distance, mask, key, search_radius, radius):
        grid, block = targets.launch_2d(*distance.shape)
        _search_kernel[grid, block](*maps, field, distance, mask, key, search_radius, radius)


# --------------------------------------------------------------------------- public API

_DEFAULT_PARAMS = PatchMatchParams()


def patchmatch(
    a, a_prime, b, b_prime, *, init_field=None, params=_DEFAULT_PARAMS, refine_mask=None,
    score_frozen=True,
):  # fmt: skip
    """Nearest-neighbour field from the source pair (A, A') to the target pair (B, B').

    Parameters
    ----------
    a, a_prime : float32 array, shape (C, Ha, Wa)
        The source pair, L2-normalised per pixel.
    b, b_prime : float32 array, shape (C, Hb, Wb)
        The target pair.
    init_field : int32 array, shape (Ha, Wa, 2), optional
        Starting matches (absolute ``(y, x)`` in B), clamped into B; for
        example the upsampled field of the coarser level. Default: the
        identity, clamped into B.
    params : PatchMatchParams
        Patch size, iterations, search radius, seed, propagation jumps.
    refine_mask : uint8 or bool array, shape (Ha, Wa), optional
        Nonzero where pixels are searched; elsewhere the (clamped) initial
        match is kept. Default: search everywhere.
    score_frozen : bool
        False leaves the distance of every pixel ``refine_mask`` freezes at
        +inf instead of scoring its match: nothing reads it, and scoring costs
        a patch distance per pixel of the whole map when few are searched (a
        video frame at full resolution).

    Returns
    -------
    field : int32 array, shape (Ha, Wa, 2)
        Absolute ``(y, x)`` in B of each source pixel's match.
    distance : float32 array, shape (Ha, Wa)
        The patch distance of each match.

    Both are the same kind of array as ``a``; ``init_field`` and
    ``refine_mask`` may be host arrays on either target. The result depends
    only on the inputs and ``params``, not on the thread count or launch
    shape. CPU and CUDA distances agree to float32 rounding (bitwise when the
    feature arithmetic is exact), so their fields can only differ where two
    candidates score within rounding of each other.
    """
    if targets.is_cuda_array(a):
        return patchmatch_cuda(a, a_prime, b, b_prime, init_field=init_field, params=params,
                               refine_mask=refine_mask, score_frozen=score_frozen)  # fmt: skip
    return patchmatch_cpu(a, a_prime, b, b_prime, init_field=init_field, params=params,
                          refine_mask=refine_mask, score_frozen=score_frozen)  # fmt: skip


def patchmatch_cpu(
    a, a_prime, b, b_prime, *, init_field=None, params=_DEFAULT_PARAMS, refine_mask=None,
    score_frozen=True,
):  # fmt: skip
    """CPU twin of :func:`patchmatch` (NumPy in, NumPy out)."""
    return _run(_CpuTarget, (a, a_prime, b, b_prime), init_field, params, refine_mask,
                score_frozen)  # fmt: skip


def patchmatch_cuda(
    a, a_prime, b, b_prime, *, init_field=None, params=_DEFAULT_PARAMS, refine_mask=None,
    score_frozen=True,
):  # fmt: skip
    """CUDA kernels of :func:`patchmatch` (GPU arrays in, same kind out)."""
    return _run(_CudaTarget, (a, a_prime, b, b_prime), init_field, params, refine_mask,
                score_frozen)  # fmt: skip


def identity_field(source_shape, target_shape):
    """The identity field from a ``(Ha, Wa)`` map into a ``(Hb, Wb)`` one, clamped into it.

    Returns
    -------
    int32 NumPy array, shape (Ha, Wa, 2)
    """
    (source_height, source_width), (target_height, target_width) = source_shape, target_shape
    ys = np.minimum(np.arange(source_height), target_height - 1)
    xs = np.minimum(np.arange(source_width), target_width - 1)
    field = np.empty((source_height, source_width, 2), dtype=np.int32)
    field[..., 0] = ys[:, None]
    field[..., 1] = xs[None, :]
    return field


def _run(target, pairs, init_field, params, refine_mask, score_frozen):
    a, _, b, _ = pairs
    check_feature_pairs(*pairs)
    if not isinstance(params, PatchMatchParams):
        raise TypeError(f"params must be a PatchMatchParams, got {type(params).__name__}")
    source_shape = (a.shape[1], a.shape[2])
    if init_field is None:
        init_field = identity_field(source_shape, (b.shape[1], b.shape[2]))
    check_field(init_field, (*source_shape, 2), "init_field")
    if refine_mask is not None and refine_mask.dtype == np.bool_:
        refine_mask = refine_mask.view(np.uint8)
    if refine_mask is not None and (
        refine_mask.dtype != np.uint8 or tuple(refine_mask.shape) != source_shape
    ):
        raise ValueError(
            f"refine_mask must be uint8 or bool {source_shape}, "
            f"got {refine_mask.dtype} {refine_mask.shape}"
        )

    radius = params.patch_size // 2
    maps = target.maps(*pairs)
    init_field = target.upload(init_field, like=a)
    if refine_mask is None:
        # Searching everywhere needs no upload: the mask of ones is made where it is used.
        mask = target.ones(source_shape, np.uint8, like=a)
    else:
        mask = target.upload(refine_mask, like=a)
    field = target.empty((*source_shape, 2), np.int32, like=a)
    distance = target.empty(source_shape, np.float32, like=a)
    target.start(maps, init_field, field, distance, mask, bool(score_frozen), radius)

    jumps = params.jumps if params.propagate else ()
    if params.iterations and jumps:
        spare_field = target.empty((*source_shape, 2), np.int32, like=a)
        spare_distance = target.empty(source_shape, np.float32, like=a)
    seed = params.seed & _WORD
    for iteration in range(params.iterations):
        for jump in jumps:
            target.propagate(maps, field, distance, spare_field, spare_distance, mask, jump, radius)
            field, spare_field = spare_field, field
            distance, spare_distance = spare_distance, distance
        if params.search_radius > 0:
            key = int(iteration_key(seed, iteration))
            target.search(maps, field, distance, mask, key, params.search_radius, radius)
    return field, distance
