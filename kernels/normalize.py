"""Per-pixel channel maths: L2 feature normalisation, the response mask and the blend.

All three are one pass over a float32 ``(C, H, W)`` feature map with one pixel's
channel vector as the unit of work: the CPU twin runs rows in parallel with the
channel loop outside a contiguous loop over x; the CUDA kernels run one thread
per pixel (x fastest, so each channel's loads coalesce) and loop over channels.

Float32 throughout, with the per-pixel arithmetic written once in ``shared``
functions. The CPU and CUDA targets evaluate the same operations in the same
order; they can still differ by a few float32 ulps because the CUDA compiler
contracts multiply-adds into fused multiply-adds and its ``expf`` is not
libm's. Min and max are exact on both.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import cuda

from diva_numba.kernels import targets
from diva_numba.kernels.targets import larger, shared, smaller

#: Default epsilon added to the L2 norm: post-ReLU vectors can be all zero.
DEFAULT_EPS = 1e-6

_MASK_KINDS = {"sigmoid": 0, "step": 1}


# --------------------------------------------------------------------------- shared maths


@shared
def _sum_of_squares(features, y, x):
    # Channel by channel, the order the CPU twins use along their rows.
    total = np.float32(0.0)
    for c in range(features.shape[0]):
        value = features[c, y, x]
        total += value * value
    return total


@shared
def _inverse_norm(sum_of_squares, eps):
    return np.float32(1.0) / (np.float32(math.sqrt(sum_of_squares)) + np.float32(eps))


@shared
def _mask_value(response, lowest, highest, kind, kappa, tau):
    span = highest - lowest
    # A flat response map carries no structure: every pixel counts as weakest.
    level = np.float32(0.0)
    if span > np.float32(0.0):
        # The strongest pixels are 1 outright: a response that overflowed to inf
        # would otherwise divide inf by an infinite span (NaN).
        level = np.float32(1.0) if response >= highest else (response - lowest) / span
    if kind == 1:
        return np.float32(1.0) if level >= np.float32(tau) else np.float32(0.0)
    z = np.float32(kappa) * (level - np.float32(tau))
    # Two branches so that exp never overflows, whatever kappa is.
    if z >= np.float32(0.0):
        return np.float32(1.0) / (np.float32(1.0) + np.float32(math.exp(-z)))
    e = np.float32(math.exp(z))
    return e / (np.float32(1.0) + e)


@shared
def _blend_value(structure, reconstructed, weight):
    return structure * weight + reconstructed * (np.float32(1.0) - weight)


# --------------------------------------------------------------------------- CPU twins


@numba.njit(parallel=True, cache=True)
def _normalize_rows(features, eps, out):
    channels, height, width = features.shape
    for y in numba.prange(height):
        sums = np.zeros(width, dtype=np.float32)
        for c in range(channels):
            for x in range(width):
                v = features[c, y, x]
                sums[x] += v * v
        for x in range(width):
            sums[x] = _inverse_norm(sums[x], eps)
        for c in range(channels):
            for x in range(width):
                out[c, y, x] = features[c, y, x] * sums[x]


@numba.njit(parallel=True, cache=True)
def _response_mask_rows(features, kind, kappa, tau, out):
    channels, height, width = features.shape
    for y in numba.prange(height):
        for x in range(width):
            out[y, x] = np.float32(0.0)
        for c in range(channels):
            for x in range(width):
                v = features[c, y, x]
                out[y, x] += v * v
    lowest = out.min()
    highest = out.max()
    for y in numba.prange(height):
        for x in range(width):
            out[y, x] = _mask_value(out[y, x], lowest, highest, kind, kappa, tau)


@numba.njit(parallel=True, cache=True)
def _blend_rows(structure, reconstructed, mask, alpha, out):
    channels, height, width = structure.shape
    for y in numba.prange(height):
        weights = np.empty(width, dtype=np.float32)
        for x in range(width):
            weights[x] = np.float32(alpha) * mask[y, x]
        for c in range(channels):
            for x in range(width):
                out[c, y, x] = _blend_value(structure[c, y, x], reconstructed[c, y, x], weights[x])


# --------------------------------------------------------------------------- CUDA kernels


@cuda.jit(cache=True)
def _normalize_kernel(features, eps, out):
    x, y = cuda.grid(2)
    channels, height, width = features.shape
    if y >= height or x >= width:
        return
    scale = _inverse_norm(_sum_of_squares(features, y, x), eps)
    for c in range(channels):
        out[c, y, x] = features[c, y, x] * scale


@cuda.jit(cache=True)
def _response_kernel(features, responses):
    x, y = cuda.grid(2)
    _, height, width = features.shape
    if y >= height or x >= width:
        return
    responses[y * width + x] = _sum_of_squares(features, y, x)


@cuda.jit(cache=True)
def _minmax_partials_kernel(lows, highs, partial_lows, partial_highs):
    # Grid-stride loop into registers, then a tree over the block in dynamic
    # shared memory (2 * blockDim floats: lows first, highs after).
    scratch = cuda.shared.array(0, dtype=numba.float32)
    tid = cuda.threadIdx.x
    block = cuda.blockDim.x
    low = np.float32(math.inf)
    high = np.float32(-math.inf)
    i = cuda.grid(1)
    while i < lows.shape[0]:
        low = smaller(low, lows[i])
        high = larger(high, highs[i])
        i += cuda.gridsize(1)
    scratch[tid] = low
    scratch[block + tid] = high
    cuda.syncthreads()
    active = block
    while active > 1:
        # Halving with the odd element kept works for any block size.
        half = (active + 1) // 2
        if tid < active - half:
            scratch[tid] = smaller(scratch[tid], scratch[tid + half])
            scratch[block + tid] = larger(scratch[block + tid], scratch[block + tid + half])
        cuda.syncthreads()
        active = half
    if tid == 0:
        partial_lows[cuda.blockIdx.x] = scratch[0]
        partial_highs[cuda.blockIdx.x] = scratch[block]


@cuda.jit(cache=True)
def _mask_kernel(responses, extremes_low, extremes_high, kind, kappa, tau, out):
    x, y = cuda.grid(2)
    height, width = out.shape
    if y >= height or x >= width:
        return
    out[y, x] = _mask_value(
        responses[y * width + x], extremes_low[0], extremes_high[0], kind, kappa, tau
    )


@cuda.jit(cache=True)
def _blend_kernel(structure, reconstructed, mask, alpha, out):
    x, y = cuda.grid(2)
    channels, height, width = structure.shape
    if y >= height or x >= width:
        return
    weight = np.float32(alpha) * mask[y, x]
    for c in range(channels):
        out[c, y, x] = _blend_value(structure[c, y, x], reconstructed[c, y, x], weight)


# --------------------------------------------------------------------------- checks


def _check_features(features, name="features"):
    if features.ndim != 3 or features.dtype != np.float32 or 0 in features.shape:
        raise ValueError(
            f"{name} must be a non-empty float32 (C, H, W) array, "
            f"got {features.dtype} {features.shape}"
        )


def _mask_kind(kind):
    if kind not in _MASK_KINDS:
        raise ValueError(f"unknown mask kind {kind!r}; use 'sigmoid' or 'step'")
    return _MASK_KINDS[kind]


def _check_blend_inputs(feat_a, reconstructed, mask):
    _check_features(feat_a, "feat_a")
    _check_features(reconstructed, "reconstructed")
    if reconstructed.shape != feat_a.shape:
        raise ValueError(f"reconstructed {reconstructed.shape} differs from feat_a {feat_a.shape}")
    if mask.dtype != np.float32 or mask.shape != feat_a.shape[1:]:
        raise ValueError(f"mask must be float32 {feat_a.shape[1:]}, got {mask.dtype} {mask.shape}")


# --------------------------------------------------------------------------- public API


def normalize_features(features, *, eps=DEFAULT_EPS):
    """Divide every pixel's channel vector by its L2 norm.

    Parameters
    ----------
    features : float32 array, shape (C, H, W)
        NumPy array (CPU) or GPU array (CUDA).
    eps : float
        Added to the norm, so that all-zero vectors stay zero instead of NaN.

    Returns
    -------
    float32 array, shape (C, H, W)
        ``features / (||features||_channels + eps)``, same kind of array as the input.

    Notes
    -----
    Memory traffic floor: ``8 * C * H * W`` bytes (read once, write once); see
    :func:`traffic_bytes`.
    """
    if targets.is_cuda_array(features):
        return normalize_features_cuda(features, eps=eps)
    return normalize_features_cpu(features, eps=eps)


def normalize_features_cpu(features, *, eps=DEFAULT_EPS):
    """CPU twin of :func:`normalize_features` (NumPy in, NumPy out)."""
    _check_features(features)
    features = np.ascontiguousarray(features)
    out = np.empty(features.shape, dtype=np.float32)
    _normalize_rows(features, np.float32(eps), out)
    return out


def normalize_features_cuda(features, *, eps=DEFAULT_EPS):
    """CUDA kernel of :func:`normalize_features` (GPU array in, same kind out)."""
    _check_features(features)
    out = targets.device_empty(features.shape, np.float32, like=features)
    grid, block = targets.launch_2d(features.shape[1], features.shape[2])
    _normalize_kernel[grid, block](features, np.float32(eps), out)
    return out


def response_mask(features, *, kind="sigmoid", kappa=300.0, tau=0.05):
    """Where a feature map responds strongly: the blend mask ``M`` of the analogy.

    The response ``r = sum_c features[c]**2`` is min-max normalised over the map
    to ``[0, 1]`` (a flat map normalises to 0 everywhere), then mapped through
    ``1 / (1 + exp(-kappa * (r - tau)))`` (the paper's sigmoid) or the hard step
    ``r >= tau`` (the official code).

    Parameters
    ----------
    features : float32 array, shape (C, H, W)
    kind : {"sigmoid", "step"}
    kappa : float
        Sigmoid steepness (ignored by the step).
    tau : float
        Threshold on the normalised response.

    Returns
    -------
    float32 array, shape (H, W)
        Values in ``[0, 1]``.

    Notes
    -----
    Memory traffic floor: ``4 * C * H * W + 4 * H * W`` bytes. Both targets also
    write and re-read the ``H * W`` response map once (the min-max needs all of
    it before any pixel can be mapped).
    """
    if targets.is_cuda_array(features):
        return response_mask_cuda(features, kind=kind, kappa=kappa, tau=tau)
    return response_mask_cpu(features, kind=kind, kappa=kappa, tau=tau)


def response_mask_cpu(features, *, kind="sigmoid", kappa=300.0, tau=0.05):
    """CPU twin of :func:`response_mask`."""
    _check_features(features)
    code = _mask_kind(kind)
    features = np.ascontiguousarray(features)
    out = np.empty(features.shape[1:], dtype=np.float32)
    _response_mask_rows(features, code, np.float32(kappa), np.float32(tau), out)
    return out


def response_mask_cuda(features, *, kind="sigmoid", kappa=300.0, tau=0.05):
    """CUDA kernels of :func:`response_mask`.

    Three steps: one thread per pixel writes the response; a block-wise min/max
    reduction is repeated over the partial results until one block remains;
    one thread per pixel writes the mask.
    """
    _check_features(features)
    code = _mask_kind(kind)
    _, height, width = features.shape
    grid, block = targets.launch_2d(height, width)
    responses = targets.device_empty((height * width,), np.float32, like=features)
    _response_kernel[grid, block](features, responses)
    lows, highs = _minmax(responses, like=features)
    out = targets.device_empty((height, width), np.float32, like=features)
    _mask_kernel[grid, block](responses, lows, highs, code, np.float32(kappa), np.float32(tau), out)
    return out


def _minmax(values, *, like):
    """Device arrays holding min and max of ``values`` at index 0."""
    lows = highs = values
    while True:
        count = lows.shape[0]
        blocks, block = targets.launch_1d(count)
        # At most one block's worth of partials, so a second pass always finishes.
        blocks = min(blocks, block)
        partial_lows = targets.device_empty((blocks,), np.float32, like=like)
        partial_highs = targets.device_empty((blocks,), np.float32, like=like)
        shared_bytes = 2 * block * np.dtype(np.float32).itemsize
        _minmax_partials_kernel[blocks, block, 0, shared_bytes](
            lows, highs, partial_lows, partial_highs
        )
        lows, highs = partial_lows, partial_highs
        if blocks == 1:
            return lows, highs


def blend(feat_a, reconstructed, mask, *, alpha):
    """Mix structure features with reconstructed ones: ``F_A * W + R * (1 - W)``.

    Parameters
    ----------
    feat_a : float32 array, shape (C, H, W)
        The structure features ``F_A``.
    reconstructed : float32 array, shape (C, H, W)
        The deconvolved features ``R``.
    mask : float32 array, shape (H, W)
        ``M`` from :func:`response_mask`.
    alpha : float
        Level weight; ``W = alpha * M``.

    Returns
    -------
    float32 array, shape (C, H, W)

    Notes
    -----
    Memory traffic floor: ``12 * C * H * W + 4 * H * W`` bytes.
    """
    if targets.is_cuda_array(feat_a):
        return blend_cuda(feat_a, reconstructed, mask, alpha=alpha)
    return blend_cpu(feat_a, reconstructed, mask, alpha=alpha)


def blend_cpu(feat_a, reconstructed, mask, *, alpha):
    """CPU twin of :func:`blend`."""
    _check_blend_inputs(feat_a, reconstructed, mask)
    out = np.empty(feat_a.shape, dtype=np.float32)
    _blend_rows(
        np.ascontiguousarray(feat_a),
        np.ascontiguousarray(reconstructed),
        np.ascontiguousarray(mask),
        np.float32(alpha),
        out,
    )
    return out


def blend_cuda(feat_a, reconstructed, mask, *, alpha):
    """CUDA kernel of :func:`blend`; ``reconstructed`` and ``mask`` may be host arrays."""
    _check_blend_inputs(feat_a, reconstructed, mask)
    reconstructed = targets.as_device(reconstructed, like=feat_a)
    mask = targets.as_device(mask, like=feat_a)
    out = targets.device_empty(feat_a.shape, np.float32, like=feat_a)
    grid, block = targets.launch_2d(feat_a.shape[1], feat_a.shape[2])
    _blend_kernel[grid, block](feat_a, reconstructed, mask, np.float32(alpha), out)
    return out


def traffic_bytes(kernel, *, features_shape):
    """Least bytes a kernel of this module must move between memory and chip.

    Parameters
    ----------
    kernel : {"normalize_features", "response_mask", "blend"}
    features_shape : tuple of int
        ``(C, H, W)`` of the feature map(s).

    Returns
    -------
    int
        Compulsory float32 reads plus writes, for bandwidth-efficiency figures.
    """
    channels, height, width = features_shape
    pixels = height * width
    floors = {
        "normalize_features": 8 * channels * pixels,
        "response_mask": 4 * channels * pixels + 4 * pixels,
        "blend": 12 * channels * pixels + 4 * pixels,
    }
    if kernel not in floors:
        raise ValueError(f"unknown kernel {kernel!r}; one of {sorted(floors)}")
    return floors[kernel]
