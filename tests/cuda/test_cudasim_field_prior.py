"""CUDA kernels of the field priors vs their CPU twins.

Runs under Numba's CUDA simulator (or a real GPU with ``DIVA_TEST_GPU=1``) on tiny
inputs, with blocks shrunk so that every launch spans several of them. Distances of
dyadic features (k / 8) are exact in float32, so match distinctiveness agrees
bitwise; the recursive filter's ``expf`` and fused multiply-adds differ by ulps, so
the smoothing is compared to float32 rounding; rounding positions is exact.
"""

import numpy as np
import pytest
from device_checks import FLOAT_TOLERANCE, assert_on_device
from inputs import feature_pairs, identity, random_field
from numba import cuda

from diva_numba.gpu.device import to_host
from diva_numba.kernels import field_prior, field_smoothing

pytestmark = pytest.mark.cudasim


def dyadic_features(rng, channels, height, width):
    """Float32 (C, H, W) with values k / 8, |k| <= 8: exact float32 arithmetic."""
    return (rng.integers(-8, 9, (channels, height, width)) / 8).astype(np.float32)


@pytest.mark.parametrize(
    ("source_shape", "target_shape", "patch_size", "step"),
    [((5, 7), (6, 5), 3, 1), ((3, 2), (1, 4), 5, 2), ((4, 3), (1, 1), 3, 1)],
)
def test_distinctiveness_matches_cpu(rng, source_shape, target_shape, patch_size, step):
    pairs = feature_pairs(rng, 3, source_shape, target_shape, features=dyadic_features)
    field = random_field(rng, source_shape, target_shape, spill=2)
    shape_args = {"patch_size": patch_size, "step": step}

    # The maps on the device, the field on the host (copied over by the call).
    result = field_prior.match_distinctiveness(
        *(cuda.to_device(m) for m in pairs), field, **shape_args
    )

    assert_on_device(result)
    expected = field_prior.match_distinctiveness_cpu(*pairs, field, **shape_args)
    np.testing.assert_array_equal(to_host(result), expected)


@pytest.mark.parametrize("shape", [(6, 9), (1, 5), (7, 1)])
def test_recursive_filter_matches_cpu(rng, shape):
    values = rng.standard_normal((3, *shape)).astype(np.float32)
    guide = rng.random((2, *shape)).astype(np.float32)
    settings = {"sigma_space": 3.0, "sigma_range": 0.4, "iterations": 2}

    on_device = cuda.to_device(values)
    result = field_smoothing.recursive_filter(on_device, cuda.to_device(guide), **settings)

    assert result is on_device
    expected = field_smoothing.recursive_filter_cpu(values.copy(), guide, **settings)
    np.testing.assert_allclose(to_host(result), expected, **FLOAT_TOLERANCE)


def test_smooth_field_matches_cpu(rng):
    shape = (7, 10)
    positions = (identity(shape) + rng.uniform(-3, 3, (*shape, 2))).astype(np.float32)
    weights = rng.random(shape).astype(np.float32)
    weights[rng.random(shape) < 0.3] = 0
    guide = rng.random((3, *shape)).astype(np.float32)
    guide[:, :, 5:] += 1  # an edge the smoothing stops at
    params = field_prior.FieldPriorParams(sigma_space=4.0, sigma_range=0.3)

    # Weights on the host (copied over by the call).
    result, support = field_prior.smooth_field(
        cuda.to_device(positions), weights, cuda.to_device(guide), params=params
    )

    assert_on_device(result)
    assert_on_device(support)
    expected, expected_support = field_prior.smooth_field_cpu(
        positions, weights, guide, params=params
    )
    np.testing.assert_allclose(to_host(support), expected_support, **FLOAT_TOLERANCE)
    np.testing.assert_allclose(to_host(result), expected, rtol=1e-5, atol=1e-5)


def test_smooth_field_without_support_keeps_positions(rng):
    positions = (identity((4, 6)) + rng.uniform(-3, 3, (4, 6, 2))).astype(np.float32)
    weights = np.zeros((4, 6), np.float32)
    guide = rng.random((1, 4, 6)).astype(np.float32)

    result, support = field_prior.smooth_field_cuda(
        cuda.to_device(positions), cuda.to_device(weights), cuda.to_device(guide)
    )

    np.testing.assert_array_equal(to_host(result), positions)
    np.testing.assert_array_equal(to_host(support), 0)


@pytest.mark.parametrize(
    ("old_shape", "new_shape", "old_source", "new_source"),
    [
        ((3, 4), (6, 8), (5, 5), (10, 10)),
        ((4, 3), (7, 5), (3, 6), (5, 13)),
        ((1, 1), (2, 3), (2, 2), (3, 3)),
    ],
)
def test_upsample_positions_matches_cpu(rng, old_shape, new_shape, old_source, new_source):
    positions = rng.uniform(-1, 6, (*old_shape, 2)).astype(np.float32)
    shapes = {"target_shape": new_shape, "source_shape": new_source,
              "coarse_source_shape": old_source}  # fmt: skip

    result = field_prior.upsample_positions(cuda.to_device(positions), **shapes)

    assert_on_device(result)
    expected = field_prior.upsample_positions_cpu(positions, **shapes)
    np.testing.assert_allclose(to_host(result), expected, **FLOAT_TOLERANCE)


def test_carry_positions_matches_cpu(rng):
    positions = rng.uniform(-1, 6, (5, 6, 2)).astype(np.float32)
    field = rng.integers(0, 9, (9, 11, 2)).astype(np.int32)
    trusted = rng.random((5, 6)) < 0.5
    shapes = {"source_shape": (5, 4), "field_source_shape": (9, 7)}

    result = field_prior.carry_positions(
        cuda.to_device(positions), cuda.to_device(field), cuda.to_device(trusted), **shapes
    )

    assert_on_device(result)
    expected = field_prior.carry_positions(positions.copy(), field, trusted, **shapes)
    np.testing.assert_allclose(to_host(result), expected, **FLOAT_TOLERANCE)


def test_round_positions_matches_cpu(rng):
    positions = rng.uniform(-3, 10, (5, 6, 2)).astype(np.float32)
    positions[0, :3, 0] = [np.nan, np.inf, 0.49999997]
    positions[1, :3, 1] = [2.5, -0.5, 1e30]

    result = field_prior.round_positions(cuda.to_device(positions), (6, 7))

    assert_on_device(result)
    np.testing.assert_array_equal(
        to_host(result), field_prior.round_positions_cpu(positions, (6, 7))
    )
