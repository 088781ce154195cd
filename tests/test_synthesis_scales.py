"""A synthesis scale's guided search: over the whole scale, or over boxes around the searched."""

import cv2
import numpy as np
import pytest

from diva_numba import resolve_device
from diva_numba.kernels.patch_distance import patch_distance
from diva_numba.kernels.patchmatch import PatchMatchParams
from diva_numba.network.regions import marked_boxes
from diva_numba.synthesis import scales
from diva_numba.synthesis.pyramid import SynthesisParams
from diva_numba.synthesis.scales import ExemplarCache, ScaleImages, search_scale

CPU = resolve_device("cpu")
SHAPE = (64, 96)


def textured(rng, height, width):
    noise = rng.random((height // 2 + 2, width // 2 + 2, 3)).astype(np.float32)
    return np.clip(cv2.resize(noise, (width, height)) * 255, 0, 255).astype(np.uint8)


def scale(rng):
    """A scale whose exemplar is the frame moved by (3, -2): every pixel has an exact match."""
    exemplar = textured(rng, SHAPE[0] + 8, SHAPE[1] + 8)
    frame = exemplar[3 : 3 + SHAPE[0], 6 : 6 + SHAPE[1]].copy()
    cache = ExemplarCache()
    images = ScaleImages.make(frame, exemplar, exemplar, None, SHAPE, exemplar.shape[:2], frame,
                              CPU, cache, searched=None)  # fmt: skip
    ys, xs = np.indices(SHAPE)
    start = np.stack([ys + 3, xs + 6], axis=-1).astype(np.int32)
    start += rng.integers(-3, 4, start.shape).astype(np.int32)  # off by a few pixels
    inside = np.clip(start, 0, np.array(exemplar.shape[:2]) - 1).astype(np.int32)
    return images, inside, cache


def two_blobs():
    """Two searched blobs, each inside one 32-pixel tile, far apart."""
    searched = np.zeros(SHAPE, np.uint8)
    searched[8:14, 9:16] = 1
    searched[40:47, 70:78] = 1
    return searched


def search(images, start, cache, searched, params):
    prior = start.astype(np.float32)
    return search_scale(images, start.copy(), prior, searched=searched, params=SynthesisParams(),
                        search=params, cache=cache)  # fmt: skip


def test_boxes_search_what_the_whole_scale_would(rng, monkeypatch):
    images, start, cache = scale(rng)
    searched = two_blobs()
    # Propagation alone (the random search draws by position within the box).
    params = PatchMatchParams(patch_size=3, iterations=3, search_radius=0, jumps=(2, 1))
    assert len(marked_boxes(searched, tile=scales.SEARCH_TILE)) == 2

    boxed = search(images, start, cache, searched, params)
    monkeypatch.setattr(scales, "MAX_BOX_SHARE", 0.0)  # the whole scale, masked
    whole = search(images, start, cache, searched, params)

    np.testing.assert_array_equal(boxed, whole)
    frozen = searched == 0
    np.testing.assert_array_equal(boxed[frozen], start[frozen])
    assert (boxed[~frozen] != start[~frozen]).any()


@pytest.mark.parametrize("share", [0.0, 1.0])
def test_a_searched_pixel_only_gets_better(rng, monkeypatch, share):
    images, start, cache = scale(rng)
    searched = two_blobs()
    monkeypatch.setattr(scales, "MAX_BOX_SHARE", share)
    params = PatchMatchParams(patch_size=3, iterations=2, search_radius=4, jumps=(2, 1), seed=5)

    found = search(images, start, cache, searched, params)

    frozen = searched == 0
    np.testing.assert_array_equal(found[frozen], start[frozen])
    truth = np.stack(np.indices(SHAPE), axis=-1) + (3, 6)
    before = np.abs(start - truth).sum(axis=-1)[~frozen]
    after = np.abs(found - truth).sum(axis=-1)[~frozen]
    assert after.mean() < 0.5 * before.mean()
    source = images.source_guides(found, 3, SynthesisParams(), prior=start.astype(np.float32))
    target = images.target_guides(SynthesisParams(), pull=True, cache=cache)
    scores_found = patch_distance(*source, *target, found, patch_size=3)
    scores_start = patch_distance(*source, *target, start, patch_size=3)
    assert (scores_found[~frozen] <= scores_start[~frozen] + 1e-6).all()


def test_images_are_converted_where_read(rng):
    images, _, _ = scale(rng)
    whole = images.map("structure_guide")
    part = images.map("structure_guide", (5, 20, 7, 30))
    assert whole.shape == (3, *SHAPE) and whole.dtype == np.float32
    assert 0.0 <= whole.min() and whole.max() <= 1.0
    np.testing.assert_array_equal(part, whole[:, 5:20, 7:30])
