"""Real-GPU tests: every public kernel on CuPy arrays against its CPU twin.

Skipped, with the reason, unless ``DIVA_TEST_GPU=1`` is set and a GPU is usable through
both Numba's CUDA target and CuPy (``diva_numba.gpu.device.cuda_status``). Everything calls
the public functions only: a kernel's dispatcher with CuPy arrays against the same
dispatcher with NumPy arrays (its CPU twin). The feature extractor, the VGG
sub-networks, L-BFGS, ``analogy()`` and ``transfer_video()`` on the GPU:
tests/test_gpu_pipeline.py.

    DIVA_TEST_GPU=1 python -m pytest -q tests/test_gpu.py tests/test_gpu_pipeline.py
    DIVA_TEST_GPU=1 python -m pytest -q tests/test_gpu_pipeline.py -m model  # real VGG-19

Agreement expected (docs/DESIGN.md section 5): voting, field resampling, im2col,
ReLU and pooling bitwise; patch distances bitwise on features whose arithmetic is
exact (multiples of 1/8), and PatchMatch then the very same field; float kernels
to float32 rounding (fused multiply-adds on the GPU). Inputs are a few times a
CUDA block on each side, with odd sizes, so every launch has partial blocks.
"""

from __future__ import annotations

import numpy as np
import pytest
from gpu_checks import SKIP_REASON, assert_on_gpu, field_agreement
from inputs import feature_pairs, random_field, random_flow

from diva_numba.gpu.device import to_host
from diva_numba.kernels import (
    activations,
    im2col,
    nnf_resample,
    normalize,
    patch_distance,
    patchmatch,
    reductions,
    squared_error,
    vector_ops,
    voting,
)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(SKIP_REASON is not None, reason=SKIP_REASON or "a GPU is usable"),
]

#: Float kernels: a few float32 ulps apart (fused multiply-adds on the GPU).
FLOAT_TOLERANCE = {"rtol": 1e-5, "atol": 1e-6}


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def cp():
    import cupy

    return cupy


def dyadic_features(rng, channels, height, width):
    """Float32 (C, H, W) of multiples of 1/8 in [-1, 1]: every sum of products is exact."""
    return (rng.integers(-8, 9, (channels, height, width)) / 8).astype(np.float32)


def relu_features(rng, shape):
    """Non-negative float32 features with one all-zero pixel (a flat vector)."""
    features = np.maximum(rng.standard_normal(shape), 0).astype(np.float32)
    features[:, 0, 0] = 0
    return features


# --------------------------------------------------------------------------- patch distance


@pytest.mark.parametrize("patch_size", [3, 5])
@pytest.mark.parametrize("field_on_gpu", [True, False])
def test_patch_distance_is_bitwise_on_exact_features(cp, rng, patch_size, field_on_gpu):
    source, target = (37, 45), (29, 52)
    pairs = feature_pairs(rng, 16, source, target, features=dyadic_features)
    field = random_field(rng, source, target, spill=2)
    got = patch_distance.patch_distance(
        *(cp.asarray(m) for m in pairs),
        cp.asarray(field) if field_on_gpu else field,
        patch_size=patch_size,
    )
    assert_on_gpu(cp, got)
    expected = patch_distance.patch_distance(*pairs, field, patch_size=patch_size)
    np.testing.assert_array_equal(to_host(got), expected)


def test_patch_distance_of_unit_features_agrees(cp, rng):
    pairs = feature_pairs(rng, 64, (31, 40), (35, 28))
    field = random_field(rng, (31, 40), (35, 28))
    got = patch_distance.patch_distance(
        *(cp.asarray(m) for m in pairs), cp.asarray(field), patch_size=5
    )
    expected = patch_distance.patch_distance(*pairs, field, patch_size=5)
    np.testing.assert_allclose(to_host(got), expected, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- PatchMatch


def test_patchmatch_is_identical_on_exact_features(cp, rng):
    pairs = feature_pairs(rng, 16, (33, 41), (30, 38), features=dyadic_features)
    params = patchmatch.PatchMatchParams(
        iterations=3, search_radius=8, seed=int(rng.integers(2**32))
    )
    field, distance = patchmatch.patchmatch(*(cp.asarray(m) for m in pairs), params=params)
    assert_on_gpu(cp, field, distance)
    expected_field, expected_distance = patchmatch.patchmatch(*pairs, params=params)
    np.testing.assert_array_equal(to_host(field), expected_field)
    np.testing.assert_array_equal(to_host(distance), expected_distance)


@pytest.mark.parametrize("seeds_on_gpu", [True, False])
def test_patchmatch_with_start_and_mask_is_identical(cp, rng, seeds_on_gpu):
    source, target = (26, 35), (31, 22)
    pairs = feature_pairs(rng, 8, source, target, features=dyadic_features)
    init = random_field(rng, source, target, spill=3)
    mask = (rng.random(source) < 0.6).astype(np.uint8)
    params = patchmatch.PatchMatchParams(
        patch_size=5, iterations=2, search_radius=6, seed=int(rng.integers(2**32))
    )
    field, distance = patchmatch.patchmatch(
        *(cp.asarray(m) for m in pairs),
        init_field=cp.asarray(init) if seeds_on_gpu else init,
        refine_mask=cp.asarray(mask) if seeds_on_gpu else mask,
        params=params,
    )
    expected_field, expected_distance = patchmatch.patchmatch(
        *pairs, init_field=init, refine_mask=mask, params=params
    )
    np.testing.assert_array_equal(to_host(field), expected_field)
    np.testing.assert_array_equal(to_host(distance), expected_distance)


def test_patchmatch_of_unit_features_mostly_agrees(cp, rng):
    # Real-valued features: the targets may break a near-tie differently, nothing more.
    pairs = feature_pairs(rng, 64, (28, 28), (28, 28))
    params = patchmatch.PatchMatchParams(iterations=4, search_radius=6, seed=5)
    field, distance = patchmatch.patchmatch(*(cp.asarray(m) for m in pairs), params=params)
    expected_field, expected_distance = patchmatch.patchmatch(*pairs, params=params)
    assert field_agreement(field, expected_field) >= 0.95
    same = np.all(to_host(field) == expected_field, axis=-1)
    np.testing.assert_allclose(
        to_host(distance)[same], expected_distance[same], rtol=1e-5, atol=1e-5
    )


# --------------------------------------------------------------------------- voting, fields


@pytest.mark.parametrize("patch_size", [1, 3, 5])
def test_vote_is_bitwise(cp, rng, patch_size):
    source = rng.standard_normal((64, 30, 41)).astype(np.float32)
    field = random_field(rng, (37, 29), (30, 41), spill=1)  # some matches outside
    got = voting.vote(cp.asarray(source), cp.asarray(field), patch_size=patch_size)
    assert_on_gpu(cp, got)
    assert got.shape == (64, 37, 29)
    np.testing.assert_array_equal(to_host(got), voting.vote(source, field, patch_size=patch_size))


def test_vote_with_host_field(cp, rng):
    source = rng.standard_normal((3, 45, 33)).astype(np.float32)
    field = random_field(rng, (40, 50), (45, 33))
    got = voting.vote(cp.asarray(source), field, patch_size=3)
    np.testing.assert_array_equal(to_host(got), voting.vote(source, field, patch_size=3))


def test_upsample_field_is_bitwise(cp, rng):
    field = random_field(rng, (14, 17), (15, 18), spill=2)
    options = {"target_shape": (28, 34), "source_shape": (29, 35)}
    got = nnf_resample.upsample_field(cp.asarray(field), **options)
    assert_on_gpu(cp, got)
    np.testing.assert_array_equal(to_host(got), nnf_resample.upsample_field(field, **options))


@pytest.mark.parametrize("flow_on_gpu", [True, False])
@pytest.mark.parametrize("flow_shape", [(37, 45), (74, 90)])
def test_pull_field_is_bitwise(cp, rng, flow_on_gpu, flow_shape):
    field = random_field(rng, (37, 45), (30, 26))
    flow = random_flow(rng, flow_shape, 4.0)
    flow[3, 5, 0] = np.nan  # a failed flow estimate
    got, invalid = nnf_resample.pull_field(
        cp.asarray(field), cp.asarray(flow) if flow_on_gpu else flow, source_shape=(30, 26)
    )
    assert_on_gpu(cp, got, invalid)
    expected, expected_invalid = nnf_resample.pull_field(field, flow, source_shape=(30, 26))
    np.testing.assert_array_equal(to_host(got), expected)
    np.testing.assert_array_equal(to_host(invalid), expected_invalid)


# --------------------------------------------------------------------------- normalise, mask, blend


def test_normalize_features(cp, rng):
    features = relu_features(rng, (64, 37, 45))
    got = normalize.normalize_features(cp.asarray(features))
    assert_on_gpu(cp, got)
    np.testing.assert_allclose(
        to_host(got), normalize.normalize_features(features), **FLOAT_TOLERANCE
    )


@pytest.mark.parametrize("shape", [(64, 37, 45), (128, 56, 56), (3, 1, 1)])
def test_response_mask_sigmoid(cp, rng, shape):
    features = relu_features(rng, shape)
    got = normalize.response_mask(cp.asarray(features))
    assert_on_gpu(cp, got)
    # kappa = 300 turns one ulp of the normalised response into ~1e-5 of the mask.
    np.testing.assert_allclose(
        to_host(got), normalize.response_mask(features), rtol=1e-5, atol=5e-5
    )


def test_response_mask_step(cp, rng):
    features = relu_features(rng, (64, 37, 45))
    got = to_host(normalize.response_mask(cp.asarray(features), kind="step", tau=0.3))
    expected = normalize.response_mask(features, kind="step", tau=0.3)
    # A fused multiply-add may flip a pixel sitting exactly on the threshold.
    steep = normalize.response_mask(features, kind="sigmoid", kappa=1e6, tau=0.3)
    near_threshold = np.abs(steep - 0.5) < 0.49
    assert near_threshold.sum() <= 3
    np.testing.assert_array_equal(got[~near_threshold], expected[~near_threshold])


@pytest.mark.parametrize("mask_on_gpu", [True, False])
def test_blend(cp, rng, mask_on_gpu):
    feat_a = rng.standard_normal((64, 37, 45)).astype(np.float32)
    reconstructed = rng.standard_normal((64, 37, 45)).astype(np.float32)
    mask = rng.random((37, 45)).astype(np.float32)
    got = normalize.blend(
        cp.asarray(feat_a), cp.asarray(reconstructed),
        cp.asarray(mask) if mask_on_gpu else mask, alpha=0.7,
    )  # fmt: skip
    assert_on_gpu(cp, got)
    np.testing.assert_allclose(
        to_host(got), normalize.blend(feat_a, reconstructed, mask, alpha=0.7), **FLOAT_TOLERANCE
    )


# --------------------------------------------------------------------------- im2col, ReLU, pooling


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(64, 37, 45), (3, 33, 31), (5, 1, 7)])
def test_im2col_is_bitwise(cp, rng, dtype, shape):
    image = rng.standard_normal(shape).astype(dtype)
    got = im2col.im2col(cp.asarray(image))
    assert_on_gpu(cp, got)
    assert got.dtype == dtype
    np.testing.assert_array_equal(to_host(got), im2col.im2col(image))
    out = cp.full(got.shape, np.nan, dtype=dtype)
    assert im2col.im2col(cp.asarray(image), out=out) is out
    np.testing.assert_array_equal(to_host(out), im2col.im2col(image))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(64, 37, 45), (3, 33, 31)])
def test_col2im(cp, rng, dtype, shape):
    channels, height, width = shape
    cols = rng.standard_normal((channels * 9, height * width)).astype(dtype)
    out = cp.full(shape, np.nan, dtype=dtype)
    got = im2col.col2im(cp.asarray(cols), height, width, out=out)
    assert got is out
    tolerance = 1e-6 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(
        to_host(got), im2col.col2im(cols, height, width), rtol=tolerance, atol=tolerance
    )


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("shape", [(64, 37, 45), (512, 14 * 14)])
def test_relu_forward_is_bitwise_and_in_place(cp, rng, with_bias, shape):
    values = rng.standard_normal(shape).astype(np.float32)
    bias = rng.standard_normal(shape[0]).astype(np.float32) if with_bias else None
    on_gpu = cp.asarray(values)
    result = activations.relu_forward(on_gpu, bias=None if bias is None else cp.asarray(bias))
    assert result is on_gpu
    np.testing.assert_array_equal(to_host(on_gpu), activations.relu_forward(values, bias=bias))


def test_relu_backward_is_bitwise_and_in_place(cp, rng):
    activation = np.maximum(rng.standard_normal((64, 37, 45)), 0).astype(np.float32)
    grad = rng.standard_normal((64, 37, 45)).astype(np.float32)
    on_gpu = cp.asarray(grad)
    assert activations.relu_backward(on_gpu, cp.asarray(activation)) is on_gpu
    np.testing.assert_array_equal(to_host(on_gpu), activations.relu_backward(grad, activation))


@pytest.mark.parametrize("size", [(37, 45), (56, 56), (1, 1), (9, 4)])
@pytest.mark.parametrize("ties", [False, True])
def test_maxpool_forward_and_backward_are_bitwise(cp, rng, size, ties):
    shape = (24, *size)
    if ties:  # post-ReLU maps are full of zeros: the first maximum in row-major order wins
        values = rng.integers(0, 2, size=shape).astype(np.float32)
    else:
        values = rng.standard_normal(shape).astype(np.float32)
    pooled, argmax = activations.maxpool_forward(cp.asarray(values))
    assert_on_gpu(cp, pooled, argmax)
    expected_pooled, expected_argmax = activations.maxpool_forward(values)
    np.testing.assert_array_equal(to_host(pooled), expected_pooled)
    np.testing.assert_array_equal(to_host(argmax), expected_argmax)

    grad_pooled = rng.standard_normal(expected_pooled.shape).astype(np.float32)
    out = cp.full(shape, np.nan, dtype=np.float32)
    grad = activations.maxpool_backward(cp.asarray(grad_pooled), argmax, *size, out=out)
    assert grad is out
    np.testing.assert_array_equal(
        to_host(grad), activations.maxpool_backward(grad_pooled, expected_argmax, *size)
    )


# --------------------------------------------------------------------------- L-BFGS vector ops


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("count", [1, 1000, (1 << 20) + 3])  # the last needs > MAX_PARTIALS blocks
def test_dot_and_squared_error(cp, rng, dtype, count):
    a = rng.standard_normal(count).astype(dtype)
    b = rng.standard_normal(count).astype(dtype)
    products = a.astype(np.float64) * b.astype(np.float64)
    scalars = cp.zeros(4)
    reductions.dot(cp.asarray(a), cp.asarray(b), scalars, 2)
    host_scalars = np.zeros(4)
    reductions.dot(a, b, host_scalars, 2)
    bound = 1e-12 * max(np.abs(products).sum(), 1e-300)  # float64 sums in another order
    assert to_host(scalars)[2] == pytest.approx(host_scalars[2], rel=0, abs=bound)
    assert to_host(scalars)[[0, 1, 3]].tolist() == [0, 0, 0]

    grad = cp.empty(count, dtype=dtype)
    squared_error.squared_error(
        cp.asarray(a), cp.asarray(b), grad_out=grad, scalars=scalars, slot=1
    )
    host_grad = np.empty(count, dtype=dtype)
    squared_error.squared_error(a, b, grad_out=host_grad, scalars=host_scalars, slot=1)
    differences = a.astype(np.float64) - b.astype(np.float64)
    bound = 1e-12 * max((differences**2).sum(), 1e-300)
    assert to_host(scalars)[1] == pytest.approx(host_scalars[1], rel=0, abs=bound)
    np.testing.assert_allclose(to_host(grad), host_grad, rtol=1e-7, atol=0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_combine_add_scaled_scale(cp, rng, dtype):
    count = 100_003
    a, b, x = (rng.standard_normal(count).astype(dtype) for _ in range(3))
    tolerance = (
        {"rtol": 1e-6, "atol": 1e-6} if dtype == np.float32 else {"rtol": 1e-14, "atol": 1e-14}
    )

    out, host_out = cp.empty(count, dtype=dtype), np.empty(count, dtype=dtype)
    vector_ops.combine(out, cp.asarray(a), cp.asarray(b), alpha=0.5, beta=-2.0)
    vector_ops.combine(host_out, a, b, alpha=0.5, beta=-2.0)
    np.testing.assert_allclose(to_host(out), host_out, **tolerance)

    aliased, host_aliased = cp.asarray(a), a.copy()  # out may alias its inputs
    vector_ops.combine(aliased, aliased, aliased, alpha=1.0, beta=2.0)
    vector_ops.combine(host_aliased, host_aliased, host_aliased, alpha=1.0, beta=2.0)
    np.testing.assert_allclose(to_host(aliased), host_aliased, **tolerance)

    register = np.array([0.0, 3.0, 1.0, 4.0])
    y, host_y = cp.asarray(a), a.copy()
    vector_ops.add_scaled(y, cp.asarray(x), cp.asarray(register), plus=1, minus=2, over=3)
    vector_ops.add_scaled(host_y, x, register, plus=1, minus=2, over=3)
    np.testing.assert_allclose(to_host(y), host_y, **tolerance)
    vector_ops.scale(y, cp.asarray(register), numerator=3, denominator=1)
    vector_ops.scale(host_y, register, numerator=3, denominator=1)
    np.testing.assert_allclose(to_host(y), host_y, **tolerance)


def test_copy_scalar(cp, rng):
    value = float(rng.standard_normal())
    scalars = cp.zeros(3)
    reductions.copy_scalar(value, scalars, 1)
    reductions.copy_scalar(cp.asarray([2 * value]), scalars, 2)
    np.testing.assert_array_equal(to_host(scalars), [0.0, value, 2 * value])
