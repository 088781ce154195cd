"""Real-GPU tests: every public kernel on CuPy arrays against its CPU twin, then the pipeline.

Skipped, with the reason, unless ``DIVA_TEST_GPU=1`` is set and a GPU is usable through
both Numba's CUDA target and CuPy (``diva_numba.device.cuda_status``). Everything calls
the public functions only: a kernel's dispatcher with CuPy arrays against the same
dispatcher with NumPy arrays (its CPU twin), then the feature extractor, the VGG
sub-networks (cuBLAS GEMMs through ``cupy.matmul``), L-BFGS, ``analogy()`` and
``transfer_video()`` on a CUDA :class:`~diva_numba.device.Device` against the CPU.

    DIVA_TEST_GPU=1 python -m pytest -q tests/test_gpu.py            # tiny model only
    DIVA_TEST_GPU=1 python -m pytest -q tests/test_gpu.py -m model   # the real VGG-19

Agreement expected (docs/DESIGN.md section 5): voting, field resampling, im2col,
ReLU and pooling bitwise; patch distances bitwise on features whose arithmetic is
exact (multiples of 1/8), and PatchMatch then the very same field; float kernels
to float32 rounding (fused multiply-adds on the GPU); whole analogies to what
float32 rounding moves (most of each field, a fraction of a grey level). GEMMs
must run in full float32: leave ``CUPY_TF32`` unset. Inputs are a few times a
CUDA block on each side, with odd sizes, so every launch has partial blocks.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
from inputs import feature_pairs, random_field, random_flow, vgg_weights

from diva_numba.deep_analogy import AnalogyModel, AnalogyParams, analogy
from diva_numba.device import resolve_device, to_host
from diva_numba.kernels import (
    activations,
    im2col,
    lbfgs_ops,
    nnf_resample,
    normalize,
    patch_distance,
    patchmatch,
    voting,
)
from diva_numba.lbfgs import LBFGSParams, minimize_lbfgs
from diva_numba.models import vgg
from diva_numba.network import FEATURE_LEVELS, SubNetwork, deconvolve

EXAMPLE = Path(__file__).resolve().parents[1] / "tools" / "example"


def _skip_reason() -> str | None:
    """Why the real-GPU tests cannot run here, or None when they can."""
    if os.environ.get("DIVA_TEST_GPU") != "1":
        return "real-GPU tests: set DIVA_TEST_GPU=1 on a machine with a CUDA GPU and CuPy"
    try:
        from diva_numba.device import cuda_status

        with warnings.catch_warnings():  # a library's import-time warning is not an error here
            warnings.simplefilter("ignore")
            ok, reason = cuda_status()
    except Exception as exc:  # any failure of the probe is a reason to skip
        return f"DIVA_TEST_GPU=1 but probing the GPU failed: {type(exc).__name__}: {exc}"
    return None if ok else f"DIVA_TEST_GPU=1 but no usable GPU: {reason}"


SKIP_REASON = _skip_reason()
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


@pytest.fixture(scope="module")
def gpu():
    return resolve_device("cuda")


@pytest.fixture(scope="module")
def cpu():
    return resolve_device("cpu")


def assert_on_gpu(cp, *arrays):
    """Outputs of a GPU call are CuPy arrays, as the pipeline relies on."""
    for array in arrays:
        assert isinstance(array, cp.ndarray), type(array)


def dyadic_features(rng, channels, height, width):
    """Float32 (C, H, W) of multiples of 1/8 in [-1, 1]: every sum of products is exact."""
    return (rng.integers(-8, 9, (channels, height, width)) / 8).astype(np.float32)


def relu_features(rng, shape):
    """Non-negative float32 features with one all-zero pixel (a flat vector)."""
    features = np.maximum(rng.standard_normal(shape), 0).astype(np.float32)
    features[:, 0, 0] = 0
    return features


def random_image(rng, height, width):
    smooth = cv2.GaussianBlur(rng.uniform(0, 255, (height, width, 3)).astype(np.float32), (0, 0), 2)
    return np.clip(smooth, 0, 255).astype(np.uint8)


def as_float(value) -> float:
    """A number, a one-element array or a one-element GPU array as a float."""
    return float(np.asarray(to_host(value)).reshape(()))


def field_agreement(first, second) -> float:
    """Fraction of pixels whose matches are identical in two fields."""
    return float(np.all(to_host(first) == to_host(second), axis=-1).mean())


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


@pytest.mark.parametrize("flow_shape", [(37, 45), (55, 67)])
def test_push_field_targets_is_bitwise(cp, rng, flow_shape):
    field = random_field(rng, (30, 26), (37, 45))
    flow = random_flow(rng, flow_shape, 4.0)
    got, invalid = nnf_resample.push_field_targets(
        cp.asarray(field), cp.asarray(flow), frame_shape=(37, 45)
    )
    assert_on_gpu(cp, got, invalid)
    expected, expected_invalid = nnf_resample.push_field_targets(field, flow, frame_shape=(37, 45))
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
    lbfgs_ops.dot(cp.asarray(a), cp.asarray(b), scalars, 2)
    host_scalars = np.zeros(4)
    lbfgs_ops.dot(a, b, host_scalars, 2)
    bound = 1e-12 * max(np.abs(products).sum(), 1e-300)  # float64 sums in another order
    assert to_host(scalars)[2] == pytest.approx(host_scalars[2], rel=0, abs=bound)
    assert to_host(scalars)[[0, 1, 3]].tolist() == [0, 0, 0]

    grad = cp.empty(count, dtype=dtype)
    lbfgs_ops.squared_error(cp.asarray(a), cp.asarray(b), grad_out=grad, scalars=scalars, slot=1)
    host_grad = np.empty(count, dtype=dtype)
    lbfgs_ops.squared_error(a, b, grad_out=host_grad, scalars=host_scalars, slot=1)
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
    lbfgs_ops.combine(out, cp.asarray(a), cp.asarray(b), alpha=0.5, beta=-2.0)
    lbfgs_ops.combine(host_out, a, b, alpha=0.5, beta=-2.0)
    np.testing.assert_allclose(to_host(out), host_out, **tolerance)

    aliased, host_aliased = cp.asarray(a), a.copy()  # out may alias its inputs
    lbfgs_ops.combine(aliased, aliased, aliased, alpha=1.0, beta=2.0)
    lbfgs_ops.combine(host_aliased, host_aliased, host_aliased, alpha=1.0, beta=2.0)
    np.testing.assert_allclose(to_host(aliased), host_aliased, **tolerance)

    register = np.array([0.0, 3.0, 1.0, 4.0])
    y, host_y = cp.asarray(a), a.copy()
    lbfgs_ops.add_scaled(y, cp.asarray(x), cp.asarray(register), plus=1, minus=2, over=3)
    lbfgs_ops.add_scaled(host_y, x, register, plus=1, minus=2, over=3)
    np.testing.assert_allclose(to_host(y), host_y, **tolerance)
    lbfgs_ops.scale(y, cp.asarray(register), numerator=3, denominator=1)
    lbfgs_ops.scale(host_y, register, numerator=3, denominator=1)
    np.testing.assert_allclose(to_host(y), host_y, **tolerance)


def test_copy_scalar(cp, rng):
    value = float(rng.standard_normal())
    scalars = cp.zeros(3)
    lbfgs_ops.copy_scalar(value, scalars, 1)
    lbfgs_ops.copy_scalar(cp.asarray([2 * value]), scalars, 2)
    np.testing.assert_array_equal(to_host(scalars), [0.0, value, 2 * value])


# --------------------------------------------------------------------------- features


def assert_features_close(got, expected, *, rtol=1e-4, scale_atol=1e-4):
    """Feature maps within float32 tolerance of each other (atol relative to each map's peak)."""
    assert list(got) == list(expected)
    for key in expected:
        want = to_host(expected[key])
        np.testing.assert_allclose(
            to_host(got[key]), want, rtol=rtol, atol=scale_atol * float(np.abs(want).max()),
            err_msg=str(key),
        )  # fmt: skip


def test_feature_extractor_on_gpu_matches_cpu(cp, rng, tiny_model, gpu, cpu):
    from diva_numba.features import FeatureExtractor

    image = random_image(rng, 53, 71)
    on_gpu = FeatureExtractor(tiny_model, gpu)
    features = on_gpu(image)
    assert_on_gpu(cp, *features.values())
    expected = FeatureExtractor(tiny_model, cpu)(image)
    assert_features_close(features, expected)
    assert_features_close(on_gpu(cp.asarray(image)), expected)  # a CuPy image too


def test_analogy_model_features_on_gpu_match_cpu(cp, rng, tiny_model, gpu, cpu):
    # Without onnxruntime's CUDA provider this is the project's own GPU forward pass.
    image = random_image(rng, 61, 47)
    features = AnalogyModel(tiny_model, gpu).features(image)
    assert sorted(features) == [0, *FEATURE_LEVELS]
    assert_on_gpu(cp, *features.values())
    assert_features_close(features, AnalogyModel(tiny_model, cpu).features(image))


@pytest.mark.model
def test_real_model_features_on_gpu_match_onnxruntime(cp, model_path, gpu, cpu):
    from skimage import data

    image = cv2.resize(data.astronaut(), (128, 96), interpolation=cv2.INTER_AREA)
    features = AnalogyModel(model_path, gpu).features(image)
    assert_on_gpu(cp, *features.values())
    expected = AnalogyModel(model_path, cpu).features(image)
    assert_features_close(features, expected, rtol=1e-3)
    assert all(float(features[level].max()) > 0 for level in FEATURE_LEVELS)


# --------------------------------------------------------------------------- sub-networks, L-BFGS

#: VGG-19's structure with a fraction of its widths: real GEMM shapes, quick to run.
CHANNELS = {"1": 16, "2": 24, "3": 32, "4": 40, "5": 48}
DECONVOLUTIONS = [(3, 5), (2, 4), (1, 3), (0, 2)]


def level_input(rng, network, height, width, dtype=np.float32):
    x = rng.standard_normal((network.in_channels, height, width))
    return (np.abs(x) if network.start_level > 0 else x).astype(dtype)  # post-ReLU maps >= 0


def assert_mostly_close(got, expected, *, fraction=0.999):
    """Gradients agree but where a ReLU or a pooling window flipped on a near-tie.

    A pre-activation within rounding of zero, or two window values within rounding of
    each other, sends an element's gradient down another path on the other target.
    """
    scale = float(np.abs(expected).max())
    close = np.isclose(got, expected, rtol=1e-3, atol=1e-4 * scale)
    assert close.mean() >= fraction, f"{(~close).sum()} of {close.size} elements differ"
    cosine = np.vdot(got, expected) / (np.linalg.norm(got) * np.linalg.norm(expected))
    assert cosine >= 0.999


@pytest.fixture
def matmul_calls(cp, monkeypatch):
    """Count the CuPy GEMMs (``cupy.matmul`` on CuPy operands) made during a test."""
    calls = []
    real = cp.matmul

    def counting(a, b, *args, **kwargs):
        calls.append(isinstance(a, cp.ndarray) and isinstance(b, cp.ndarray))
        return real(a, b, *args, **kwargs)

    monkeypatch.setattr(cp, "matmul", counting)
    return calls


@pytest.mark.parametrize(("start", "end"), DECONVOLUTIONS)
def test_subnetwork_forward_and_gradient_match_cpu(cp, rng, matmul_calls, start, end):
    network = SubNetwork(vgg_weights(rng, CHANNELS), start, end)
    height, width = (29, 35) if start > 0 else (58, 70)
    x = level_input(rng, network, height, width)
    output = network.forward(cp.asarray(x))
    assert_on_gpu(cp, output)
    expected = network.forward(x)
    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(to_host(output), expected, rtol=1e-4, atol=1e-5 * scale)
    assert matmul_calls and all(matmul_calls), "the GEMMs should be cupy.matmul on CuPy arrays"

    target = np.abs(rng.standard_normal(expected.shape)).astype(np.float32)
    loss, grad = network.loss_and_gradient(cp.asarray(x), cp.asarray(target))
    assert_on_gpu(cp, loss, grad)
    expected_loss, expected_grad = network.loss_and_gradient(x, target)
    assert as_float(loss) == pytest.approx(expected_loss, rel=1e-4)
    assert_mostly_close(to_host(grad), expected_grad)


def test_subnetwork_in_float64_agrees_tightly(cp, rng):
    network = SubNetwork(vgg_weights(rng, CHANNELS, dtype=np.float64), 1, 3)
    x = level_input(rng, network, 23, 31, dtype=np.float64)
    target = np.abs(rng.standard_normal(network.output_shape(23, 31)))
    loss, grad = network.loss_and_gradient(cp.asarray(x), cp.asarray(target))
    expected_loss, expected_grad = network.loss_and_gradient(x, target)
    assert as_float(loss) == pytest.approx(expected_loss, rel=1e-10)
    np.testing.assert_allclose(to_host(grad), expected_grad, rtol=1e-9, atol=1e-12)


def test_full_forward_levels_match_cpu(cp, rng):
    network = SubNetwork(vgg_weights(rng, CHANNELS), 0, 5)
    image = level_input(rng, network, 67, 45)  # odd sizes: every pool rounds up
    got = network.forward_levels(cp.asarray(image), FEATURE_LEVELS)
    expected = network.forward_levels(image, FEATURE_LEVELS)
    for level, (maps, want) in enumerate(zip(got, expected, strict=True), start=1):
        assert maps.shape == (CHANNELS[str(level)], *vgg.level_shape(67, 45, level))
        scale = float(np.abs(want).max())
        np.testing.assert_allclose(to_host(maps), want, rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_lbfgs_on_cupy_arrays_matches_cpu(cp, rng, dtype):
    size = 40
    basis, _ = np.linalg.qr(rng.standard_normal((size, size)))
    matrix = basis @ np.diag(np.geomspace(1.0, 10.0, size)) @ basis.T
    offset = rng.standard_normal(size)
    minimiser = np.linalg.solve(matrix, offset)
    gpu_matrix, gpu_offset = cp.asarray(matrix), cp.asarray(offset)

    def host_fun(x):
        x64 = x.astype(np.float64)
        return float(0.5 * x64 @ matrix @ x64 - offset @ x64), (matrix @ x64 - offset).astype(dtype)

    def gpu_fun(x):  # the loss stays on the GPU, as the deconvolution's does
        x64 = x.astype(cp.float64)
        loss = (0.5 * x64 @ gpu_matrix @ x64 - gpu_offset @ x64).reshape(1)
        return loss, (gpu_matrix @ x64 - gpu_offset).astype(dtype)

    x0 = rng.standard_normal(size).astype(dtype)
    params = LBFGSParams(gradient_tolerance=1e-12 if dtype == np.float64 else 1e-8)
    on_gpu = minimize_lbfgs(gpu_fun, cp.asarray(x0), params=params)
    on_cpu = minimize_lbfgs(host_fun, x0, params=params)
    assert_on_gpu(cp, on_gpu.x)
    assert on_gpu.x.dtype == dtype
    tolerance = 1e-6 if dtype == np.float64 else 1e-3
    np.testing.assert_allclose(to_host(on_gpu.x), minimiser, rtol=tolerance, atol=tolerance)
    if dtype == np.float64:
        assert on_gpu.reason == on_cpu.reason == "converged"


def test_deconvolution_on_gpu_recovers_features(cp, rng):
    # As tests/test_network.py: widening channels and positive biases keep it well posed.
    weights = vgg_weights(rng, {"1": 12, "2": 16, "3": 5, "4": 6, "5": 7})
    weights = {name: (weight, bias + 2) for name, (weight, bias) in weights.items()}
    network = SubNetwork(weights, 0, 2)
    x_true = rng.standard_normal((3, 8, 8)).astype(np.float32)
    target = network.forward(cp.asarray(x_true))
    initial = cp.asarray((x_true + 0.1 * rng.standard_normal(x_true.shape)).astype(np.float32))
    result = deconvolve(network, target, initial, params=LBFGSParams(max_iterations=100))
    assert_on_gpu(cp, result.x)
    assert result.x.shape == initial.shape and result.x.dtype == np.float32
    assert result.loss <= 1e-2 * result.losses[0]
    assert all(b <= a for a, b in zip(result.losses, result.losses[1:], strict=False))


# --------------------------------------------------------------------------- analogy, video

FAST = AnalogyParams(patchmatch_iterations=3, lbfgs_iterations=3)


def test_analogy_on_gpu_matches_cpu_with_the_tiny_model(cp, rng, tiny_model, gpu, cpu):
    a, bp = random_image(rng, 48, 64), random_image(rng, 56, 44)
    model = AnalogyModel(tiny_model, gpu)
    result = analogy(model, a, bp, params=FAST)
    again = analogy(model, a, bp, params=FAST)
    expected = analogy(AnalogyModel(tiny_model, cpu), a, bp, params=FAST)

    assert result.a_prime.shape == a.shape and result.a_prime.dtype == np.uint8
    assert result.b.shape == bp.shape and result.b.dtype == np.uint8
    for field, bounds in ((result.nnf_ab, bp.shape[:2]), (result.nnf_ba, a.shape[:2])):
        assert isinstance(field, np.ndarray) and field.dtype == np.int32
        assert field[..., 0].min() >= 0 and field[..., 0].max() < bounds[0]
        assert field[..., 1].min() >= 0 and field[..., 1].max() < bounds[1]
    assert_on_gpu(cp, *(f for fields in result.level_fields.values() for f in fields))
    assert_on_gpu(cp, *result.deconvolutions.values(), *result.latent_b.values())
    # Same seed, same device: the same result (race-free kernels, fixed-order sums).
    np.testing.assert_array_equal(result.nnf_ab, again.nnf_ab)
    np.testing.assert_array_equal(result.a_prime, again.a_prime)
    # Against the CPU: apart only where float32 rounding broke a near-tie.
    assert field_agreement(result.nnf_ab, expected.nnf_ab) >= 0.9
    assert field_agreement(result.nnf_ba, expected.nnf_ba) >= 0.9
    assert np.abs(result.a_prime.astype(int) - expected.a_prime).mean() <= 2.0
    assert np.abs(result.b.astype(int) - expected.b).mean() <= 2.0


def known_pair(size):
    """The astronaut against a zoomed, shifted, recoloured copy; and the true field."""
    from skimage import data

    a = cv2.resize(data.astronaut()[30:330, 100:400], (size, size), interpolation=cv2.INTER_AREA)
    scale, shift = 1.15, np.array([0.09, -0.07]) * size
    centre = (size - 1) / 2
    to_bp = np.array(
        [[scale, 0, (1 - scale) * centre + shift[1]], [0, scale, (1 - scale) * centre + shift[0]]],
        np.float32,
    )
    bp = cv2.warpAffine(a, to_bp, (size, size), borderMode=cv2.BORDER_REFLECT)
    bp = np.clip(bp * np.array([0.7, 1.0, 1.25]) + np.array([30, 0, -10]), 0, 255).astype(np.uint8)
    ys, xs = np.mgrid[0:size, 0:size]
    truth = np.stack([scale * ys + (1 - scale) * centre + shift[0],
                      scale * xs + (1 - scale) * centre + shift[1]], axis=-1)  # fmt: skip
    return a, bp, truth


def field_error(field, truth):
    """Median distance of the matches from the truth, away from the borders."""
    size = field.shape[0]
    inside = np.all((truth > 0.05 * size) & (truth < 0.95 * size - 1), axis=-1)
    return float(np.median(np.linalg.norm(field - truth, axis=-1)[inside]))


@pytest.mark.model
def test_analogy_on_gpu_matches_cpu_with_the_real_model(cp, model_path, gpu, cpu):
    a, bp, truth = known_pair(96)
    params = AnalogyParams(patchmatch_iterations=5, lbfgs_iterations=5)
    result = analogy(AnalogyModel(model_path, gpu), a, bp, params=params)
    expected = analogy(AnalogyModel(model_path, cpu), a, bp, params=params)
    # On the CPU: error 1.3 px; 96% of nnf_ab and A' within 0.1 grey levels of a run whose
    # features were perturbed by 2e-6 (float32 rounding); coarse levels agree exactly.
    error, expected_error = field_error(result.nnf_ab, truth), field_error(expected.nnf_ab, truth)
    assert error <= expected_error + 0.5 and error < 3.0
    assert field_agreement(result.nnf_ab, expected.nnf_ab) >= 0.8
    assert field_agreement(result.level_fields[5][0], expected.level_fields[5][0]) >= 0.95
    assert np.abs(result.a_prime.astype(int) - expected.a_prime).mean() <= 3.0


def test_transfer_video_of_three_frames_on_gpu(tmp_path, tiny_model, gpu, cpu):
    from diva_numba import TransferParams, transfer_video
    from diva_numba.video import probe_video

    def run(device, name):
        params = TransferParams.for_device(
            device, long_side=96, guided_lbfgs_iterations=2,
            analogy=AnalogyParams.for_device(device, patchmatch_iterations=3, lbfgs_iterations=3),
        )  # fmt: skip
        reports = []
        result = transfer_video(
            EXAMPLE / "style.png", EXAMPLE / "clip.mp4", tmp_path / f"{name}.mp4", params,
            device=device, model=tiny_model, end=3, on_frame=reports.append,
        )  # fmt: skip
        return result, reports

    result, reports = run(gpu, "gpu")
    assert result.frames == 3 and [r.index for r in reports] == [0, 1, 2]
    made = probe_video(result.output)
    assert made.frame_count == 3 and (made.width, made.height) == (result.width, result.height)
    assert max(result.width, result.height) == 96
    assert not (tmp_path / "gpu.mp4.work").exists()
    _, cpu_reports = run(cpu, "cpu")
    for ours, theirs in zip(reports, cpu_reports, strict=True):
        assert ours.output_frame.shape == theirs.output_frame.shape
        assert np.abs(ours.output_frame.astype(int) - theirs.output_frame).mean() <= 4.0
