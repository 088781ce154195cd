"""Guide (c) of the synthesis on video frames: the previous output, and its field, moved.

EbSynth carries its field from frame to frame; so does the synthesis here
(docs/DESIGN.md section 10). Where the optical flow is trusted, every level
starts from the previous output's field moved into the frame
(:func:`carried_positions`), not from the working-size field upsampled, which a
working pixel off lands several output pixels off: more than a fine level's
one-pixel touch-up mends, so frames flickered at large output-to-working
ratios (a painted pan at 400 x 240 from 96: warping error 4.99 against 0.19 for
the input). The fine levels then search only where the flow is not trusted
(:func:`unreliable_pixels`).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from diva_numba.device import array_module
from diva_numba.imageio import resize
from diva_numba.kernels.nnf_resample import nearest_cells


@dataclass
class TemporalGuide:
    """Guide (c) of a video frame: the previous output moved along the flow.

    Attributes
    ----------
    previous : uint8 array (H, W, 3)
        The previous frame's output warped into this frame, at the output size.
    reliability : float32 array (H, W)
        1 where the flow is trusted, 0 where the pixel was occluded.
    weight : float
        The guide's weight (``--temporal-weight``).
    field : int32 array (H, W, 2), optional
        The previous output's field moved into this frame (into the exemplar at
        its own size; host or device). Where the flow is trusted it is each
        level's starting field, as EbSynth carries its field from frame to
        frame: a match a working pixel off, upsampled, is several output pixels
        off, more than a fine level's touch-up can mend.
    """

    previous: np.ndarray
    reliability: np.ndarray
    weight: float
    field: object | None = None


def carried_positions(field, reliability, positions, exemplar_shape, exemplar_full):
    """``positions`` with the previous output's moved ``field`` where the flow is trusted.

    The output-size field is sampled at each level cell's nearest pixel, its
    values scaled to the exemplar's size at this level (pixel centres aligned);
    ``reliability`` is the level's (H, W) map on the device. No transfer.
    """
    xp = array_module(positions)
    (height, width), (out_height, out_width) = positions.shape[:2], field.shape[:2]
    rows = nearest_cells(height, out_height, xp)
    columns = nearest_cells(width, out_width, xp)
    sampled = field[rows[:, None], columns[None, :]].astype(xp.float32)
    carried = xp.stack(
        [
            (sampled[..., 0] + 0.5) * (exemplar_shape[0] / exemplar_full[0]) - 0.5,
            (sampled[..., 1] + 0.5) * (exemplar_shape[1] / exemplar_full[1]) - 0.5,
        ],
        axis=-1,
    )
    trusted = (reliability >= 0.99)[:, :, None]
    return xp.ascontiguousarray(xp.where(trusted, carried, positions).astype(xp.float32))


def unreliable_pixels(reliability: np.ndarray, shape, patch_size: int) -> np.ndarray:
    """uint8 mask of a level's pixels the temporal guide does not trust, grown by a patch."""
    level = resize(reliability.astype(np.float32)[:, :, None], *shape).reshape(shape)
    kernel = np.ones((2 * patch_size + 1, 2 * patch_size + 1), np.uint8)
    return cv2.dilate((level < 0.99).astype(np.uint8), kernel)
