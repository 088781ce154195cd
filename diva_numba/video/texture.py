"""How much of the style image's texture a stylised video keeps: texture retention.

The texture retention of an output video O against its style image S is

    mean over frames t of G(O_t)  /  G(S at the output's scale)

where ``G(I)`` is the mean gradient magnitude of the image's grey level
(BT.601 luma, 0..255), ``sqrt(gx^2 + gy^2)`` with central differences
``gx = (I(x+1) - I(x-1)) / 2``, over the pixels whose four neighbours exist. *At
the output's scale*: the style image is shrunk (area averaging) so that its
long side is the output's, and never enlarged, as the synthesis uses it (its
pixels are copied at the resolution the output resolves;
:func:`diva_numba.run.planning.plan_transfer`). 1 means the output's strokes
are as strong as the painting's; a synthesis that averages the painting's
patches into each other scores lower (a smeared wash near 0.5). Above 1 the
output has more edges than the painting (a photo's detail showing through).
See docs/DESIGN.md section 3.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

import cv2
import numpy as np

from diva_numba.errors import InputError
from diva_numba.images import load_image
from diva_numba.video import read_frames


@dataclass(frozen=True)
class TextureRetention:
    """Texture retention of a video against its style image.

    Attributes
    ----------
    frames : numpy.ndarray
        float64 ``(T,)``: mean gradient magnitude of each output frame.
    style : float
        Mean gradient magnitude of the style image at the output's scale.
    style_shape : (int, int)
        The style image's (H, W) at that scale.
    """

    frames: np.ndarray
    style: float
    style_shape: tuple[int, int]

    @property
    def retention(self) -> float:
        """Mean over frames of their gradient over the style's (NaN for a flat style)."""
        if self.style <= 0 or not self.frames.size:
            return float("nan")
        return float(self.frames.mean() / self.style)


def mean_gradient(image: np.ndarray) -> float:
    """Mean gradient magnitude of an RGB uint8 ``(H, W, 3)`` image's luma (0..255 a pixel).

    Central differences over the interior pixels; 0 for an image under 3 x 3.
    """
    grey = _luma(image)
    if min(grey.shape) < 3:
        return 0.0
    gx = (grey[1:-1, 2:] - grey[1:-1, :-2]) / 2
    gy = (grey[2:, 1:-1] - grey[:-2, 1:-1]) / 2
    return float(np.sqrt(gx * gx + gy * gy).mean())


def style_at_scale(style: np.ndarray, output_shape: tuple[int, int]) -> np.ndarray:
    """The style image shrunk so its long side is at most the output's (never enlarged)."""
    long_side = max(style.shape[:2])
    target = max(output_shape[:2])
    if long_side <= target:
        return style
    scale = target / long_side
    size = (max(1, round(style.shape[1] * scale)), max(1, round(style.shape[0] * scale)))
    return cv2.resize(style, size, interpolation=cv2.INTER_AREA)


def texture_retention(frames: Iterable[np.ndarray], style: np.ndarray) -> TextureRetention:
    """Texture retention of ``frames`` (uint8 ``(H, W, 3)`` each) against ``style``.

    The frames are consumed one at a time; the style is scaled to the first
    frame's size (:func:`style_at_scale`).

    Raises
    ------
    ValueError
        No frames, or frames that are not RGB uint8.
    """
    values, scaled = [], None
    for frame in frames:
        frame = np.asarray(frame)
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"frames must be uint8 (H, W, 3), got {frame.dtype} {frame.shape}")
        if scaled is None:
            scaled = style_at_scale(style, frame.shape[:2])
        values.append(mean_gradient(frame))
    if scaled is None:
        raise ValueError("texture retention needs at least one frame")
    return TextureRetention(np.array(values), mean_gradient(scaled), scaled.shape[:2])


def video_texture_retention(
    output_path: str | os.PathLike, style_path: str | os.PathLike, *, progress=None
) -> TextureRetention:
    """:func:`texture_retention` of a video file against a style image file.

    Raises
    ------
    InputError
        Unreadable files.
    """
    style = load_image(style_path)
    frames = (frame for _, frame in read_frames(output_path))
    if progress is not None:
        frames = progress(frames)
    try:
        return texture_retention(frames, style)
    except ValueError as error:
        raise InputError(f"{output_path}: {error}") from None


def _luma(image: np.ndarray) -> np.ndarray:
    rgb = np.asarray(image, dtype=np.float64)
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


__all__ = [
    "TextureRetention",
    "mean_gradient",
    "style_at_scale",
    "texture_retention",
    "video_texture_retention",
]
