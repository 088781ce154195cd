"""Guide (c) of the synthesis on video frames: the previous output, and its field, moved.

EbSynth carries its field from frame to frame; so does the synthesis here
(docs/DESIGN.md section 10). Where the optical flow is trusted, every scale
starts from the previous output's field moved into the frame
(:func:`~diva_numba.kernels.field_prior.carry_positions`), not from the
working-size field upsampled, which a working pixel off lands several output
pixels off: more than a fine scale's one-pixel touch-up mends, so frames
flickered at large output-to-working ratios (a painted pan at 400 x 240 from 96:
warping error 4.99 against 0.19 for the input). Every scale then searches only
where the flow is not trusted (:func:`unreliable_pixels`), so a frame's synthesis
costs what is new in it, not the output's size.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


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
        scale's starting field, as EbSynth carries its field from frame to
        frame: a match a working pixel off, upsampled, is several output pixels
        off, more than a fine scale's touch-up can mend.
    offsets : float32 array (H, W, 2), optional
        ``(y, x)`` fractions of an exemplar pixel by which each match of
        ``field`` is off where its content lies (the rounding of the move, and
        the fractions the earlier output was itself sampled at; 0 where none).
        Where the last scale keeps a carried match, the output samples the
        exemplar there (bicubic), so that content moving by fractions of a
        pixel a frame moves so in the output, not by whole pixels. Given only
        where the flow is precise to fractions of an output pixel.
    carry : float32 array (H, W), optional
        Of the pixels where ``reliability`` is trusted, those where ``field``
        starts the synthesis (at least :data:`TRUSTED` in both; scaled alike).
        None: all of them. An anchor frame keeps the earlier outputs as its
        guide everywhere but starts from their matches only where they agree
        with its own analogy (:mod:`~diva_numba.run.anchor_agreement`).
    """

    previous: np.ndarray
    reliability: np.ndarray
    weight: float
    field: object | None = None
    offsets: np.ndarray | None = None
    carry: np.ndarray | None = None


#: Reliability (0..1) from which the flow is trusted: the previous field is carried
#: there and not searched.
TRUSTED = 0.99


def unreliable_pixels(reliability: np.ndarray, patch_size: int) -> np.ndarray:
    """uint8 mask of a scale's pixels the temporal guide does not trust, and of those whose
    patch reaches one (the mask grown by the patch radius).

    ``reliability`` is the scale's float (H, W) map (host). Growing it by a whole
    patch instead searched a band twice as wide for the same result (a painted pan
    at 400 x 240 from 96: warping error 0.43 then, 0.42 now).
    """
    kernel = np.ones((patch_size, patch_size), np.uint8)
    return cv2.dilate((reliability < TRUSTED).astype(np.uint8), kernel)
