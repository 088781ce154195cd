"""Splitting a clip into chunks that can run independently, and joining them again.

Frames within a shot depend on their predecessors (each is seeded from the one
before it); shots do not. A clip is therefore cut at its shot boundaries
(:func:`~diva_numba.video.shots.find_cuts`), and long shots are cut further into
chunks of at most ``chunk_frames`` frames that overlap by ``overlap`` frames
(:func:`plan_chunks`).
Every chunk starts afresh (a full analogy of its first frame) and is seeded
along the flow from there; in an overlap the later chunk fades in over the
earlier one (:func:`join_weight`), so the change of seed never shows as a jump.
See docs/DESIGN.md section 3.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np


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
