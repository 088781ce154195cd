"""What happens to a stylised frame before it is written: colour kept, a mask applied.

* :func:`preserve_colour`: the stylised frame's lightness with the original
  frame's colour, in CIE L*a*b* (D65, OpenCV's float conversion): L* from
  the stylised frame, a* and b* from the original, so strokes and texture
  change and the palette does not.
* :class:`Mask`: where the effect applies (white) and where the input passes
  through unchanged (black), from an image or a video of the clip's length,
  with a feathered edge that lies wholly inside the white part, so a pixel
  outside the mask is the input's exactly.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from diva_numba.errors import InputError
from diva_numba.images import load_image, resize


def preserve_colour(stylised: np.ndarray, original: np.ndarray) -> np.ndarray:
    """L* of ``stylised`` with a* b* of ``original``; both RGB uint8 ``(H, W, 3)``.

    Returns
    -------
    uint8 array (H, W, 3)
        Rounded, and clipped where the combination falls outside sRGB.
    """
    if stylised.shape != original.shape:
        raise ValueError(f"frames differ in shape: {stylised.shape} and {original.shape}")
    lab_stylised = _to_lab(stylised)
    lab = _to_lab(original)
    lab[..., 0] = lab_stylised[..., 0]
    rgb = cv2.cvtColor(lab, cv2.COLOR_Lab2RGB)
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)


def _to_lab(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)


class Mask:
    """Where a run stylises: a grey image or a video, white = stylise.

    Parameters
    ----------
    path : path-like
        A PNG/JPEG (one mask for every frame) or a video of the clip's
        length (frame i masks frame i), at the clip's size or shape.
    feather : float
        Width in pixels (at the output size) over which the effect fades in
        from the mask's edge; 0 for a hard edge.

    Attributes
    ----------
    size : (int, int)
        The mask's width and height.
    frame_count : int or None
        A mask video's length; None for an image.

    Raises
    ------
    InputError
        The file cannot be read as an image or a video.
    """

    def __init__(self, path: str | os.PathLike, *, feather: float):
        from diva_numba.video import probe_video

        self.path = Path(path)
        self.feather = float(feather)
        self._still = None
        self.frame_count = None
        if self.path.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"):
            self._still = load_image(self.path)
            self.size = (self._still.shape[1], self._still.shape[0])
        else:
            info = probe_video(self.path)
            self.frame_count = info.frame_count
            self.size = (info.width, info.height)
        self._frames = None
        self._next = None
        self._last = None  # (index, frame): the analogy's input and the output read it

    def check(self, width: int, height: int, frame_count: int) -> None:
        """Refuse a mask that does not fit the clip, before any frame is made.

        Parameters
        ----------
        width, height : int
            The clip's frame size.
        frame_count : int
            The clip's length.

        Raises
        ------
        InputError
            A mask video whose length is not the clip's, or a mask whose
            shape is not the clip's (its size, or any size of the same aspect
            ratio within 1%, which is scaled to the frames).
        """
        if self.frame_count is not None and self.frame_count != frame_count:
            raise InputError(
                f"{self.path}: the mask video has {self.frame_count} frames, the clip "
                f"{frame_count}; frame i of the mask masks frame i of the clip"
            )
        mask_width, mask_height = self.size
        if (mask_width, mask_height) != (width, height) and abs(
            mask_width * height - mask_height * width
        ) > 0.01 * mask_height * width:
            raise InputError(
                f"{self.path}: the mask is {mask_width}x{mask_height}, the clip {width}x{height}; "
                "make it the clip's size (or the same shape)"
            )

    def weight(self, index: int, shape: tuple[int, int]) -> np.ndarray:
        """float32 ``(H, W)`` in [0, 1] for frame ``index``: 0 outside, 1 well inside."""
        rgb = self._still if self._still is not None else self._video_frame(index)
        grey = cv2.cvtColor(resize(rgb, *shape), cv2.COLOR_RGB2GRAY)
        inside = (grey >= 128).astype(np.uint8)
        if self.feather <= 0:
            return inside.astype(np.float32)
        distance = cv2.distanceTransform(inside, cv2.DIST_L2, 5)
        ramp = np.clip(distance / self.feather, 0.0, 1.0)
        return (ramp * ramp * (3.0 - 2.0 * ramp)).astype(np.float32)  # smoothstep

    def apply(self, stylised: np.ndarray, original: np.ndarray, index: int) -> np.ndarray:
        """``stylised`` inside the mask, ``original`` outside (exactly), blended on the edge."""
        weight = self.weight(index, original.shape[:2])[:, :, None]
        mixed = weight * stylised.astype(np.float32) + (1.0 - weight) * original.astype(np.float32)
        out = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
        out[weight[..., 0] == 0] = original[weight[..., 0] == 0]
        return out

    def outside(self, index: int, shape: tuple[int, int]) -> np.ndarray:
        """uint8 ``(H, W)``: 1 where frame ``index`` passes through unstylised."""
        return (self.weight(index, shape) == 0).astype(np.uint8)

    def _video_frame(self, index: int) -> np.ndarray:
        from diva_numba.video import read_frames

        if self._last is not None and self._last[0] == index:
            return self._last[1]
        if self._next != index:
            self._frames = read_frames(self.path, start=index)
        self._next = index + 1
        try:
            _, frame = next(self._frames)
        except StopIteration:
            raise InputError(f"{self.path}: the mask video has no frame {index}") from None
        self._last = (index, frame)
        return frame
