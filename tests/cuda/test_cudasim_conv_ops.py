"""CUDA kernels of the deconvolution vs their CPU twins, and the GPU orchestration.

Runs under Numba's CUDA simulator (or a real GPU with ``DIVA_TEST_GPU=1``) on tiny
inputs, with blocks shrunk so that every launch spans several of them. The GEMMs
are CuPy's on a real GPU; here a stand-in array module does them on the host, so
that everything else on the GPU path (kernels, workspaces, the optimiser's device
scalars) runs on device arrays.
"""

import types

import naive
import numpy as np
import pytest
from device_checks import FLOAT_TOLERANCE, assert_on_device
from inputs import random_quadratic, vgg_weights
from numba import cuda

from diva_numba.gpu.device import to_host
from diva_numba.kernels import (
    activations,
    im2col,
    lbfgs_ops,
    reductions,
    squared_error,
    targets,
    vector_ops,
)
from diva_numba.models import vgg
from diva_numba.network import subnetwork as network_module
from diva_numba.optim.lbfgs import LBFGSParams, minimize_lbfgs

pytestmark = pytest.mark.cudasim


# --- im2col / col2im --------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(2, 3, 5), (1, 1, 1), (3, 4, 2)])
def test_im2col(rng, shape):
    image = rng.standard_normal(shape).astype(np.float32)
    result = im2col.im2col(cuda.to_device(image))
    assert_on_device(result)
    np.testing.assert_array_equal(to_host(result), im2col.im2col_cpu(image))


@pytest.mark.parametrize("shape", [(2, 3, 5), (1, 1, 1), (3, 4, 2)])
def test_col2im(rng, shape):
    channels, height, width = shape
    cols = rng.standard_normal((channels * 9, height * width)).astype(np.float32)
    result = im2col.col2im(cuda.to_device(cols), height, width)
    assert_on_device(result)
    np.testing.assert_allclose(
        to_host(result), im2col.col2im_cpu(cols, height, width), **FLOAT_TOLERANCE
    )


# --- ReLU and pooling -----------------------------------------------------------------------


def test_relu_forward(rng):
    values = rng.standard_normal((3, 4, 5)).astype(np.float32)
    bias = rng.standard_normal(3).astype(np.float32)
    device_values = cuda.to_device(values)
    activations.relu_forward(device_values, bias=cuda.to_device(bias))
    expected = activations.relu_forward(values.copy(), bias=bias)
    np.testing.assert_allclose(to_host(device_values), expected, **FLOAT_TOLERANCE)
    device_values = cuda.to_device(values)
    activations.relu_forward(device_values)
    np.testing.assert_array_equal(to_host(device_values), naive.relu(values))


def test_relu_backward(rng):
    activation = np.maximum(rng.standard_normal((2, 5, 3)), 0).astype(np.float32)
    grad = rng.standard_normal((2, 5, 3)).astype(np.float32)
    device_grad = cuda.to_device(grad)
    activations.relu_backward(device_grad, cuda.to_device(activation))
    np.testing.assert_array_equal(
        to_host(device_grad), activations.relu_backward(grad.copy(), activation)
    )


@pytest.mark.parametrize("shape", [(2, 5, 7), (1, 1, 1), (3, 4, 3)])
def test_maxpool_forward_and_backward(rng, shape):
    values = rng.integers(0, 3, size=shape).astype(np.float32)  # ties on purpose
    pooled, argmax = activations.maxpool_forward(cuda.to_device(values))
    assert_on_device(pooled)
    expected_pooled, expected_argmax = activations.maxpool_forward(values)
    np.testing.assert_array_equal(to_host(pooled), expected_pooled)
    np.testing.assert_array_equal(to_host(argmax), expected_argmax)

    grad_pooled = rng.standard_normal(expected_pooled.shape).astype(np.float32)
    grad = activations.maxpool_backward(cuda.to_device(grad_pooled), argmax, *shape[1:])
    assert_on_device(grad)
    expected = activations.maxpool_backward(grad_pooled, expected_argmax, *shape[1:])
    np.testing.assert_array_equal(to_host(grad), expected)


# --- L-BFGS vector operations -------------------------------------------------------------------


@pytest.mark.parametrize("block", [[8], [3]])
@pytest.mark.parametrize("size", [1, 37])
def test_reductions(rng, monkeypatch, block, size):
    monkeypatch.setattr(targets, "BLOCK_1D", block)
    a = rng.standard_normal(size).astype(np.float32)
    b = rng.standard_normal(size).astype(np.float32)
    device_scalars = cuda.to_device(np.zeros(3))
    host_scalars = np.zeros(3)
    reductions.dot(cuda.to_device(a), cuda.to_device(b), device_scalars, 1)
    reductions.dot(a, b, host_scalars, 1)

    device_grad = cuda.device_array(size, dtype=np.float32)
    host_grad = np.empty(size, dtype=np.float32)
    squared_error.squared_error(
        cuda.to_device(a), cuda.to_device(b), grad_out=device_grad, scalars=device_scalars, slot=2
    )
    squared_error.squared_error(a, b, grad_out=host_grad, scalars=host_scalars, slot=2)
    np.testing.assert_allclose(to_host(device_scalars), host_scalars, rtol=1e-12)
    np.testing.assert_allclose(to_host(device_grad), host_grad, **FLOAT_TOLERANCE)


def test_vector_updates(rng):
    a, b, x = (rng.standard_normal(19).astype(np.float32) for _ in range(3))
    scalars = np.array([0.0, 1.5, -0.5, 4.0])
    device_scalars = cuda.to_device(scalars)
    device_a, device_b, device_x = (cuda.to_device(v) for v in (a, b, x))

    vector_ops.combine(device_a, device_a, device_b, alpha=2.0, beta=-1.0)
    vector_ops.combine(a, a, b, alpha=2.0, beta=-1.0)
    vector_ops.add_scaled(device_a, device_x, device_scalars, plus=1, minus=2, over=3)
    vector_ops.add_scaled(a, x, scalars, plus=1, minus=2, over=3)
    vector_ops.scale(device_a, device_scalars, numerator=3, denominator=2)
    vector_ops.scale(a, scalars, numerator=3, denominator=2)
    np.testing.assert_allclose(to_host(device_a), a, **FLOAT_TOLERANCE)

    reductions.copy_scalar(cuda.to_device(np.array([7.0])), device_scalars, 0)
    reductions.copy_scalar(-3.0, device_scalars, 1)
    np.testing.assert_array_equal(to_host(device_scalars), [7.0, -3.0, -0.5, 4.0])


# --- fused kernels of the deconvolution ----------------------------------------------------


def conv_output(rng, shape):
    return rng.standard_normal(shape).astype(np.float32), rng.standard_normal(shape[0]).astype(
        np.float32
    )


@pytest.mark.parametrize("shape", [(2, 3, 5), (1, 1, 1), (3, 5, 4)])
def test_fused_forward_kernels(rng, shape):
    pre, bias = conv_output(rng, shape)
    device_pre, device_bias = cuda.to_device(pre), cuda.to_device(bias)
    columns = im2col.im2col(device_pre, bias=device_bias)
    np.testing.assert_array_equal(to_host(columns), im2col.im2col(pre, bias=bias))
    pooled, argmax = activations.maxpool_forward(device_pre, bias=device_bias)
    expected_pooled, expected_argmax = activations.maxpool_forward(pre, bias=bias)
    np.testing.assert_array_equal(to_host(pooled), expected_pooled)
    np.testing.assert_array_equal(to_host(argmax), expected_argmax)
    out = cuda.device_array(shape, dtype=np.float32)
    activations.relu_forward(device_pre, bias=device_bias, out=out)
    np.testing.assert_array_equal(to_host(out), naive.relu(pre, bias))
    np.testing.assert_array_equal(to_host(device_pre), pre)


@pytest.mark.parametrize("shape", [(2, 3, 5), (1, 1, 1), (3, 5, 4)])
def test_fused_backward_kernels(rng, shape):
    channels, height, width = shape
    pre, bias = conv_output(rng, shape)
    device_pre, device_bias = cuda.to_device(pre), cuda.to_device(bias)
    cols = rng.standard_normal((channels * 9, height * width)).astype(np.float32)
    result = im2col.col2im(
        cuda.to_device(cols), height, width, pre_activation=device_pre, bias=device_bias
    )
    # Both targets add each pixel's nine taps in the same order: bitwise equal.
    np.testing.assert_array_equal(
        to_host(result), im2col.col2im(cols, height, width, pre_activation=pre, bias=bias)
    )
    _, argmax = activations.maxpool_forward(pre, bias=bias)
    pooled_cols = rng.standard_normal((channels * 9, argmax[0].size)).astype(np.float32)
    result = im2col.col2im_unpool(
        cuda.to_device(pooled_cols), cuda.to_device(argmax), device_pre, device_bias
    )
    assert_on_device(result)
    expected = im2col.col2im_unpool(pooled_cols, argmax, pre, bias)
    np.testing.assert_array_equal(to_host(result), expected)
    np.testing.assert_allclose(
        expected, naive.col2im_unpool(pooled_cols, argmax, pre, bias), rtol=1e-6, atol=1e-6
    )


@pytest.mark.parametrize("block", [[8], [3]])
def test_relu_squared_error(rng, monkeypatch, block):
    monkeypatch.setattr(targets, "BLOCK_1D", block)
    monkeypatch.setattr(reductions, "MAX_PARTIALS", 4)  # several blocks per partial sum
    pre, bias = conv_output(rng, (3, 17))
    target = np.abs(rng.standard_normal((3, 17))).astype(np.float32)
    grad = cuda.device_array((3, 17), dtype=np.float32)
    scalars = cuda.to_device(np.zeros(2))
    squared_error.relu_squared_error(cuda.to_device(pre), cuda.to_device(bias),
                                     cuda.to_device(target), grad_out=grad, scalars=scalars,
                                     slot=1)  # fmt: skip
    host_grad, host_scalars = np.empty_like(pre), np.zeros(2)
    squared_error.relu_squared_error(pre, bias, target, grad_out=host_grad, scalars=host_scalars,
                                     slot=1)  # fmt: skip
    np.testing.assert_array_equal(to_host(grad), host_grad)
    np.testing.assert_allclose(to_host(scalars), host_scalars, rtol=1e-12)


HISTORY = 2
LAYOUT = {"gradient_row": 2, "direction": 3, "first_history": 4, "history": HISTORY}


@pytest.mark.parametrize("block", [[8], [3]])
@pytest.mark.parametrize("size", [1, 29])
def test_trial_scalars(rng, monkeypatch, block, size):
    monkeypatch.setattr(targets, "BLOCK_1D", block)
    rows = rng.standard_normal((4 + 2 * HISTORY, size)).astype(np.float32)
    gradient = rng.standard_normal(size).astype(np.float32)
    count = lbfgs_ops.trial_sum_count(HISTORY)
    work = reductions.ReductionWork(cuda.to_device(rows), count)
    scalars = cuda.to_device(np.zeros(2 + count))
    for _ in range(2):  # the same work again: the arrival counter was reset
        lbfgs_ops.trial_scalars(cuda.to_device(rows), cuda.to_device(gradient),
                                cuda.to_device(np.array([1.5])), scalars, current=1, trial=0,
                                loss_slot=0, first_slot=2, work=work, **LAYOUT)  # fmt: skip
        result = to_host(scalars)
        assert result[0] == 1.5
        np.testing.assert_allclose(
            result[2:], naive.trial_scalars(rows, gradient, 1, 0, **LAYOUT), rtol=1e-12, atol=1e-12
        )
    assert to_host(work.counter)[0] == 0


@pytest.mark.parametrize(
    "mode", [lbfgs_ops.STEP_PLAIN, lbfgs_ops.STEP_TAKE_GRADIENT, lbfgs_ops.STEP_ACCEPT]
)
def test_lbfgs_step(rng, mode):
    size = 23
    rows = rng.standard_normal((4 + 2 * HISTORY, size)).astype(np.float32)
    gradient = rng.standard_normal(size).astype(np.float32)
    coefficients = tuple(rng.standard_normal(2 * HISTORY + 1))
    arguments = {"mode": mode, "slot": 1, "current": 0, "previous": 1, "out": 1, "step": 0.5}
    device_rows, scalars = cuda.to_device(rows), cuda.to_device(np.zeros(2))
    lbfgs_ops.lbfgs_step(device_rows, cuda.to_device(gradient), coefficients, scalars,
                         slope_slot=1, **arguments, **LAYOUT)  # fmt: skip
    host_scalars = np.zeros(2)
    lbfgs_ops.lbfgs_step(rows, gradient, coefficients, host_scalars, slope_slot=1, **arguments,
                         **LAYOUT)  # fmt: skip
    np.testing.assert_allclose(to_host(device_rows), rows, **FLOAT_TOLERANCE)
    np.testing.assert_allclose(to_host(scalars), host_scalars, rtol=1e-12)


# --- the optimiser and the network on device arrays -------------------------------


def test_lbfgs_on_device_arrays_follows_the_cpu_run(rng):
    size = 6
    host_objective, _ = random_quadratic(rng, size)

    def device_objective(x):
        value, grad = host_objective(to_host(x))
        return cuda.to_device(np.array([value])), cuda.to_device(grad)

    x0 = rng.standard_normal(size)
    params = LBFGSParams(max_iterations=4)
    on_host = minimize_lbfgs(host_objective, x0, params=params)
    on_device = minimize_lbfgs(device_objective, cuda.to_device(x0), params=params)
    assert_on_device(on_device.x)
    assert (on_device.iterations, on_device.evaluations) == (
        on_host.iterations,
        on_host.evaluations,
    )
    np.testing.assert_allclose(to_host(on_device.x), on_host.x, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(on_device.losses, on_host.losses, rtol=1e-10)


def host_gemm_module():
    """What the network needs from CuPy, for Numba device arrays, GEMM on the host."""

    def matmul(a, b, out):
        out.copy_to_device(np.ascontiguousarray(to_host(a) @ to_host(b)))
        return out

    return types.SimpleNamespace(
        matmul=matmul,
        asarray=lambda a, dtype=None: cuda.to_device(np.ascontiguousarray(a, dtype=dtype)),
        ascontiguousarray=lambda a: a,
        copy=lambda a: cuda.to_device(to_host(a)),
        empty=lambda shape, dtype: cuda.device_array(shape, dtype=np.dtype(dtype)),
    )


def test_network_pass_on_device_arrays(rng, monkeypatch):
    monkeypatch.setattr(network_module, "array_module", lambda array: host_gemm_module())
    weights = vgg_weights(rng, {"1": 2, "2": 2}, layers=vgg.layers_between(0, 2), weight_scale=0.5)
    network = network_module.SubNetwork(weights, 0, 2)
    x = rng.standard_normal((3, 3, 4)).astype(np.float32)
    target = np.abs(rng.standard_normal(network.output_shape(3, 4))).astype(np.float32)

    device_output = network.forward(cuda.to_device(x))
    assert_on_device(device_output)
    loss, grad = network.loss_and_gradient(cuda.to_device(x), cuda.to_device(target))
    assert_on_device(loss)
    assert_on_device(grad)

    monkeypatch.undo()
    expected_loss, expected_grad = network.loss_and_gradient(x, target)
    np.testing.assert_allclose(to_host(device_output), network.forward(x), **FLOAT_TOLERANCE)
    assert to_host(loss)[0] == pytest.approx(expected_loss, rel=1e-5)
    np.testing.assert_allclose(to_host(grad), expected_grad, rtol=1e-4, atol=1e-5)
