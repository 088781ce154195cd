"""Splitting a clip into chunks that can run independently, and joining them again.

Frames within a shot depend on their predecessors (each is seeded from the one
before it); shots do not. A clip is therefore cut at its shot boundaries
(:func:`find_cuts`), and long shots are cut further into chunks of at most
``chunk_frames`` frames that overlap by ``overlap`` frames (:func:`plan_chunks`).
Every chunk starts afresh (a full analogy of its first frame) and is seeded
along the flow from there; in an overlap the later chunk fades in over the
earlier one (:func:`join_weight`), so the change of seed never shows as a jump.
See docs/DESIGN.md section 3.

The shot detector is our own: a colour histogram of every frame, small and
blurred, compared with the previous frame's by total variation, and a cut
where that distance is both large in absolute terms and large against the
shot's recent motion. (PySceneDetect, the maintained library for this, pulls
in the full ``opencv-python`` build, which cannot be installed beside the
headless OpenCV this project uses.)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import cv2
import numpy as np

#: Histogram bins over hue, saturation and value.
HISTOGRAM_BINS = (16, 4, 4)
#: Long side the frames are compared at.
DETECTION_SIDE = 64


@dataclass(frozen=True)
class CutDetection:
    """How shot cuts are found.

    Attributes
    ----------
    threshold : float
        Smallest histogram distance (total variation, 0..1) that is a cut.
    contrast : float
        A cut must also exceed this many times the median distance of the
        ``window`` frame pairs before it (fast motion raises that median).
    window : int
    """

    threshold: float = 0.35
    contrast: float = 4.0
    window: int = 8


@dataclass(frozen=True)
class Chunk:
    """A range of frames computed by one worker.

    Attributes
    ----------
    start, end : int
        The frames ``[start, end)`` of the clip it computes.
    lead : int
        Its first ``lead`` frames overlap the previous chunk of the same shot
        and are blended with it.
    """

    start: int
    end: int
    lead: int = 0

    @property
    def frames(self) -> int:
        return self.end - self.start


def colour_signature(frame: np.ndarray) -> np.ndarray:
    """Normalised HSV histogram of an RGB uint8 ``(H, W, 3)`` frame, float32 (bins,)."""
    height, width = frame.shape[:2]
    scale = DETECTION_SIDE / max(height, width)
    small = cv2.resize(
        frame, (max(1, round(width * scale)), max(1, round(height * scale))),
        interpolation=cv2.INTER_AREA,
    )  # fmt: skip
    hsv = cv2.cvtColor(small, cv2.COLOR_RGB2HSV)
    histogram = cv2.calcHist([hsv], [0, 1, 2], None, list(HISTOGRAM_BINS), [0, 180, 0, 256, 0, 256])
    histogram = histogram.ravel().astype(np.float32)
    return histogram / max(float(histogram.sum()), 1.0)


def find_cuts(
    frames: Iterable[np.ndarray],
    *,
    detection: CutDetection = CutDetection(),  # noqa: B008
) -> list[int]:
    """Indices (into ``frames``) of the frames that start a new shot, the first excluded.

    Parameters
    ----------
    frames : iterable of uint8 arrays (H, W, 3)
        The frames in order (RGB); read once.
    detection : CutDetection

    Returns
    -------
    list of int
    """
    cuts = []
    previous = None
    recent: list[float] = []
    for index, frame in enumerate(frames):
        signature = colour_signature(frame)
        if previous is not None:
            distance = 0.5 * float(np.abs(signature - previous).sum())
            usual = float(np.median(recent)) if recent else 0.0
            if distance >= detection.threshold and distance >= detection.contrast * usual:
                cuts.append(index)
                recent = []
            else:
                recent = [*recent, distance][-detection.window :]
        previous = signature
    return cuts


def plan_chunks(
    start: int, end: int, cuts: Iterable[int], *, chunk_frames: int, overlap: int
) -> list[Chunk]:
    """Chunks covering ``[start, end)``: split at every cut, long shots into overlapping pieces.

    Parameters
    ----------
    start, end : int
        The frame range.
    cuts : iterable of int
        Frames (clip indices) that start a new shot.
    chunk_frames : int
        Most frames a chunk computes (its overlap included).
    overlap : int
        Frames shared by consecutive chunks of one shot; less than ``chunk_frames``.

    Returns
    -------
    list of Chunk
        In frame order; every frame of the range is in one chunk, or in two
        where they overlap (the later one's ``lead`` frames).
    """
    if not 0 <= overlap < chunk_frames:
        raise ValueError("overlap must be at least 0 and less than chunk_frames")
    bounds = [start, *sorted(c for c in set(cuts) if start < c < end), end]
    chunks = []
    for shot_start, shot_end in zip(bounds, bounds[1:], strict=False):
        chunk_start, lead = shot_start, 0
        while True:
            chunk_end = min(chunk_start + chunk_frames, shot_end)
            # A last piece shorter than the overlap would be all blend: stretch this one.
            if shot_end - chunk_end <= overlap:
                chunk_end = shot_end
            chunks.append(Chunk(chunk_start, chunk_end, lead))
            if chunk_end == shot_end:
                break
            chunk_start, lead = chunk_end - overlap, overlap
    return chunks


def join_weight(position: int, lead: int) -> float:
    """Weight of the later chunk at the ``position``-th frame (0-based) of a ``lead``-frame overlap.

    Rises linearly from just above 0 to just below 1, so neither chunk
    switches on or off at once.
    """
    return (position + 1) / (lead + 1)


def blend_join(earlier: np.ndarray, later: np.ndarray, weight: float) -> np.ndarray:
    """``(1 - weight) * earlier + weight * later`` of two uint8 frames, rounded."""
    mixed = (1.0 - weight) * earlier.astype(np.float32) + weight * later.astype(np.float32)
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
