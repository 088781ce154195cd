"""Deconvolution solutions of video frames, moved once from the frame that solved them.

A seeded frame starts each level's deconvolution from a solution of an earlier
frame, moved along the optical flow by a nearest-neighbour gather (so that
solutions move exactly as the fields do). Moved again at every frame, a
sub-cell motion rounds away at every step and the solutions drift off their
content (docs/DESIGN.md section 3). So each level's solution keeps its *anchor*,
the frame that solved it, and is moved from there in one step along the
backward flows composed since (:func:`follow`).

When a frame solves a level again only in boxes around new content
(:mod:`diva_numba.network.regions`), the rest of the map keeps the moved solution and
the frame becomes the anchor of the whole map. The moved cells then show their
content a rounding error away from where they sit; that error becomes the new
anchor's flow (:func:`reanchor`), so it is carried, not compounded.

Flows are float32 ``(H, W, 2)`` ``(dx, dy)`` at the working frame's pixels, masks
uint8 ``(H, W)``; maps of any level are reached through the conventions of
:mod:`diva_numba.kernels.nnf_resample`.
"""

from __future__ import annotations

import numpy as np

from diva_numba.gpu.device import array_module
from diva_numba.kernels.nnf_resample import nearest_cells, pull_field
from diva_numba.models import vgg
from diva_numba.network.regions import changed_boxes
from diva_numba.video.flow import carry_mask, compose, outside


def follow(anchor, backward: np.ndarray, occluded: np.ndarray):
    """One frame on: the flow to the anchor frame and the pixels new to it.

    Parameters
    ----------
    anchor : (flow, new) or None
        The previous frame's flow to the anchor and its pixels new to the
        anchor; None when the previous frame is the anchor.
    backward : float32 array (H, W, 2)
        Flow from this frame to the previous one.
    occluded : uint8 array (H, W)
        This frame's pixels the backward flow does not trust.

    Returns
    -------
    flow : float32 array (H, W, 2)
    new : uint8 array (H, W)
        Occluded now, new to the anchor in the previous frame, or led by the
        composed flow out of the anchor's picture (a slow pan's sub-pixel steps,
        each rounded, would never mark its border).
    """
    if anchor is None:
        return backward, occluded
    previous_flow, previous_new = anchor
    flow = compose(backward, previous_flow)
    carried = carry_mask(previous_new, backward)
    return flow, np.maximum(np.maximum(occluded, carried), outside(flow))


def move(solution, flow):
    """Nearest-neighbour gather of a (C, H, W) map along a pixel-level backward flow.

    Each position takes the value where its content was, ``round(p + f(p))``
    clamped into the map, the flow sampled at its nearest cell and scaled to the
    map: the positions are :func:`pull_field` of the identity field, so solutions
    move exactly as the fields do, and the gather runs on the map's device.
    """
    _, height, width = solution.shape
    xp = array_module(solution)
    positions, _ = pull_field(_identity(xp, height, width), flow, source_shape=(height, width))
    return xp.ascontiguousarray(solution[:, positions[..., 0], positions[..., 1]])


def new_cells(new: np.ndarray, level: int) -> np.ndarray:
    """bool mask of level ``level``'s solution map (level L-2): cells holding a new pixel."""
    return pooled_masks(new, max(level - 2, 1))[max(level - 2, 1)].astype(bool)


def pooled_masks(mask, levels: int) -> dict:
    """A pixel mask at feature levels 1..``levels``: a cell is set if any pixel under it is.

    Level 1 is the pixel grid; each further level pools 2x2 windows (ceil, as the
    network's pools), on the mask's device.
    """
    xp = array_module(mask)
    pooled = {1: mask}
    for level in range(2, levels + 1):
        height, width = mask.shape
        padded = xp.zeros((height + height % 2, width + width % 2), dtype=mask.dtype)
        padded[:height, :width] = mask
        mask = padded.reshape(padded.shape[0] // 2, 2, padded.shape[1] // 2, 2).max(axis=(1, 3))
        pooled[level] = mask
    return pooled


def reanchor(flow: np.ndarray, map_shape: tuple[int, int], solved) -> tuple:
    """The anchor of a map solved again in boxes, moved along ``flow`` everywhere else.

    Parameters
    ----------
    flow : float32 array (H, W, 2)
        The flow the map's unsolved cells were moved along (:func:`move`).
    map_shape : (int, int)
        The solution map's ``(h, w)``.
    solved : iterable of (top, bottom, left, right)
        Boxes of map cells solved afresh in this frame.

    Returns
    -------
    (flow, new)
        The flow from this frame to where each cell's content sits in the moved
        map (minus the rounding error of the move; zero in the solved boxes), and
        no pixel new to it.
    """
    height, width = flow.shape[:2]
    map_height, map_width = map_shape
    positions, _ = pull_field(_identity(np, map_height, map_width), flow, source_shape=map_shape)
    rows = nearest_cells(map_height, height)
    columns = nearest_cells(map_width, width)
    sampled = flow[rows[:, None], columns[None, :]]  # the flow each cell moved by
    # Where each cell's content sits, in map cells, less where the cell is.
    error_y = positions[..., 0] - (
        np.arange(map_height)[:, None] + sampled[..., 1] * map_height / height
    )
    error_x = positions[..., 1] - (
        np.arange(map_width)[None, :] + sampled[..., 0] * map_width / width
    )
    # Half a cell at most, unless a cell was clamped into the map (content that left it).
    error_y, error_x = np.clip(error_y, -0.5, 0.5), np.clip(error_x, -0.5, 0.5)
    for top, bottom, left, right in solved:
        error_y[top:bottom, left:right] = 0
        error_x[top:bottom, left:right] = 0
    pixel_rows = nearest_cells(height, map_height)
    pixel_columns = nearest_cells(width, map_width)
    cell = (pixel_rows[:, None], pixel_columns[None, :])
    residual = np.stack(
        [-error_x[cell] * width / map_width, -error_y[cell] * height / map_height], axis=-1
    ).astype(np.float32)
    return residual, np.zeros((height, width), np.uint8)


def _identity(xp, height: int, width: int):
    rows, columns = xp.meshgrid(
        xp.arange(height, dtype=xp.int32), xp.arange(width, dtype=xp.int32), indexing="ij"
    )
    return xp.ascontiguousarray(xp.stack([rows, columns], axis=-1))


def plan_solves(followed: dict, params) -> tuple[frozenset, dict]:
    """Which levels a seeded frame solves again, and in which boxes.

    Parameters
    ----------
    followed : dict of int to (flow, new)
        Each level's :func:`follow`.
    params : TransferParams
        ``new_content_threshold(level)`` and ``deconvolve_new_only``.

    Returns
    -------
    levels : frozenset of int
        Levels with at least their threshold's share of pixels new to the anchor.
    boxes : dict of int to list of Box
        For those solved in boxes only (:func:`~diva_numba.network.regions.changed_boxes`);
        a solved level missing here is solved over its whole map.
    """
    levels = frozenset(
        level
        for level, (_, new) in followed.items()
        if float(new.mean()) >= params.new_content_threshold(level)
    )
    boxes = {}
    if params.deconvolve_new_only:
        for level in levels:
            layers = vgg.layers_between(level - 2, level)
            found = changed_boxes(new_cells(followed[level][1], level), layers)
            if found is not None:
                boxes[level] = found
    return levels, boxes


def settle(followed: dict, warm_start, previous: dict, solved: dict) -> tuple[dict, dict]:
    """The state's solutions and anchors after a seeded frame.

    Parameters
    ----------
    followed : dict of int to (flow, new)
        Each level's :func:`follow` for this frame.
    warm_start : WarmStart
        Its ``solve_levels`` and ``solve_boxes`` (:func:`plan_solves`).
    previous : dict of int to array
        The solutions in their anchors' geometry.
    solved : dict of int to array
        This frame's solutions (moved ones at the levels it did not solve).

    Returns
    -------
    solutions, anchors : dict
        A level not solved keeps its solution and anchor; one solved over its
        whole map is anchored on this frame (no entry in ``anchors``); one
        solved in boxes is anchored here by :func:`reanchor`.
    """
    solutions, kept = {}, {}
    for level, (flow, new) in followed.items():
        if level not in warm_start.solve_levels:
            solutions[level], kept[level] = previous[level], (flow, new)
            continue
        solutions[level] = solved[level]
        if level in warm_start.solve_boxes:
            keeps = [box.keep for box in warm_start.solve_boxes[level]]
            kept[level] = reanchor(flow, tuple(solved[level].shape[1:]), keeps)
    return solutions, kept
