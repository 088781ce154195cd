"""Cases with exact ground truth for the precision tests and the quality benchmarks.

* :func:`deformed_pair`: a photo A against a painted, smoothly deformed copy
  of itself, B'; the true ``phi_ab`` is known at every pixel.
* :func:`painted_pan`: a pan over a photo whose first frame was painted; the
  ideal output of every frame is that painting moved along the known motion.

The painting (:func:`paint`) is a non-trivial stylisation: edge-preserving
flattening, posterised lightness and another palette, so colour comparison
between A and B' is meaningless and only structure matches.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


def paint(rgb: np.ndarray) -> np.ndarray:
    """A painted look of an RGB uint8 (H, W, 3) image (same shape)."""
    flat = cv2.stylization(np.ascontiguousarray(rgb[..., ::-1]), sigma_s=30, sigma_r=0.35)
    lab = cv2.cvtColor(np.ascontiguousarray(flat[..., ::-1]), cv2.COLOR_RGB2LAB).astype(np.float32)
    lab[..., 0] = np.round(lab[..., 0] / 24) * 24
    lab[..., 1] = 128 + (lab[..., 1] - 128) * 1.6 + 18
    lab[..., 2] = 128 - (lab[..., 2] - 128) * 0.8 - 10
    return cv2.cvtColor(np.clip(lab, 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB)


@dataclass(frozen=True)
class DeformedPair:
    """A photo and a painted, deformed copy, with the true correspondence.

    Attributes
    ----------
    a, bp : uint8 arrays (H, W, 3)
    truth : float64 array (H, W, 2)
        For each pixel of A, the ``(y, x)`` where its content is in B'.
    inside : bool array (H, W)
        Pixels whose true match lies inside B'.
    """

    a: np.ndarray
    bp: np.ndarray
    truth: np.ndarray
    inside: np.ndarray


def deformed_pair(photo: np.ndarray, *, amplitude: float = 6.0, zoom: float = 1.06) -> DeformedPair:
    """``B'(q) = paint(A)(q + v(q))``, ``v`` a zoom plus a sine wave of ``amplitude`` pixels."""
    height, width = photo.shape[:2]
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    centre_y, centre_x = (height - 1) / 2, (width - 1) / 2

    def displacement(qy, qx):
        dy = (qy - centre_y) * (1 / zoom - 1) + amplitude * np.sin(2 * np.pi * qx / width * 1.3)
        dx = (qx - centre_x) * (1 / zoom - 1) + amplitude * np.cos(2 * np.pi * qy / height * 1.1)
        return dy, dx

    dy, dx = displacement(ys, xs)
    bp = cv2.remap(paint(photo), (xs + dx).astype(np.float32), (ys + dy).astype(np.float32),
                   cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)  # fmt: skip
    # The true match of p solves q + v(q) = p; v is smooth and small, so iterate.
    qy, qx = ys.copy(), xs.copy()
    for _ in range(50):
        dy, dx = displacement(qy, qx)
        qy, qx = ys - dy, xs - dx
    inside = (qy >= 0) & (qy <= height - 1) & (qx >= 0) & (qx <= width - 1)
    return DeformedPair(photo, bp, np.stack([qy, qx], axis=-1), inside)


def field_error(field: np.ndarray, pair: DeformedPair) -> tuple[float, float]:
    """Median distance (px) of ``field`` to the truth, and the share within 3 px.

    ``field`` is (H, W, 2) at the pair's own size, over the pixels whose
    truth is inside B'.
    """
    error = np.hypot(*(np.asarray(field, np.float64) - pair.truth).transpose(2, 0, 1))[pair.inside]
    return float(np.median(error)), float((error <= 3).mean())


def identity_error(pair: DeformedPair) -> tuple[float, float]:
    """:func:`field_error` of the identity field (the trivial baseline)."""
    ys, xs = np.indices(pair.a.shape[:2])
    return field_error(np.stack([ys, xs], axis=-1), pair)


@dataclass(frozen=True)
class PaintedPan:
    """A pan over a photo, its first frame painted, and every frame's ideal output.

    Attributes
    ----------
    frames, ideals : list of uint8 arrays (H, W, 3)
    painting : uint8 array (H, W, 3)
        The painting of frame 0 (``ideals[0]``).
    visible : list of bool arrays (H, W)
        Pixels of each frame that frame 0 shows (where the ideal is defined).
    throughout : list of bool arrays (H, W)
        Pixels of each frame whose content every frame shows. A distance by
        frame over ``visible`` weighs frame 0's far corner more and more as the
        pan goes on; over these it compares the same content in every frame,
        so that only drift makes it grow.
    """

    frames: list
    ideals: list
    painting: np.ndarray
    visible: list
    throughout: list


def shifted_frames(
    image: np.ndarray, *, count: int, width: int, height: int, step: tuple[float, float]
) -> list[np.ndarray]:
    """``count`` ``height x width`` windows of ``image``, the window moved ``step`` (dy, dx)
    px a frame (bicubic): frame t at ``(y, x)`` shows ``image`` at ``(y, x) + t * step``."""
    frames = []
    for index in range(count):
        shift = np.float32([[1, 0, index * step[1]], [0, 1, index * step[0]]])
        frames.append(cv2.warpAffine(image, shift, (width, height),
                                     flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP))  # fmt: skip
    return frames


def painted_pan(
    photo: np.ndarray,
    *,
    count: int,
    width: int,
    height: int,
    step: tuple[float, float] = (2.0, 3.0),
) -> PaintedPan:
    """``count`` frames of ``height x width`` panning by ``step`` (dy, dx) px a frame."""
    window = {"count": count, "width": width, "height": height, "step": step}
    frames = shifted_frames(photo, **window)
    ideals = shifted_frames(paint(photo), **window)
    visible, throughout = [], []
    ys, xs = np.mgrid[0:height, 0:width]
    last_y, last_x = (count - 1) * step[0], (count - 1) * step[1]
    for index in range(count):
        # Content at (y + oy, x + ox) of frame 0, in view from frame 0 to the last.
        rows, columns = ys + index * step[0], xs + index * step[1]
        visible.append((rows >= 0) & (rows <= height - 1) & (columns >= 0) & (columns <= width - 1))
        throughout.append(
            (rows >= max(0, last_y)) & (rows <= height - 1 + min(0, last_y))
            & (columns >= max(0, last_x)) & (columns <= width - 1 + min(0, last_x))
        )  # fmt: skip
    return PaintedPan(frames, ideals, ideals[0], visible, throughout)


def lab_distance(
    image: np.ndarray, reference: np.ndarray, where: np.ndarray | None = None
) -> float:
    """Mean CIE Lab distance between two RGB uint8 images (over ``where``)."""

    def lab(rgb):
        return cv2.cvtColor(rgb.astype(np.float32) / 255, cv2.COLOR_RGB2LAB)

    distance = np.linalg.norm(lab(image) - lab(reference), axis=-1)
    return float(distance.mean() if where is None else distance[where].mean())
