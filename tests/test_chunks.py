"""Chunk planning, joins, and the shot-cut detector, measured on clips with known cuts."""

import cv2
import numpy as np
import pytest
from skimage import data

from diva_numba.run.chunks import Chunk, blend_join, join_weight, plan_chunks
from diva_numba.video.shots import find_cuts


def covered(chunks):
    """Frame -> the chunks holding it."""
    owners = {}
    for chunk in chunks:
        for frame in range(chunk.start, chunk.end):
            owners.setdefault(frame, []).append(chunk)
    return owners


@pytest.mark.parametrize(
    ("start", "end", "cuts", "chunk_frames", "overlap"),
    [(0, 100, [], 24, 6), (5, 61, [20, 21, 40], 10, 3), (0, 7, [], 96, 8), (0, 50, [49], 8, 0)],
)
def test_chunks_cover_the_range_and_never_cross_a_cut(start, end, cuts, chunk_frames, overlap):
    chunks = plan_chunks(start, end, cuts, chunk_frames=chunk_frames, overlap=overlap)
    owners = covered(chunks)
    assert sorted(owners) == list(range(start, end))
    shots = [start, *cuts, end]
    for chunk in chunks:
        assert chunk.frames <= chunk_frames + overlap  # a short tail is merged into the last
        assert not any(chunk.start < cut < chunk.end for cut in cuts)
        assert chunk.lead == (0 if chunk.start in shots else overlap)
    for frame, holders in owners.items():
        assert len(holders) in (1, 2)
        if len(holders) == 2:
            later = holders[1]
            assert later.start <= frame < later.start + later.lead


def test_long_shot_is_split_into_overlapping_chunks():
    assert plan_chunks(0, 30, [], chunk_frames=12, overlap=4) == [
        Chunk(0, 12, 0),
        Chunk(8, 20, 4),
        Chunk(16, 30, 4),
    ]
    with pytest.raises(ValueError):
        plan_chunks(0, 30, [], chunk_frames=4, overlap=4)


def test_join_fades_from_the_earlier_chunk_to_the_later():
    weights = [join_weight(i, 4) for i in range(4)]
    assert weights == [0.2, 0.4, 0.6, 0.8]
    black, white = np.zeros((2, 2, 3), np.uint8), np.full((2, 2, 3), 255, np.uint8)
    assert blend_join(black, white, 0.2).max() == 51 and blend_join(white, white, 0.6).min() == 255


def shot(image, count, *, step, size=(96, 64)):
    """``count`` frames of a window panning over ``image`` by ``step`` = (dx, dy) per frame."""
    width, height = size
    image = cv2.resize(image, (320, 240), interpolation=cv2.INTER_AREA)
    return [image[10 + t * step[1] : 10 + t * step[1] + height,
                  10 + t * step[0] : 10 + t * step[0] + width] for t in range(count)]  # fmt: skip


PHOTOS = [
    data.astronaut(),
    data.coffee(),
    data.chelsea(),
    data.rocket(),
    data.immunohistochemistry(),
]


def test_cut_detector_finds_every_cut_between_photos_and_none_within_shots():
    """Five shots of different photos, slow and fast pans: exactly the four cuts are found."""
    frames, cuts = [], []
    for number, (image, step) in enumerate(
        zip(PHOTOS, [(1, 0), (6, 3), (0, 4), (8, 0), (3, 3)], strict=True)
    ):
        if number:
            cuts.append(len(frames))
        frames += shot(image, 12, step=step)
    assert find_cuts(frames) == cuts


def test_cut_detector_ignores_a_fade_in_brightness_and_camera_shake():
    base = shot(data.astronaut(), 24, step=(2, 1))
    rng = np.random.default_rng(0)
    faded = [np.clip(f.astype(np.float32) * (1 - 0.02 * t), 0, 255).astype(np.uint8)
             for t, f in enumerate(base)]  # fmt: skip
    shaken = [np.roll(f, tuple(rng.integers(-6, 7, 2)), axis=(0, 1)) for f in base]
    assert find_cuts(faded) == [] and find_cuts(shaken) == []
