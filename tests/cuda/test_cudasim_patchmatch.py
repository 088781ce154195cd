"""CUDA kernels of patch distance and PatchMatch vs their CPU twins.

Runs under Numba's CUDA simulator (or a real GPU with ``DIVA_TEST_GPU=1``) on tiny
inputs, with blocks shrunk so that every launch spans several of them. Features
are small multiples of 1/8: every product and sum is then exact in float32, so
the targets must agree bitwise whatever order they add in, and PatchMatch, whose
passes are race-free and whose random numbers are a hash, must return the very
same field on both.
"""

import numpy as np
import pytest
from device_checks import assert_on_device
from inputs import feature_pairs, random_field
from numba import cuda

from diva_numba.gpu.device import to_host
from diva_numba.kernels import patch_distance, patchmatch

pytestmark = pytest.mark.cudasim


def dyadic_features(rng, channels, height, width):
    """Float32 (C, H, W) with values k / 8, |k| <= 8: exact float32 arithmetic."""
    return (rng.integers(-8, 9, (channels, height, width)) / 8).astype(np.float32)


def dyadic_pairs(rng, channels, source_shape, target_shape):
    return feature_pairs(rng, channels, source_shape, target_shape, features=dyadic_features)


@pytest.mark.parametrize("patch_size", [3, 5])
@pytest.mark.parametrize(
    ("source_shape", "target_shape"), [((7, 9), (6, 8)), ((1, 3), (2, 1)), ((5, 2), (3, 6))]
)
def test_patch_distance_matches_cpu(rng, source_shape, target_shape, patch_size):
    pairs = dyadic_pairs(rng, 4, source_shape, target_shape)
    field = random_field(rng, source_shape, target_shape, spill=2)

    result = patch_distance.patch_distance(
        *(cuda.to_device(m) for m in pairs), field, patch_size=patch_size
    )

    assert_on_device(result)
    expected = patch_distance.patch_distance_cpu(*pairs, field, patch_size=patch_size)
    np.testing.assert_array_equal(to_host(result), expected)


def test_patch_distance_of_unit_features_is_close(rng):
    pairs = feature_pairs(rng, 6, (5, 7), (6, 4))
    field = random_field(rng, (5, 7), (6, 4))

    # The maps on the device, the field on the host (copied over by the call).
    result = patch_distance.patch_distance_cuda(
        *(cuda.to_device(m) for m in pairs), field, patch_size=3
    )

    expected = patch_distance.patch_distance_cpu(*pairs, field, patch_size=3)
    np.testing.assert_allclose(to_host(result), expected, rtol=1e-5, atol=1e-6)


def test_patchmatch_matches_cpu(rng):
    pairs = dyadic_pairs(rng, 4, (7, 9), (6, 8))
    params = patchmatch.PatchMatchParams(
        iterations=2, search_radius=4, seed=int(rng.integers(2**32)), jumps=(4, 2, 1)
    )

    field, distance = patchmatch.patchmatch(*(cuda.to_device(m) for m in pairs), params=params)

    assert_on_device(field)
    assert_on_device(distance)
    expected_field, expected_distance = patchmatch.patchmatch_cpu(*pairs, params=params)
    np.testing.assert_array_equal(to_host(field), expected_field)
    np.testing.assert_array_equal(to_host(distance), expected_distance)


@pytest.mark.parametrize("score_frozen", [True, False])
def test_patchmatch_with_start_and_mask_matches_cpu(rng, score_frozen):
    pairs = dyadic_pairs(rng, 3, (6, 7), (8, 5))
    init = random_field(rng, (6, 7), (8, 5), spill=3)
    mask = rng.random((6, 7)) < 0.6
    params = patchmatch.PatchMatchParams(
        patch_size=5, iterations=1, search_radius=6, seed=int(rng.integers(2**32)), jumps=(2, 1)
    )

    field, distance = patchmatch.patchmatch_cuda(
        *(cuda.to_device(m) for m in pairs),
        init_field=init,
        refine_mask=mask,
        params=params,
        score_frozen=score_frozen,
    )

    expected_field, expected_distance = patchmatch.patchmatch_cpu(
        *pairs, init_field=init, refine_mask=mask, params=params, score_frozen=score_frozen
    )
    np.testing.assert_array_equal(to_host(field), expected_field)
    np.testing.assert_array_equal(to_host(distance), expected_distance)
