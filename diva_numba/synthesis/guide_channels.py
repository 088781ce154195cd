"""Guides of the patch distance as augmented channels (docs/DESIGN.md section 10).

The analogy's PatchMatch kernels score a match by a dot product of channels
(:func:`~diva_numba.kernels.patch_distance.pair_distance`). A weighted squared
difference is such a dot product once each side carries two extra channels: for
a source map ``s``, a target map ``t`` and a per-pixel weight ``w``,
``w |s - t|^2 = -<[w s, w |s|^2, w], [2 t, -1, -|t|^2]>`` up to the kernel's
sign convention. The pull towards a field of positions ``f`` uses
``[cos, sin](2 pi f / P)`` against the same of B''s pixel coordinates:
``2 - 2 cos(2 pi d / P)``, quadratic for small deviations ``d`` and bounded for
large ones. :func:`halves` packs the blocks into the kernel's two maps.
"""

from __future__ import annotations

import math

from diva_numba.gpu.device import array_module


def halves(blocks: list, xp) -> tuple:
    """``blocks`` as the kernel's two (C, H, W) maps: stacked, zero-padded to even C, split.

    Each half is a view of a channel-last (H, W, C) array, the layout the CPU
    kernels read, so that they use it without a copy.
    """
    channels = sum(block.shape[0] for block in blocks)
    height, width = blocks[0].shape[1:]
    half = (channels + 1) // 2
    stacked = [xp.zeros((height, width, half), dtype=xp.float32) for _ in range(2)]
    start = 0
    for block in blocks:
        for channel in range(block.shape[0]):
            which, slot = divmod(start + channel, half)
            stacked[which][:, :, slot] = block[channel]
        start += block.shape[0]
    return tuple(part.transpose(2, 0, 1) for part in stacked)


def ssd_source(source, weight: float, pixel_weight) -> list:
    """Source channels of ``weight * pixel_weight * |source - target|^2`` (see :func:`halves`)."""
    xp = array_module(source)
    w = xp.float32(weight) if pixel_weight is None else (pixel_weight * weight)[None]
    w = w * xp.ones((1, *source.shape[1:]), dtype=xp.float32)
    return [w * source, w * (source * source).sum(axis=0, keepdims=True), w]


def ssd_target(target) -> list:
    """Target channels of the weighted squared difference (see :func:`ssd_source`)."""
    xp = array_module(target)
    return [
        2 * target,
        -xp.ones((1, *target.shape[1:]), dtype=xp.float32),
        -(target * target).sum(axis=0, keepdims=True),
    ]


def pull_source(prior, weight: float, period: float) -> list:
    """Source channels of ``weight * (2 - 2 cos(2 pi d / period))`` per axis, ``d`` off ``prior``.

    ``prior`` is a float32 (H, W, 2) field of positions; the target side is
    :func:`pull_target`.
    """
    xp = array_module(prior)
    omega = xp.float32(2 * math.pi / period)
    weight = xp.float32(weight)
    blocks = []
    for axis in range(2):
        phase = omega * prior[..., axis]
        blocks += [weight * xp.cos(phase)[None], weight * xp.sin(phase)[None]]
    return blocks


def pull_target(exemplar_shape, period: float, xp) -> list:
    """Target channels of the pull: ``2 [cos, sin](2 pi q / period)`` of B''s pixel coordinates."""
    height, width = exemplar_shape
    omega = xp.float32(2 * math.pi / period)
    rows = omega * xp.arange(height, dtype=xp.float32)[:, None] * xp.ones((1, width), xp.float32)
    columns = omega * xp.ones((height, 1), xp.float32) * xp.arange(width, dtype=xp.float32)[None]
    return [2 * xp.cos(rows)[None], 2 * xp.sin(rows)[None],
            2 * xp.cos(columns)[None], 2 * xp.sin(columns)[None]]  # fmt: skip
