"""Deconvolve only what changed: the boxes of a solution map that hold new content.

A seeded video frame solves a level's deconvolution again when enough of the frame
is new to that level's anchor (docs/DESIGN.md section 3). Everywhere else the
moved solution is already right, so the solve is restricted to boxes around the
new content (:func:`changed_boxes`), each solved on its own crop
(:func:`deconvolve_boxes`):

* the map is cut into tiles; tiles holding a new cell are merged into
  rectangles (runs along each row of tiles, stacked where the runs match), the
  *keep* boxes, whose solution replaces the moved one;
* each keep box grows by the sub-network's receptive radius into a *solve* box:
  the crop the L-BFGS sees. Its zero padding is wrong at the crop's edge, and
  the margin keeps that error out of the kept part;
* boxes start on multiples of the sub-network's pooling factor, so that the
  crop's output cells are exactly the full map's (ceil-mode pooling).

When the solve boxes cover most of the map, the whole map is solved instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from diva_numba.models import vgg


@dataclass(frozen=True)
class Box:
    """A keep box and the solve box around it, as ``(top, bottom, left, right)`` cells."""

    keep: tuple[int, int, int, int]
    solve: tuple[int, int, int, int]

    @property
    def solve_area(self) -> int:
        top, bottom, left, right = self.solve
        return (bottom - top) * (right - left)


def receptive_radius(layers: tuple[str, ...]) -> int:
    """Input cells on each side that reach one output cell of these convs (3x3, pad 1)
    and 2x2 ceil-mode pools (after the convs of :data:`~diva_numba.models.vgg.POOL_AFTER`).
    """
    radius, scale = 0, 1
    for layer in layers:
        radius += scale
        if layer in vgg.POOL_AFTER:
            radius += scale
            scale *= 2
    return radius


def pooling_factor(layers: tuple[str, ...]) -> int:
    """Input cells per output cell along each axis."""
    return 2 ** sum(layer in vgg.POOL_AFTER for layer in layers)


def changed_boxes(
    new: np.ndarray, layers: tuple[str, ...], *, tile: int = 16, max_share: float = 0.6
) -> list[Box] | None:
    """Boxes of a level's input map to solve again, or None to solve the whole map.

    Parameters
    ----------
    new : bool or uint8 array (H, W)
        Cells of the solution map (the sub-network's input level) new to the anchor.
    layers : tuple of str
        The sub-network's convs (:attr:`SubNetwork.layers`).
    tile : int
        Tile side in cells; rounded up to a multiple of the pooling factor.
    max_share : float
        Above this share of the map in solve boxes, the whole map is solved.

    Returns
    -------
    list of Box, or None
        Empty when nothing is new.
    """
    height, width = new.shape
    factor = pooling_factor(layers)
    margin = receptive_radius(layers)
    boxes = []
    for keep in marked_boxes(new, tile=math.ceil(tile / factor) * factor):
        solve = (
            max(0, (keep[0] - margin) // factor * factor),
            min(height, keep[1] + margin),
            max(0, (keep[2] - margin) // factor * factor),
            min(width, keep[3] + margin),
        )
        boxes.append(Box(keep, _aligned_end(solve, factor, height, width)))
    if sum(box.solve_area for box in boxes) > max_share * height * width:
        return None
    return boxes


def marked_boxes(mask: np.ndarray, *, tile: int) -> list[tuple[int, int, int, int]]:
    """Rectangles ``(top, bottom, left, right)`` in pixels over the tiles that hold a mark.

    The map is cut into ``tile`` x ``tile`` tiles from its top left corner; tiles
    holding a nonzero of ``mask`` are merged into rectangles (runs along each
    row of tiles, stacked where the runs match). The rectangles do not overlap,
    and their union covers every mark.
    """
    height, width = mask.shape
    rows, columns = math.ceil(height / tile), math.ceil(width / tile)
    padded = np.zeros((rows * tile, columns * tile), dtype=bool)
    padded[:height, :width] = mask
    marked = padded.reshape(rows, tile, columns, tile).any(axis=(1, 3))
    return [
        (top * tile, min(bottom * tile, height), left * tile, min(right * tile, width))
        for top, bottom, left, right in _rectangles(marked)
    ]


def deconvolve_boxes(deconvolve, network, target, solution, boxes: list[Box]):
    """Solve each box's crop and write its keep part into ``solution`` (in place).

    Parameters
    ----------
    deconvolve : callable
        ``deconvolve(network, target, initial) -> LBFGSResult``.
    network : SubNetwork
    target : array (C', H', W')
        The full map's target at the sub-network's output level.
    solution : array (C, H, W)
        The warm start; its boxes are replaced by their solutions.
    boxes : list of Box

    Returns
    -------
    list of LBFGSResult
        One per box.
    """
    xp_copy = _copier(solution)
    factor = pooling_factor(network.layers)
    results = []
    for box in boxes:
        top, bottom, left, right = box.solve
        crop_target = target[
            :,
            top // factor : math.ceil(bottom / factor),
            left // factor : math.ceil(right / factor),
        ]
        result = deconvolve(
            network, xp_copy(crop_target), xp_copy(solution[:, top:bottom, left:right])
        )
        keep_top, keep_bottom, keep_left, keep_right = box.keep
        solution[:, keep_top:keep_bottom, keep_left:keep_right] = result.x[
            :, keep_top - top : keep_bottom - top, keep_left - left : keep_right - left
        ]
        results.append(result)
    return results


def _aligned_end(solve, factor: int, height: int, width: int):
    """Ends on a multiple of ``factor`` unless at the map's edge (ceil pooling there)."""
    top, bottom, left, right = solve
    if bottom < height:
        bottom = min(height, math.ceil(bottom / factor) * factor)
    if right < width:
        right = min(width, math.ceil(right / factor) * factor)
    return top, bottom, left, right


def _rectangles(marked: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Marked tiles as rectangles ``(top, bottom, left, right)`` in tiles: runs along each
    row, a run continued downwards while the row below has the same run."""
    open_runs: dict[tuple[int, int], int] = {}
    done = []
    for row in range(marked.shape[0] + 1):
        runs = set(_runs(marked[row])) if row < marked.shape[0] else set()
        for run, top in list(open_runs.items()):
            if run not in runs:
                done.append((top, row, *run))
                del open_runs[run]
        for run in runs:
            open_runs.setdefault(run, row)
    return sorted(done)


def _runs(line: np.ndarray) -> list[tuple[int, int]]:
    edges = np.flatnonzero(np.diff(np.concatenate([[0], line.astype(np.int8), [0]])))
    return [(int(start), int(end)) for start, end in zip(edges[::2], edges[1::2], strict=True)]


def _copier(like):
    """A contiguous copy on ``like``'s device (the L-BFGS owns its arrays)."""
    from diva_numba.gpu.device import array_module

    xp = array_module(like)
    return lambda array: xp.ascontiguousarray(array).copy()
