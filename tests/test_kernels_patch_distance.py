"""Patch distance, CPU twin, against the slow NumPy reference of naive.py."""

import naive
import numpy as np
import pytest
from inputs import feature_pairs, identity, unit_features

from diva_numba.kernels.patch_distance import (
    DistanceCost,
    cost,
    patch_distance,
    patch_distance_cpu,
)


def border_heavy_field(rng, source_shape, target_shape):
    """Matches drawn half from B's border rows/columns and corners, half anywhere in B."""
    target_height, target_width = target_shape
    ys = rng.integers(0, target_height, source_shape)
    xs = rng.integers(0, target_width, source_shape)
    on_edge = rng.random(source_shape) < 0.5
    ys = np.where(on_edge & (rng.random(source_shape) < 0.5), (target_height - 1) * (ys % 2), ys)
    xs = np.where(on_edge & (rng.random(source_shape) < 0.5), (target_width - 1) * (xs % 2), xs)
    return np.stack([ys, xs], axis=-1).astype(np.int32)


SHAPES = [
    # channels, (Ha, Wa), (Hb, Wb)
    (5, (9, 11), (7, 13)),
    (3, (1, 1), (1, 1)),
    (4, (2, 3), (3, 1)),
    (8, (13, 6), (5, 5)),
    (16, (3, 17), (12, 2)),
    (1, (6, 6), (2, 9)),
]


@pytest.mark.parametrize("patch_size", [1, 3, 5])
@pytest.mark.parametrize(("channels", "source_shape", "target_shape"), SHAPES)
def test_matches_reference(rng, channels, source_shape, target_shape, patch_size):
    a, a_prime, b, b_prime = feature_pairs(rng, channels, source_shape, target_shape)
    field = border_heavy_field(rng, source_shape, target_shape)

    got = patch_distance(a, a_prime, b, b_prime, field, patch_size=patch_size)

    assert isinstance(got, np.ndarray)
    assert got.dtype == np.float32
    assert got.shape == source_shape
    expected = naive.patch_distance(a, a_prime, b, b_prime, field, patch_size)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=2e-6)


def test_fields_outside_target_are_clamped(rng):
    a, a_prime, b, b_prime = feature_pairs(rng, 6, (8, 7), (5, 9))
    field = rng.integers(-20, 20, (8, 7, 2)).astype(np.int32)
    clamped = naive.clamp_field(field, (5, 9))

    got = patch_distance(a, a_prime, b, b_prime, field, patch_size=3)

    np.testing.assert_array_equal(
        got, patch_distance(a, a_prime, b, b_prime, clamped, patch_size=3)
    )


def test_identical_pairs_at_identity_score_minus_two(rng):
    # Unit vectors against themselves: both cosines are 1 at every valid offset.
    a, a_prime = (unit_features(rng, 7, 10, 12) for _ in range(2))

    got = patch_distance(a, a_prime, a, a_prime, identity((10, 12)), patch_size=5)

    np.testing.assert_allclose(got, -2.0, atol=1e-5)


def test_accepts_non_contiguous_inputs(rng):
    big = unit_features(rng, 4, 12, 12)
    a, a_prime, b, b_prime = big[:, :9, :8], big[:, 3:, 4:], big[:, ::2], big[:, 1::2]
    field = border_heavy_field(rng, (9, 8), (6, 12))
    field = np.asfortranarray(field)

    got = patch_distance_cpu(a, a_prime, b, b_prime, field, patch_size=3)

    expected = naive.patch_distance(a, a_prime, b, b_prime, field, 3)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"a": np.zeros((4, 5, 6), np.float64)}, "float32"),
        ({"a_prime": np.zeros((4, 5, 7), np.float32)}, "a_prime"),
        (
            {"b": np.zeros((3, 6, 6), np.float32), "b_prime": np.zeros((3, 6, 6), np.float32)},
            "channels",
        ),
        ({"b_prime": np.zeros((4, 6, 7), np.float32)}, "b_prime"),
        ({"field": np.zeros((5, 6, 2), np.int64)}, "int32"),
        ({"field": np.zeros((6, 5, 2), np.int32)}, "field"),
        ({"patch_size": 4}, "odd"),
        ({"patch_size": 0}, "odd"),
    ],
)
def test_rejects_bad_inputs(change, message):
    args = {
        "a": np.zeros((4, 5, 6), np.float32),
        "a_prime": np.zeros((4, 5, 6), np.float32),
        "b": np.zeros((4, 6, 6), np.float32),
        "b_prime": np.zeros((4, 6, 6), np.float32),
        "field": np.zeros((5, 6, 2), np.int32),
        "patch_size": 3,
    } | change
    patch_size = args.pop("patch_size")
    with pytest.raises(ValueError, match=message):
        patch_distance(**args, patch_size=patch_size)


def test_cost_counts_work_and_traffic():
    got = cost(source_shape=(64, 10, 20), target_shape=(64, 30, 40), patch_size=5)
    # 200 pixels x 25 offsets x 64 channels x 2 pairs x (multiply + add)
    assert got == DistanceCost(
        flops=200 * 25 * 64 * 2 * 2,
        gathered_bytes=200 * (2 * 2 * 25 * 64 * 4 + 8 + 4),
        compulsory_bytes=2 * 64 * (200 + 1200) * 4 + 200 * (8 + 4),
    )
