"""PatchMatch, CPU twin: invariants, the refine mask, and search quality on a real photo."""

import naive
import numba
import numpy as np
import pytest
import skimage.data
import skimage.filters
import skimage.transform
from inputs import feature_pairs, random_field, unit_features

from diva_numba.kernels.patch_distance import patch_distance
from diva_numba.kernels.patchmatch import (
    PatchMatchParams,
    identity_field,
    iteration_key,
    mix32,
    patchmatch,
)

SHAPES = [
    # channels, (Ha, Wa), (Hb, Wb)
    (6, (12, 15), (10, 9)),
    (3, (1, 1), (1, 1)),
    (4, (5, 2), (1, 7)),
    (5, (3, 4), (16, 13)),
]


# --------------------------------------------------------------------------- invariants


@pytest.mark.parametrize("patch_size", [3, 5])
@pytest.mark.parametrize(("channels", "source_shape", "target_shape"), SHAPES)
def test_result_is_a_valid_improvement_of_the_start(
    rng, channels, source_shape, target_shape, patch_size
):
    pairs = feature_pairs(rng, channels, source_shape, target_shape)
    init = random_field(rng, source_shape, target_shape, spill=3)
    params = PatchMatchParams(patch_size=patch_size, iterations=3, search_radius=5, seed=7)

    field, distance = patchmatch(*pairs, init_field=init, params=params)

    assert field.dtype == np.int32 and field.shape == (*source_shape, 2)
    assert distance.dtype == np.float32 and distance.shape == source_shape
    assert (field >= 0).all()
    assert (field[..., 0] < target_shape[0]).all() and (field[..., 1] < target_shape[1]).all()
    # The returned distance is the distance of the returned field ...
    np.testing.assert_allclose(
        distance, patch_distance(*pairs, field, patch_size=patch_size), rtol=0, atol=1e-6
    )
    # ... and no pixel ends worse than where it started.
    start = patch_distance(*pairs, naive.clamp_field(init, target_shape), patch_size=patch_size)
    assert (distance <= start + 1e-6).all()


def test_zero_iterations_return_the_clamped_start(rng):
    pairs = feature_pairs(rng, 4, (9, 11), (6, 14))
    init = random_field(rng, (9, 11), (6, 14), spill=4)
    params = PatchMatchParams(iterations=0)

    field, distance = patchmatch(*pairs, init_field=init, params=params)
    default_field, _ = patchmatch(*pairs, params=params)

    np.testing.assert_array_equal(field, naive.clamp_field(init, (6, 14)))
    np.testing.assert_allclose(distance, patch_distance(*pairs, field, patch_size=3), atol=1e-6)
    ys, xs = np.indices((9, 11))
    np.testing.assert_array_equal(default_field[..., 0], np.minimum(ys, 5))
    np.testing.assert_array_equal(default_field[..., 1], xs)
    np.testing.assert_array_equal(default_field, identity_field((9, 11), (6, 14)))


def test_same_seed_same_result_other_seed_other_result(rng):
    pairs = feature_pairs(rng, 5, (14, 13), (12, 16))
    seed = int(rng.integers(2**32))
    params = PatchMatchParams(iterations=2, search_radius=8, seed=seed)

    first = patchmatch(*pairs, params=params)
    again = patchmatch(*pairs, params=params)
    other = patchmatch(
        *pairs, params=PatchMatchParams(iterations=2, search_radius=8, seed=seed + 1)
    )

    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert (first[0] != other[0]).any()


def test_result_does_not_depend_on_the_thread_count(rng):
    # Double-buffered passes and hashed random numbers: no pixel sees another's
    # update within a pass, so the schedule cannot change the answer.
    pairs = feature_pairs(rng, 4, (17, 12), (9, 15))
    params = PatchMatchParams(iterations=2, search_radius=6, seed=int(rng.integers(2**32)))
    threads = numba.get_num_threads()
    parallel = patchmatch(*pairs, params=params)
    numba.set_num_threads(1)
    try:
        serial = patchmatch(*pairs, params=params)
    finally:
        numba.set_num_threads(threads)
    np.testing.assert_array_equal(parallel[0], serial[0])
    np.testing.assert_array_equal(parallel[1], serial[1])


def test_refine_mask_freezes_unsearched_pixels(rng):
    source_shape, target_shape = (13, 10), (11, 12)
    pairs = feature_pairs(rng, 6, source_shape, target_shape)
    init = random_field(rng, source_shape, target_shape, spill=2)
    mask = (rng.random(source_shape) < 0.5).astype(np.uint8)
    params = PatchMatchParams(iterations=3, search_radius=6, seed=int(rng.integers(1000)))

    field, distance = patchmatch(*pairs, init_field=init, params=params, refine_mask=mask)
    free_field, _ = patchmatch(*pairs, init_field=init, params=params)

    frozen = mask == 0
    start = naive.clamp_field(init, target_shape)
    np.testing.assert_array_equal(field[frozen], start[frozen])
    # Searched pixels do move (random features: the start is almost never the best).
    assert (field[~frozen] != start[~frozen]).any(axis=-1).mean() > 0.5
    assert (free_field[frozen] != field[frozen]).any()
    bool_field, _ = patchmatch(*pairs, init_field=init, params=params, refine_mask=mask == 1)
    np.testing.assert_array_equal(bool_field, field)

    # Left unscored on request: a frozen pixel's own score is never compared.
    lean_field, lean_distance = patchmatch(
        *pairs, init_field=init, params=params, refine_mask=mask, score_frozen=False
    )
    np.testing.assert_array_equal(lean_field, field)
    np.testing.assert_array_equal(lean_distance[~frozen], distance[~frozen])
    assert np.isposinf(lean_distance[frozen]).all() and np.isfinite(distance).all()


def test_frozen_pixels_still_propagate_their_matches(rng):
    # B contains A shifted, so every pixel has one exact match. Only a sparse grid
    # of frozen "anchors" starts right; propagation alone (no random search) must
    # carry their matches to everything else.
    channels, height, width = 8, 24, 26
    shift_y, shift_x = (int(v) for v in rng.integers(-5, 6, 2))
    scene = unit_features(rng, channels, height + 12, width + 12)
    a = scene[:, 6 : 6 + height, 6 : 6 + width]
    b = scene[:, 6 + shift_y : 6 + shift_y + height, 6 + shift_x : 6 + shift_x + width]
    ys, xs = np.indices((height, width))
    truth = np.stack([ys - shift_y, xs - shift_x], axis=-1).astype(np.int32)
    inside = (truth[..., 0] >= 0) & (truth[..., 0] < height)
    inside &= (truth[..., 1] >= 0) & (truth[..., 1] < width)
    anchors = inside & (ys % 6 == 3) & (xs % 6 == 3)
    init = np.where(anchors[..., None], truth, random_field(rng, (height, width), (height, width)))
    params = PatchMatchParams(iterations=2, search_radius=0)

    field, _ = patchmatch(
        a, a, b, b, init_field=init.astype(np.int32), params=params, refine_mask=~anchors
    )

    found = (field == truth).all(axis=-1)
    assert found[inside].mean() > 0.98
    frozen_only, _ = patchmatch(
        a, a, b, b, init_field=init.astype(np.int32), params=PatchMatchParams(iterations=0)
    )
    assert (frozen_only == truth).all(axis=-1)[inside].mean() < 0.2


# --------------------------------------------------------------------------- quality on a photo


def photo(size):
    """skimage's coffee photo, centre square, RGB float32 in 0..1, size x size."""
    image = skimage.data.coffee().astype(np.float32) / 255
    height, width = image.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = image[top : top + side, left : left + side]
    return skimage.transform.resize(square, (size, size), anti_aliasing=True).astype(np.float32)


def mirror_symmetric_descriptor(image, reach):
    """Per-pixel feature vectors from the (2 reach + 1)^2 neighbourhood of an (H, W, K) image.

    For each row offset dy and column distance |dx| the neighbourhood values at
    (dy, dx) and (dy, -dx) are summed, so the descriptor of a mirrored image is
    the mirror of the descriptor; the mean over the neighbourhood is removed, so
    a brightness offset cancels, and the L2 normalisation cancels a contrast gain.
    Returns float32 (C, H, W), C = (2 reach + 1)(reach + 1) K.
    """
    height, width = image.shape[:2]
    padded = np.pad(image, ((reach, reach), (reach, reach), (0, 0)), mode="reflect")

    def at(dy, dx):
        return padded[reach + dy : reach + dy + height, reach + dx : reach + dx + width]

    taps = [at(dy, dx) + at(dy, -dx) for dy in range(-reach, reach + 1) for dx in range(reach + 1)]
    stacked = np.stack(taps)
    stacked -= stacked.mean(axis=0, keepdims=True)
    features = stacked.transpose(0, 3, 1, 2).reshape(-1, height, width)
    norms = np.linalg.norm(features, axis=0, keepdims=True) + 1e-6
    return (features / norms).astype(np.float32)


def descriptor_pair(image):
    """Two views of one image: descriptors of the image (A) and of a blurred copy (A')."""
    blurred = skimage.filters.gaussian(image, sigma=1.0, channel_axis=-1).astype(np.float32)
    return mirror_symmetric_descriptor(image, 1), mirror_symmetric_descriptor(blurred, 1)


def quality_params(rng, **changes):
    base = {"patch_size": 3, "iterations": 10, "search_radius": 32}
    return PatchMatchParams(seed=int(rng.integers(2**31)), **(base | changes))


@pytest.mark.parametrize("change", ["shift", "colour"])
@pytest.mark.parametrize("patch_size", [3, 5])
def test_recovers_a_known_shift(rng, change, patch_size):
    size, margin = 64, 16
    scene = photo(size + 2 * margin)
    shift_y, shift_x = (
        int(v) * int(s) for v, s in zip(rng.integers(4, 13, 2), rng.choice([-1, 1], 2), strict=True)
    )
    if change == "colour":
        gain = rng.uniform(0.5, 0.8, 3).astype(np.float32)
        offset = rng.uniform(0.1, 0.3, 3).astype(np.float32)
        target_scene = scene * gain + offset
    else:
        target_scene = scene
    # Features are computed on the whole scene and then cropped, so the true match
    # of every pixel has identical features (up to the colour change).
    a, a_prime = (
        f[:, margin : margin + size, margin : margin + size] for f in descriptor_pair(scene)
    )
    b, b_prime = (
        f[:, margin + shift_y : margin + shift_y + size, margin + shift_x : margin + shift_x + size]
        for f in descriptor_pair(target_scene)
    )
    ys, xs = np.indices((size, size))
    truth = np.stack([ys - shift_y, xs - shift_x], axis=-1)
    edge = patch_size // 2
    judged = (ys >= edge) & (ys < size - edge) & (xs >= edge) & (xs < size - edge)
    judged &= (truth[..., 0] >= edge) & (truth[..., 0] < size - edge)
    judged &= (truth[..., 1] >= edge) & (truth[..., 1] < size - edge)

    full, _ = patchmatch(a, a_prime, b, b_prime, params=quality_params(rng, patch_size=patch_size))
    search_only, _ = patchmatch(
        a, a_prime, b, b_prime, params=quality_params(rng, patch_size=patch_size, propagate=False)
    )

    full_rate = (full == truth).all(axis=-1)[judged].mean()
    search_only_rate = (search_only == truth).all(axis=-1)[judged].mean()
    assert full_rate >= 0.95
    assert search_only_rate < 0.6 and search_only_rate < full_rate - 0.3


def test_mirror_image_reaches_the_optimum_far_more_often_with_propagation(rng):
    # A mirror image has no exact answer to check against: patches are compared
    # unmirrored, so the mirror position is the best match of only ~20% of the
    # pixels, and the optimal field is incoherent (propagation assumes locally
    # translated matches). The search is judged against brute force instead:
    # with propagation ~75% of the pixels reach the optimum, without ~20%.
    size = 40
    image = photo(80)[16 : 16 + size, 16 : 16 + size]
    a, a_prime = descriptor_pair(image)
    b, b_prime = descriptor_pair(np.ascontiguousarray(image[:, ::-1]))
    best = naive.best_patch_distance(a, a_prime, b, b_prime, 3)

    _, full = patchmatch(a, a_prime, b, b_prime, params=quality_params(rng, search_radius=20))
    _, search_only = patchmatch(
        a, a_prime, b, b_prime, params=quality_params(rng, search_radius=20, propagate=False)
    )

    full_rate = (full <= best + 1e-6).mean()
    search_only_rate = (search_only <= best + 1e-6).mean()
    assert full_rate >= 0.6
    assert search_only_rate < full_rate - 0.3


# --------------------------------------------------------------------------- parameters and hash


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"patch_size": 4}, "odd"),
        ({"iterations": -1}, "iterations"),
        ({"search_radius": -2}, "search_radius"),
        ({"jumps": (4, 0)}, "jumps"),
    ],
)
def test_params_reject_bad_values(changes, message):
    with pytest.raises(ValueError, match=message):
        PatchMatchParams(**changes)


def test_rejects_bad_arrays(rng):
    pairs = feature_pairs(rng, 3, (5, 6), (4, 4))
    with pytest.raises(ValueError, match="init_field"):
        patchmatch(*pairs, init_field=np.zeros((6, 5, 2), np.int32))
    with pytest.raises(ValueError, match="refine_mask"):
        patchmatch(*pairs, refine_mask=np.ones((5, 6), np.int32))
    with pytest.raises(TypeError, match="PatchMatchParams"):
        patchmatch(*pairs, params={"iterations": 3})


def test_hash_draws_are_uniform(rng):
    # 60000 consecutive counters of one random stream, reduced to 12 bins.
    key = int(iteration_key(int(rng.integers(2**32)), int(rng.integers(100))))
    draws = np.array([int(mix32(key ^ counter)) % 12 for counter in range(60_000)])
    counts = np.bincount(draws, minlength=12)
    chi_square = ((counts - 5000) ** 2 / 5000).sum()
    assert chi_square < 45  # 11 degrees of freedom: p < 1e-5
