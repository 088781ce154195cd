"""Pictures of nearest-neighbour fields."""

from __future__ import annotations

import cv2
import numpy as np


def field_colour(field: np.ndarray) -> np.ndarray:
    """Colour-code a field's offsets as a flow picture.

    Parameters
    ----------
    field : int32 array (H, W, 2)
        Absolute ``(y, x)`` matches.

    Returns
    -------
    uint8 array (H, W, 3)
        RGB: hue is the direction of the offset ``field - identity``, saturation
        its length relative to the largest one; the identity is white.
    """
    height, width = field.shape[:2]
    ys, xs = np.mgrid[0:height, 0:width]
    dy = field[..., 0].astype(np.float32) - ys
    dx = field[..., 1].astype(np.float32) - xs
    magnitude, angle = cv2.cartToPolar(dx, dy, angleInDegrees=True)
    hsv = np.empty((height, width, 3), dtype=np.uint8)
    hsv[..., 0] = (angle / 2).astype(np.uint8)
    hsv[..., 1] = np.clip(magnitude / max(float(magnitude.max()), 1e-6) * 255, 0, 255)
    hsv[..., 2] = 255
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
