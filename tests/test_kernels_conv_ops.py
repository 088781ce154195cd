"""CPU kernels of the deconvolution against the slow NumPy references of naive.py.

im2col/col2im, ReLU, ceil-mode max-pooling and the L-BFGS vector operations, on
small random inputs (odd sizes included, where ceil rounding matters).
"""

import naive
import numpy as np
import pytest

from diva_numba.kernels import activations, im2col, lbfgs_ops, reductions, squared_error, vector_ops


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
    reductions.dot(a, b, scalars, 2)
    expected = naive.dot(a, b)
    assert scalars[2] == pytest.approx(expected, rel=1e-12, abs=1e-12)
    assert scalars[0] == scalars[1] == 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_squared_error_loss_and_gradient(rng, dtype):
    output = rng.standard_normal(257).astype(dtype)
    target = rng.standard_normal(257).astype(dtype)
    grad = np.empty_like(output)
    scalars = np.zeros(2)
    squared_error.squared_error(output, target, grad_out=grad, scalars=scalars, slot=1)
    loss, expected_grad = naive.squared_error(output, target)
    assert scalars[1] == pytest.approx(loss, rel=1e-12)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-6)


def test_combine_and_device_scalar_updates(rng):
    a, b, x = (rng.standard_normal(50) for _ in range(3))
    out = np.empty(50)
    vector_ops.combine(out, a, b, alpha=0.5, beta=-2.0)
    np.testing.assert_allclose(out, naive.combine(a, b, 0.5, -2.0), rtol=1e-15)

    scalars = np.array([0.0, 3.0, 1.0, 4.0])
    y = a.copy()
    vector_ops.add_scaled(y, x, scalars, plus=1, minus=2, over=3)  # y += (3 - 1) / 4 x
    np.testing.assert_allclose(y, naive.add_scaled(a, x, scalars, 1, 2, 3), rtol=1e-15)
    y = a.copy()
    vector_ops.add_scaled(y, x, scalars, plus=0, minus=1, over=3)  # y -= 3 / 4 x
    expected = naive.add_scaled(a, x, scalars, 0, 1, 3)
    np.testing.assert_allclose(y, expected, rtol=1e-15)
    vector_ops.scale(y, scalars, numerator=3, denominator=1)
    np.testing.assert_allclose(y, naive.scale(expected, scalars, 3, 1), rtol=1e-14)


def test_combine_may_alias_its_input(rng):
    a = rng.standard_normal(20).astype(np.float32)
    expected = naive.combine(a, a, 1.0, 2.0)
    vector_ops.combine(a, a, a, alpha=1.0, beta=2.0)
    np.testing.assert_allclose(a, expected, rtol=1e-6)


def test_copy_scalar(rng):
    scalars = np.zeros(3)
    value = rng.standard_normal()
    reductions.copy_scalar(value, scalars, 1)
    reductions.copy_scalar(np.array([2 * value]), scalars, 2)
    np.testing.assert_array_equal(scalars, [0.0, value, 2 * value])


# --- fused kernels of the deconvolution -------------------------------------------------


def conv_output(rng, shape, dtype=np.float32):
    """A GEMM output z and a bias that leave some ReLUs closed, some open."""
    pre = rng.standard_normal(shape).astype(dtype)
    bias = rng.standard_normal(shape[0]).astype(dtype)
    return pre, bias


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_im2col_with_bias_unfolds_the_relu(rng, dtype):
    pre, bias = conv_output(rng, random_shape(rng), dtype)
    expected = naive.im2col(naive.relu(pre, bias))
    np.testing.assert_array_equal(im2col.im2col(pre, bias=bias), expected)


def test_relu_forward_out_of_place(rng):
    pre, bias = conv_output(rng, (3, 4, 5))
    original = pre.copy()
    out = np.full_like(pre, np.nan)
    assert activations.relu_forward(pre, bias=bias, out=out) is out
    np.testing.assert_array_equal(out, naive.relu(original, bias))
    np.testing.assert_array_equal(pre, original)


@pytest.mark.parametrize("size", [(1, 1), (4, 4), (5, 3), (7, 8)])
def test_maxpool_with_bias_pools_the_relu(rng, size):
    pre, bias = conv_output(rng, (3, *size))
    pre[0] = -10  # a channel whose ReLU is closed everywhere: ties at zero
    pooled, argmax = activations.maxpool_forward(pre, bias=bias)
    expected_pooled, expected_argmax = naive.maxpool(naive.relu(pre, bias))
    np.testing.assert_array_equal(pooled, expected_pooled)
    np.testing.assert_array_equal(argmax, expected_argmax)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_col2im_through_the_relu(rng, dtype):
    channels, height, width = random_shape(rng)
    pre, bias = conv_output(rng, (channels, height, width), dtype)
    cols = rng.standard_normal((channels * 9, height * width)).astype(dtype)
    result = im2col.col2im(cols, height, width, pre_activation=pre, bias=bias)
    expected = naive.relu_backward(naive.col2im(cols, height, width), naive.relu(pre, bias))
    rtol = 1e-6 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(result, expected, rtol=rtol, atol=rtol)
    # Bitwise the separate kernels, which the network used before the fusion.
    separate = activations.relu_backward(
        im2col.col2im(cols, height, width), activations.relu_forward(pre.copy(), bias=bias)
    )
    np.testing.assert_array_equal(result, separate)
    with pytest.raises(ValueError, match="together"):
        im2col.col2im(cols, height, width, pre_activation=pre)


@pytest.mark.parametrize("size", [(1, 1), (2, 2), (5, 3), (7, 8)])
def test_col2im_unpool(rng, size):
    pre, bias = conv_output(rng, (3, *size))
    _, argmax = activations.maxpool_forward(pre, bias=bias)
    pooled_size = argmax.shape[1] * argmax.shape[2]
    cols = rng.standard_normal((3 * 9, pooled_size)).astype(np.float32)
    out = np.full(pre.shape, np.nan, dtype=np.float32)
    result = im2col.col2im_unpool(cols, argmax, pre, bias, out=out)
    assert result is out
    np.testing.assert_allclose(
        result, naive.col2im_unpool(cols, argmax, pre, bias), rtol=1e-6, atol=1e-6
    )
    separate = activations.relu_backward(
        activations.maxpool_backward(im2col.col2im(cols, *argmax.shape[1:]), argmax, *size),
        activations.relu_forward(pre.copy(), bias=bias),
    )
    np.testing.assert_array_equal(result, separate)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_squared_error(rng, dtype):
    pre, bias = conv_output(rng, (3, 40), dtype)
    target = np.abs(rng.standard_normal((3, 40))).astype(dtype)
    grad = np.full_like(pre, np.nan)
    scalars = np.zeros(2)
    squared_error.relu_squared_error(pre, bias, target, grad_out=grad, scalars=scalars, slot=1)
    loss, expected_grad = naive.relu_squared_error(pre, bias, target)
    assert scalars[1] == pytest.approx(loss, rel=1e-12)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-6)
    # Bitwise the separate kernels.
    activation = activations.relu_forward(pre.copy(), bias=bias).reshape(-1)
    separate = np.empty_like(activation)
    squared_error.squared_error(
        activation, target.reshape(-1), grad_out=separate, scalars=scalars, slot=0
    )
    activations.relu_backward(separate, activation)
    np.testing.assert_array_equal(grad.reshape(-1), separate)
    assert scalars[0] == scalars[1]


# --- the optimiser's passes -----------------------------------------------------------------

HISTORY = 3
LAYOUT = {"gradient_row": 2, "direction": 3, "first_history": 4, "history": HISTORY}


def optimiser_rows(rng, size, dtype=np.float64):
    return rng.standard_normal((4 + 2 * HISTORY, size)).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("size", [1, 7, 300])
def test_trial_scalars(rng, dtype, size):
    rows = optimiser_rows(rng, size, dtype)
    gradient = rng.standard_normal(size).astype(dtype)
    count = lbfgs_ops.trial_sum_count(HISTORY)
    scalars = np.full(3 + count, np.nan)
    lbfgs_ops.trial_scalars(rows, gradient, np.array([2.5]), scalars, current=0, trial=1,
                            loss_slot=0, first_slot=3, **LAYOUT)  # fmt: skip
    expected = naive.trial_scalars(rows, gradient, 0, 1, **LAYOUT)
    assert scalars[0] == 2.5
    assert np.isnan(scalars[1:3]).all()
    np.testing.assert_allclose(scalars[3:], expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", [lbfgs_ops.STEP_PLAIN, lbfgs_ops.STEP_TAKE_GRADIENT,
                                  lbfgs_ops.STEP_ACCEPT])  # fmt: skip
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lbfgs_step(rng, mode, dtype):
    size = 50
    rows = optimiser_rows(rng, size, dtype)
    gradient = rng.standard_normal(size).astype(dtype)
    coefficients = rng.standard_normal(2 * HISTORY + 1)
    coefficients[1] = 0.0  # a slot not in use: its row is not read
    rows[LAYOUT["first_history"] + 1] = np.nan
    arguments = {"mode": mode, "slot": 2, "current": 1, "previous": 0, "out": 0, "step": 0.75}
    expected_rows, expected_slope = naive.lbfgs_step(rows, gradient, coefficients, **arguments,
                                                     **LAYOUT)  # fmt: skip
    scalars = np.zeros(2)
    lbfgs_ops.lbfgs_step(rows, gradient, coefficients, scalars, slope_slot=1, **arguments, **LAYOUT)
    rtol = 1e-6 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(rows, expected_rows, rtol=rtol, atol=rtol)
    assert scalars[1] == pytest.approx(expected_slope, rel=1e-5 if dtype == np.float32 else 1e-12)
    with pytest.raises(ValueError, match="coefficients"):
        lbfgs_ops.lbfgs_step(rows, gradient, coefficients[:-1], scalars, slope_slot=1,
                             **arguments, **LAYOUT)  # fmt: skip
