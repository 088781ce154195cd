"""CUDA kernels of normalisation, masks, blending, voting and NNF resampling vs their CPU twins.

Runs under Numba's CUDA simulator (or a real GPU with ``DIVA_TEST_GPU=1``) on tiny
inputs, with blocks shrunk so that every launch spans several of them.
"""

import numpy as np
import pytest
from device_checks import FLOAT_TOLERANCE, assert_on_device
from inputs import random_flow
from numba import cuda

from diva_numba.gpu.device import to_host
from diva_numba.kernels import nnf_resample, normalize, targets, voting

pytestmark = pytest.mark.cudasim


def relu_features(rng, shape):
    features = np.maximum(rng.standard_normal(shape), 0).astype(np.float32)
    features[:, 0, 0] = 0  # an all-zero vector
    return features


def test_normalize(rng):
    features = relu_features(rng, (4, 9, 7))
    result = normalize.normalize_features_cuda(cuda.to_device(features))
    assert_on_device(result)
    np.testing.assert_allclose(
        to_host(result), normalize.normalize_features_cpu(features), **FLOAT_TOLERANCE
    )


@pytest.mark.parametrize("shape", [(4, 9, 7), (2, 1, 5), (3, 1, 1)])
def test_response_mask_sigmoid(rng, shape):
    features = relu_features(rng, shape)
    result = normalize.response_mask_cuda(cuda.to_device(features))
    assert_on_device(result)
    np.testing.assert_allclose(
        to_host(result), normalize.response_mask_cpu(features), **FLOAT_TOLERANCE
    )


@pytest.mark.parametrize("block", [[8], [3]])
def test_response_mask_step(rng, monkeypatch, block):
    monkeypatch.setattr(targets, "BLOCK_1D", block)
    features = relu_features(rng, (4, 9, 7))
    result = to_host(normalize.response_mask_cuda(cuda.to_device(features), kind="step", tau=0.3))
    expected = normalize.response_mask_cpu(features, kind="step", tau=0.3)
    # A fused multiply-add on a real GPU may flip a pixel sitting exactly on the threshold.
    steep = normalize.response_mask_cpu(features, kind="sigmoid", kappa=1e6, tau=0.3)
    near_threshold = np.abs(steep - 0.5) < 0.49
    assert near_threshold.sum() <= 2
    np.testing.assert_array_equal(result[~near_threshold], expected[~near_threshold])


@pytest.mark.parametrize("count, block", [(1, [8]), (50, [4]), (63, [5]), (200, [8])])
def test_minmax_reduction(rng, monkeypatch, count, block):
    monkeypatch.setattr(targets, "BLOCK_1D", block)
    values = rng.standard_normal(count).astype(np.float32)
    device_values = cuda.to_device(values)
    lows, highs = normalize._minmax(device_values, like=device_values)
    assert to_host(lows)[0] == values.min()
    assert to_host(highs)[0] == values.max()


def test_blend_with_host_mask(rng):
    feat_a = rng.standard_normal((4, 9, 7)).astype(np.float32)
    reconstructed = rng.standard_normal((4, 9, 7)).astype(np.float32)
    mask = rng.random((9, 7)).astype(np.float32)
    result = normalize.blend_cuda(
        cuda.to_device(feat_a), cuda.to_device(reconstructed), mask, alpha=0.7
    )
    assert_on_device(result)
    np.testing.assert_allclose(
        to_host(result),
        normalize.blend_cpu(feat_a, reconstructed, mask, alpha=0.7),
        **FLOAT_TOLERANCE,
    )


@pytest.mark.parametrize("patch_size", [3, 5])
@pytest.mark.parametrize("shapes", [((4, 9, 7), (7, 9)), ((3, 1, 4), (5, 1))])
def test_vote_is_bitwise_equal(rng, patch_size, shapes):
    source_shape, target_shape = shapes
    source = rng.standard_normal(source_shape).astype(np.float32)
    ys = rng.integers(-1, source_shape[1] + 1, size=target_shape)  # some matches outside
    xs = rng.choice([0, source_shape[2] - 1], size=target_shape)  # at the borders
    field = np.stack([ys, xs], axis=-1).astype(np.int32)
    result = voting.vote_cuda(cuda.to_device(source), cuda.to_device(field), patch_size=patch_size)
    assert_on_device(result)
    assert result.shape == (source_shape[0], *target_shape)
    np.testing.assert_array_equal(
        to_host(result), voting.vote_cpu(source, field, patch_size=patch_size)
    )


def test_upsample_field(rng):
    field = rng.integers(-2, 8, size=(4, 5, 2)).astype(np.int32)
    result = nnf_resample.upsample_field_cuda(
        cuda.to_device(field), target_shape=(9, 7), source_shape=(11, 6)
    )
    assert_on_device(result)
    np.testing.assert_array_equal(
        to_host(result),
        nnf_resample.upsample_field_cpu(field, target_shape=(9, 7), source_shape=(11, 6)),
    )


@pytest.mark.parametrize("flow_shape", [(9, 7), (4, 3)])
def test_pull_field_with_host_flow(rng, flow_shape):
    field = rng.integers(0, 6, size=(9, 7, 2)).astype(np.int32)
    flow = random_flow(rng, flow_shape, 3.0)
    flow[2, 1, 0] = np.nan
    result, invalid = nnf_resample.pull_field_cuda(cuda.to_device(field), flow, source_shape=(5, 6))
    assert_on_device(result)
    assert_on_device(invalid)
    expected, expected_invalid = nnf_resample.pull_field_cpu(field, flow, source_shape=(5, 6))
    np.testing.assert_array_equal(to_host(result), expected)
    np.testing.assert_array_equal(to_host(invalid), expected_invalid)


class FakeGpuArray:
    """Anything exposing ``__cuda_array_interface__`` counts as a GPU array."""

    __cuda_array_interface__ = {}


@pytest.mark.parametrize(
    "module, name, call",
    [
        (normalize, "normalize_features", lambda f, g: f(g)),
        (normalize, "response_mask", lambda f, g: f(g, kind="step")),
        (normalize, "blend", lambda f, g: f(g, g, g, alpha=0.5)),
        (voting, "vote", lambda f, g: f(g, g, patch_size=3)),
        (
            nnf_resample,
            "upsample_field",
            lambda f, g: f(g, target_shape=(2, 2), source_shape=(2, 2)),
        ),
        (nnf_resample, "pull_field", lambda f, g: f(g, g, source_shape=(2, 2))),
    ],
)
def test_dispatchers_route_gpu_arrays_to_cuda(monkeypatch, module, name, call):
    calls = []
    monkeypatch.setattr(module, f"{name}_cuda", lambda *args, **kwargs: calls.append("cuda"))
    monkeypatch.setattr(module, f"{name}_cpu", lambda *args, **kwargs: calls.append("cpu"))
    call(getattr(module, name), FakeGpuArray())
    assert calls == ["cuda"]
