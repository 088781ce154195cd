"""Where an anchor frame keeps what the frames before it carried (docs/DESIGN.md section 3).

An anchor runs its own deep analogy. Where the earlier outputs, moved along the
flow, look as the anchor's own analogy does, they were right, and the anchor's
synthesis starts from their matches: those are exact where a fresh analogy's are
only close (an oil-painted pan whose frame 0 is its own painting drifts from the
ideal when every anchor starts afresh). Where the two differ, the frames before
carried a mistake (a dark frame's strokes copied onto a body that later comes into
the light), and the synthesis starts from the anchor's own matches. It searches
every pixel either way, the earlier outputs a guide that keeps it from jumping.

The two are compared at the working size by their local look, over a Gaussian
window of :data:`WINDOW` working pixels: the CIE Lab distance of their mean
colours plus the difference of the spread of their lightness (strokes of another
contrast, at the same mean colour, are another look too).
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from diva_numba.gpu.device import to_host
from diva_numba.synthesis.temporal_guide import TemporalGuide

#: Standard deviation, in working pixels, of the window two looks are compared over:
#: wide enough to average a painting's single strokes, narrow enough to tell a body
#: from the ground beside it.
WINDOW = 2.0


def local_look(image: np.ndarray, *, window: float = WINDOW) -> tuple[np.ndarray, np.ndarray]:
    """Mean CIE Lab colour and lightness spread of ``image`` around each pixel.

    Parameters
    ----------
    image : uint8 array (H, W, 3)
        RGB.
    window : float
        Standard deviation of the Gaussian window, in pixels.

    Returns
    -------
    mean : float32 array (H, W, 3)
        L in 0..100, a and b in -128..127.
    spread : float32 array (H, W)
        Standard deviation of L over the window.
    """
    lab = cv2.cvtColor(image.astype(np.float32) * np.float32(1 / 255), cv2.COLOR_RGB2Lab)
    mean = cv2.GaussianBlur(lab, (0, 0), window)
    squares = cv2.GaussianBlur(lab[..., 0] * lab[..., 0], (0, 0), window)
    return mean, np.sqrt(np.maximum(squares - mean[..., 0] * mean[..., 0], 0.0))


def look_difference(first: np.ndarray, second: np.ndarray, *, window: float = WINDOW) -> np.ndarray:
    """How differently two images of one shape look around each pixel, in Lab units.

    The distance of the mean colours plus the difference of the lightness
    spreads (:func:`local_look`).

    Parameters
    ----------
    first, second : uint8 arrays (H, W, 3)
    window : float

    Returns
    -------
    float32 array (H, W)
    """
    if first.shape != second.shape:
        raise ValueError(f"the images differ in shape: {first.shape} and {second.shape}")
    mean_1, spread_1 = local_look(first, window=window)
    mean_2, spread_2 = local_look(second, window=window)
    return np.linalg.norm(mean_1 - mean_2, axis=-1) + np.abs(spread_1 - spread_2)


def own_analogy(style: np.ndarray, work_field) -> np.ndarray:
    """An anchor's own analogy at the working size: the style image copied through its field.

    Parameters
    ----------
    style : uint8 array (Hs, Ws, 3)
        The style image at its working size.
    work_field : int32 array (h, w, 2)
        The analogy's field ``phi_ab`` at level 1 (``(y, x)`` in ``style``; host or device).

    Returns
    -------
    uint8 array (h, w, 3)
    """
    field = to_host(work_field)
    return style[field[..., 0], field[..., 1]]


def agreement(temporal: TemporalGuide, own: np.ndarray, threshold: float) -> np.ndarray:
    """Where the earlier outputs look as an anchor's own analogy does, at the output size.

    Parameters
    ----------
    temporal : TemporalGuide
        The earlier outputs moved into the anchor frame, at the output size.
    own : uint8 array (h, w, 3)
        The anchor's own analogy at the working size (:func:`own_analogy`).
    threshold : float
        The two agree where their :func:`look_difference` is below it (0: nowhere).

    Returns
    -------
    float32 array (H, W)
        1 where they agree, 0 where they do not, brought to the output size
        bilinearly (between the two over a working pixel at the edges).
    """
    height, width = own.shape[:2]
    earlier = cv2.resize(temporal.previous, (width, height), interpolation=cv2.INTER_AREA)
    agrees = (look_difference(own, earlier) < threshold).astype(np.float32)
    out_height, out_width = temporal.reliability.shape
    return cv2.resize(agrees, (out_width, out_height), interpolation=cv2.INTER_LINEAR)


def anchor_synthesis(synthesis, temporal: TemporalGuide, own: np.ndarray, params):
    """An anchor frame's synthesis parameters and temporal guide.

    Parameters
    ----------
    synthesis : SynthesisParams
        The carried frames' (:mod:`diva_numba.synthesis.pyramid`).
    temporal : TemporalGuide
        The earlier outputs moved into the anchor frame.
    own : uint8 array (h, w, 3)
        The anchor's own analogy at the working size (:func:`own_analogy`).
    params : AnchorParams
        Its ``agreement`` and ``temporal_weight``.

    Returns
    -------
    (SynthesisParams, TemporalGuide)
        Both as given when ``params.agreement`` is None; else a synthesis that
        searches every pixel, starting from the earlier outputs' matches where
        they agree with ``own`` (:attr:`TemporalGuide.carry`) and from the
        anchor's own elsewhere, with the earlier outputs a guide of weight
        ``params.temporal_weight`` everywhere.
    """
    if params.agreement is None:
        return synthesis, temporal
    everywhere = dataclasses.replace(synthesis, fine_search="everywhere",
                                     coarse_search="everywhere")  # fmt: skip
    carry = agreement(temporal, own, params.agreement)
    return everywhere, dataclasses.replace(temporal, weight=params.temporal_weight, carry=carry)
