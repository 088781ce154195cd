"""CPU kernels of the deconvolution against the slow NumPy references of naive.py.

im2col/col2im, ReLU, ceil-mode max-pooling and the L-BFGS vector operations, on
small random inputs (odd sizes included, where ceil rounding matters).
"""

import naive
import numpy as np
import pytest

from diva_numba.kernels import activations, im2col, lbfgs_ops


def random_shape(rng):
    return int(rng.integers(1, 5)), int(rng.integers(1, 10)), int(rng.integers(1, 10))


# --- im2col / col2im ------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_im2col_matches_reference(rng, dtype):
    for _ in range(3):
        image = rng.standard_normal(random_shape(rng)).astype(dtype)
        cols = im2col.im2col(image)
        assert cols.dtype == dtype
        np.testing.assert_array_equal(cols, naive.im2col(image))


def test_im2col_overwrites_out(rng):
    image = rng.standard_normal((2, 5, 4)).astype(np.float32)
    out = np.full((18, 20), np.nan, dtype=np.float32)
    assert im2col.im2col(image, out=out) is out
    np.testing.assert_array_equal(out, naive.im2col(image))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_col2im_matches_reference(rng, dtype):
    for _ in range(3):
        channels, height, width = random_shape(rng)
        cols = rng.standard_normal((channels * 9, height * width)).astype(dtype)
        out = np.full((channels, height, width), np.nan, dtype=dtype)
        image = im2col.col2im(cols, height, width, out=out)
        assert image is out
        rtol = 1e-6 if dtype == np.float32 else 1e-12
        np.testing.assert_allclose(image, naive.col2im(cols, height, width), rtol=rtol, atol=rtol)


def test_col2im_is_the_adjoint_of_im2col(rng):
    channels, height, width = random_shape(rng)
    x = rng.standard_normal((channels, height, width))
    y = rng.standard_normal((channels * 9, height * width))
    left = np.vdot(im2col.im2col(x), y)
    right = np.vdot(x, im2col.col2im(y, height, width))
    assert left == pytest.approx(right, rel=1e-12, abs=1e-12)


# --- ReLU -----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_forward_adds_bias_in_place(rng, dtype):
    values = rng.standard_normal((4, 3, 5)).astype(dtype)
    bias = rng.standard_normal(4).astype(dtype)
    expected = naive.relu(values, bias)
    result = activations.relu_forward(values, bias=bias)
    assert result is values
    np.testing.assert_array_equal(values, expected)


def test_relu_forward_without_bias(rng):
    values = rng.standard_normal((3, 7)).astype(np.float32)
    expected = naive.relu(values)
    np.testing.assert_array_equal(activations.relu_forward(values), expected)


def test_relu_backward_masks_by_activation(rng):
    activation = np.maximum(rng.standard_normal((3, 4, 5)), 0).astype(np.float32)
    grad = rng.standard_normal((3, 4, 5)).astype(np.float32)
    expected = naive.relu_backward(grad, activation)
    assert activations.relu_backward(grad, activation) is grad
    np.testing.assert_array_equal(grad, expected)


# --- max-pool -------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(1, 1), (2, 2), (3, 5), (6, 7), (9, 4)])
def test_maxpool_forward_ceil_mode(rng, size):
    values = rng.standard_normal((3, *size)).astype(np.float32)
    pooled, argmax = activations.maxpool_forward(values)
    expected_pooled, expected_argmax = naive.maxpool(values)
    assert pooled.shape == ((3, (size[0] + 1) // 2, (size[1] + 1) // 2))
    assert argmax.dtype == np.int32
    np.testing.assert_array_equal(pooled, expected_pooled)
    np.testing.assert_array_equal(argmax, expected_argmax)


def test_maxpool_ties_take_the_first_maximum(rng):
    # Post-ReLU maps are full of zeros: ties must resolve like Caffe (row-major first).
    values = rng.integers(0, 2, size=(4, 7, 5)).astype(np.float32)
    pooled, argmax = activations.maxpool_forward(values)
    expected_pooled, expected_argmax = naive.maxpool(values)
    np.testing.assert_array_equal(pooled, expected_pooled)
    np.testing.assert_array_equal(argmax, expected_argmax)


@pytest.mark.parametrize("size", [(1, 1), (4, 4), (5, 3), (7, 8)])
def test_maxpool_backward_routes_to_argmax(rng, size):
    values = rng.standard_normal((2, *size))
    pooled, argmax = activations.maxpool_forward(values)
    grad_pooled = rng.standard_normal(pooled.shape)
    out = np.full((2, *size), np.nan)
    grad = activations.maxpool_backward(grad_pooled, argmax, *size, out=out)
    assert grad is out
    np.testing.assert_array_equal(grad, naive.maxpool_backward(grad_pooled, argmax, *size))


# --- L-BFGS vector operations ---------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dot_accumulates_in_float64(rng, dtype):
    a = rng.standard_normal(1001).astype(dtype)
    b = rng.standard_normal(1001).astype(dtype)
    scalars = np.zeros(3)
    lbfgs_ops.dot(a, b, scalars, 2)
    expected = naive.dot(a, b)
    assert scalars[2] == pytest.approx(expected, rel=1e-12, abs=1e-12)
    assert scalars[0] == scalars[1] == 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_squared_error_loss_and_gradient(rng, dtype):
    output = rng.standard_normal(257).astype(dtype)
    target = rng.standard_normal(257).astype(dtype)
    grad = np.empty_like(output)
    scalars = np.zeros(2)
    lbfgs_ops.squared_error(output, target, grad_out=grad, scalars=scalars, slot=1)
    loss, expected_grad = naive.squared_error(output, target)
    assert scalars[1] == pytest.approx(loss, rel=1e-12)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-6)


def test_combine_and_device_scalar_updates(rng):
    a, b, x = (rng.standard_normal(50) for _ in range(3))
    out = np.empty(50)
    lbfgs_ops.combine(out, a, b, alpha=0.5, beta=-2.0)
    np.testing.assert_allclose(out, naive.combine(a, b, 0.5, -2.0), rtol=1e-15)

    scalars = np.array([0.0, 3.0, 1.0, 4.0])
    y = a.copy()
    lbfgs_ops.add_scaled(y, x, scalars, plus=1, minus=2, over=3)  # y += (3 - 1) / 4 x
    np.testing.assert_allclose(y, naive.add_scaled(a, x, scalars, 1, 2, 3), rtol=1e-15)
    y = a.copy()
    lbfgs_ops.add_scaled(y, x, scalars, plus=0, minus=1, over=3)  # y -= 3 / 4 x
    expected = naive.add_scaled(a, x, scalars, 0, 1, 3)
    np.testing.assert_allclose(y, expected, rtol=1e-15)
    lbfgs_ops.scale(y, scalars, numerator=3, denominator=1)
    np.testing.assert_allclose(y, naive.scale(expected, scalars, 3, 1), rtol=1e-14)


def test_combine_may_alias_its_input(rng):
    a = rng.standard_normal(20).astype(np.float32)
    expected = naive.combine(a, a, 1.0, 2.0)
    lbfgs_ops.combine(a, a, a, alpha=1.0, beta=2.0)
    np.testing.assert_allclose(a, expected, rtol=1e-6)


def test_copy_scalar(rng):
    scalars = np.zeros(3)
    value = rng.standard_normal()
    lbfgs_ops.copy_scalar(value, scalars, 1)
    lbfgs_ops.copy_scalar(np.array([2 * value]), scalars, 2)
    np.testing.assert_array_equal(scalars, [0.0, value, 2 * value])
