"""The tiny synthetic clips of the video tests (tests/test_video*.py), and their checks."""

from __future__ import annotations

import os

import numpy as np
from clips import NTSC, pan_frames, random_origin

from diva_numba.video import VideoWriter

WIDTH, HEIGHT, COUNT = 64, 48, 15
#: Mean absolute difference (0..255) that H.264 at crf 18 stays under on these textured
#: clips (mostly from halving the colour resolution); a frame off by one pan step is
#: off by 20 or more.
CODEC_TOLERANCE = 8.0


def panning_frames(rng) -> np.ndarray:
    """``COUNT`` frames of ``HEIGHT x WIDTH`` panning a photo by a random step."""
    origin = random_origin(rng, width=WIDTH, height=HEIGHT, count=COUNT)
    step = tuple(int(s) for s in rng.integers(-3, 4, size=2))
    return pan_frames(COUNT, width=WIDTH, height=HEIGHT, step=step, origin=origin)


def write_video(path, frames, **options):
    """``frames`` written to ``path`` (``fps`` NTSC unless given); the closed writer."""
    with VideoWriter(
        path, width=frames.shape[2], height=frames.shape[1], fps=options.pop("fps", NTSC), **options
    ) as writer:
        for frame in frames:
            writer.write(frame)
    return writer


def mean_abs(a, b) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


def files_in(directory) -> list[str]:
    return sorted(os.listdir(directory))
