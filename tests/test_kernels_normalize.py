"""CPU twins of the per-pixel channel kernels against the slow NumPy references of naive.py."""

import math

import naive
import numpy as np
import pytest

from diva_numba.kernels import normalize

SHAPES = [(4, 9, 7), (3, 1, 7), (5, 6, 1), (1, 1, 1), (16, 5, 8)]


def features_with_zeros(rng, shape):
    """Post-ReLU-like features: non-negative with many zeros and some all-zero pixels."""
    features = np.maximum(rng.standard_normal(shape), 0).astype(np.float32) * 10
    zero_pixels = rng.random(shape[1:]) < 0.2
    features[:, zero_pixels] = 0
    return features


@pytest.mark.parametrize("shape", SHAPES)
def test_normalize_matches_reference(rng, shape):
    features = features_with_zeros(rng, shape)
    result = normalize.normalize_features(features, eps=1e-6)
    assert isinstance(result, np.ndarray) and result.dtype == np.float32
    np.testing.assert_allclose(
        result, naive.normalize_features(features, 1e-6), rtol=2e-6, atol=1e-7
    )


def test_normalize_gives_unit_vectors_and_zero_for_zero_pixels(rng):
    features = features_with_zeros(rng, (8, 6, 5))
    features[:, 2, 3] = 0
    features[:, 4, 1] = rng.uniform(1, 2, 8)
    norms = np.linalg.norm(normalize.normalize_features_cpu(features), axis=0)
    assert norms[2, 3] == 0
    np.testing.assert_allclose(norms[4, 1], 1.0, rtol=1e-5)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", ["sigmoid", "step"])
def test_response_mask_matches_reference(rng, shape, kind):
    features = features_with_zeros(rng, shape)
    result = normalize.response_mask(features, kind=kind)
    assert result.shape == shape[1:] and result.dtype == np.float32
    expected = naive.response_mask(features, kind, 300.0, 0.05)
    np.testing.assert_allclose(result, expected, rtol=1e-5, atol=2e-6)
    assert result.min() >= 0 and result.max() <= 1


def test_response_mask_custom_kappa_tau(rng):
    features = rng.standard_normal((3, 8, 9)).astype(np.float32)
    result = normalize.response_mask_cpu(features, kind="sigmoid", kappa=7.5, tau=0.3)
    np.testing.assert_allclose(
        result, naive.response_mask(features, "sigmoid", 7.5, 0.3), rtol=1e-5, atol=1e-6
    )


def test_response_mask_sigmoid_never_overflows():
    features = np.zeros((2, 3, 4), dtype=np.float32)
    features[0, 1, 2] = 5
    result = normalize.response_mask_cpu(features, kind="sigmoid", kappa=1e6)
    assert np.isfinite(result).all()
    assert result[1, 2] == 1 and result[0, 0] == 0


def test_flat_response_normalises_to_zero():
    features = np.full((3, 4, 5), 2.0, dtype=np.float32)
    np.testing.assert_array_equal(normalize.response_mask_cpu(features, kind="step"), 0)
    expected = 1 / (1 + math.exp(300 * 0.05))
    np.testing.assert_allclose(normalize.response_mask_cpu(features), expected, rtol=1e-5)


@pytest.mark.parametrize("shape", SHAPES)
def test_blend_matches_reference(rng, shape):
    feat_a = rng.standard_normal(shape).astype(np.float32)
    reconstructed = rng.standard_normal(shape).astype(np.float32)
    mask = rng.random(shape[1:]).astype(np.float32)
    alpha = float(rng.uniform(0, 1))
    result = normalize.blend(feat_a, reconstructed, mask, alpha=alpha)
    expected = naive.blend(feat_a, reconstructed, mask, alpha)
    assert result.dtype == np.float32
    np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-6)


def test_blend_extremes_select_one_input(rng):
    feat_a = rng.standard_normal((2, 3, 4)).astype(np.float32)
    reconstructed = rng.standard_normal((2, 3, 4)).astype(np.float32)
    ones = np.ones((3, 4), dtype=np.float32)
    np.testing.assert_array_equal(normalize.blend_cpu(feat_a, reconstructed, ones, alpha=1), feat_a)
    np.testing.assert_array_equal(
        normalize.blend_cpu(feat_a, reconstructed, ones, alpha=0), reconstructed
    )


def test_non_contiguous_input_is_accepted(rng):
    features = rng.standard_normal((5, 6, 4)).astype(np.float32)
    view = features[:, ::2, :]
    np.testing.assert_allclose(
        normalize.normalize_features_cpu(view), naive.normalize_features(view, 1e-6), rtol=2e-6
    )


def test_bad_inputs_raise():
    features = np.zeros((2, 3, 4), dtype=np.float32)
    with pytest.raises(ValueError, match="float32"):
        normalize.normalize_features(features.astype(np.float64))
    with pytest.raises(ValueError, match="kind"):
        normalize.response_mask(features, kind="soft")
    with pytest.raises(ValueError, match="mask"):
        normalize.blend(features, features, np.zeros((3, 5), np.float32), alpha=0.5)
    with pytest.raises(ValueError, match="differs"):
        normalize.blend(features, features[:1], np.zeros((3, 4), np.float32), alpha=0.5)


def test_traffic_bytes():
    assert normalize.traffic_bytes("normalize_features", features_shape=(512, 56, 56)) == (
        8 * 512 * 56 * 56
    )
    assert normalize.traffic_bytes("blend", features_shape=(2, 3, 4)) == 12 * 24 + 4 * 12
    with pytest.raises(ValueError):
        normalize.traffic_bytes("vote", features_shape=(1, 1, 1))
