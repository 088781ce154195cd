"""VGG sub-networks: forward against naive.py's NumPy network, gradients against finite differences.

The weights are random with the real layer structure (names, pools, chaining) and
tiny channel counts, so that every test runs in a moment.
"""

import naive
import numpy as np
import pytest
from inputs import vgg_weights

from diva_numba.errors import ModelError
from diva_numba.models import vgg
from diva_numba.network.subnetwork import FEATURE_LEVELS, SubNetwork, deconvolve

#: Tiny stand-ins for VGG-19's 64..512 channels, per block.
TINY_CHANNELS = {"1": 3, "2": 4, "3": 5, "4": 6, "5": 7}
DECONVOLUTIONS = [(3, 5), (2, 4), (1, 3), (0, 2)]


def tiny_weights(rng, dtype=np.float32, channels=TINY_CHANNELS):
    return vgg_weights(rng, channels, dtype=dtype)


def level_channels(level):
    return 3 if level == 0 else TINY_CHANNELS[str(level)]


def reference_levels(weights, x, start_level, end_level):
    """Feature maps (float64) at every level after ``start_level``, by the slow network."""
    return naive.vgg_levels(weights, x, vgg.layers_between(start_level, end_level))


def random_input(rng, level, height, width, dtype=np.float32):
    x = rng.standard_normal((level_channels(level), height, width))
    return (np.abs(x) if level > 0 else x).astype(dtype)  # post-ReLU maps are >= 0


# --- forward --------------------------------------------------------------------------


@pytest.mark.parametrize(("start", "end"), DECONVOLUTIONS)
def test_forward_matches_reference(rng, start, end):
    weights = tiny_weights(rng)
    network = SubNetwork(weights, start, end)
    height, width = (int(v) for v in rng.integers(5, 14, size=2))
    x = random_input(rng, start, height, width)
    output = network.forward(x)
    expected = reference_levels(weights, x.astype(np.float64), start, end)[end]
    assert output.dtype == np.float32
    assert output.shape == network.output_shape(height, width) == expected.shape
    np.testing.assert_allclose(output, expected, rtol=1e-4, atol=1e-4)


def test_forward_from_level_0_matches_reference_at_every_level(rng):
    weights = tiny_weights(rng)
    height, width = 19, 13  # odd sizes: every pool rounds up
    image = random_input(rng, 0, height, width)
    features = SubNetwork(weights, 0, 5, max_workspaces=1).forward_levels(image, FEATURE_LEVELS)
    expected = reference_levels(weights, image.astype(np.float64), 0, 5)
    assert len(features) == len(FEATURE_LEVELS)
    for level, feature in zip(FEATURE_LEVELS, features, strict=True):
        assert feature.shape == (level_channels(level), *vgg.level_shape(height, width, level))
        np.testing.assert_allclose(feature, expected[level], rtol=1e-4, atol=1e-4)


def test_forward_levels_returns_requested_levels_in_order(rng):
    weights = tiny_weights(rng)
    network = SubNetwork(weights, 2, 4)
    x = random_input(rng, 2, 9, 8)
    level4, level3 = network.forward_levels(x, (4, 3))
    expected = reference_levels(weights, x.astype(np.float64), 2, 4)
    np.testing.assert_allclose(level3, expected[3], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(level4, expected[4], rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="level 2"):
        network.forward_levels(x, (2,))


def test_buffers_are_reused_but_results_are_not_shared(rng):
    weights = tiny_weights(rng)
    network = SubNetwork(weights, 1, 3, max_workspaces=1)
    first = random_input(rng, 1, 7, 6)
    second = random_input(rng, 1, 7, 6)
    out_first = network.forward(first)
    out_second = network.forward(second)
    np.testing.assert_array_equal(network.forward(first), out_first)
    assert not np.array_equal(out_first, out_second)
    other_shape = random_input(rng, 1, 5, 11)
    expected = reference_levels(weights, other_shape.astype(np.float64), 1, 3)[3]
    np.testing.assert_allclose(network.forward(other_shape), expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(network.forward(first), out_first)


# --- loss and gradient ----------------------------------------------------------------


@pytest.mark.parametrize(("start", "end"), DECONVOLUTIONS)
def test_loss_matches_reference(rng, start, end):
    weights = tiny_weights(rng)
    network = SubNetwork(weights, start, end)
    x = random_input(rng, start, 9, 10, dtype=np.float64)
    target = np.abs(rng.standard_normal(network.output_shape(9, 10)))
    loss, grad = network.loss_and_gradient(x, target)
    expected = reference_levels(weights, x, start, end)[end]
    assert isinstance(loss, float)
    assert loss == pytest.approx(naive.squared_error(expected, target)[0], rel=1e-10)
    assert grad.shape == x.shape and grad.dtype == np.float64


def assert_directional_derivative(network, x, target, grad, direction):
    """``<grad, direction>`` against central differences of the loss along ``direction``.

    ReLU kinks and pooling switches make the loss piecewise smooth: a kink within the
    step of ``x`` spoils a central difference. Random inputs put kinks at random
    distances, so some step in a decade-spaced series stays clear of the nearest one;
    a wrong gradient, in contrast, disagrees at every step.
    """
    analytic = float(np.vdot(grad, direction))
    numeric = []
    for epsilon in (1e-6, 1e-7, 1e-8):
        plus, _ = network.loss_and_gradient(x + epsilon * direction, target)
        minus, _ = network.loss_and_gradient(x - epsilon * direction, target)
        numeric.append((plus - minus) / (2 * epsilon))
        if analytic == pytest.approx(numeric[-1], rel=1e-5, abs=1e-9 * abs(plus)):
            return
    pytest.fail(f"directional derivative {analytic} vs finite differences {numeric}")


@pytest.mark.parametrize(("start", "end"), DECONVOLUTIONS)
def test_gradient_matches_finite_differences(rng, start, end):
    weights = tiny_weights(rng, dtype=np.float64)
    network = SubNetwork(weights, start, end)
    x = random_input(rng, start, 11, 9, dtype=np.float64)
    target = np.abs(rng.standard_normal(network.output_shape(11, 9)))
    _, grad = network.loss_and_gradient(x, target)
    grad = grad.copy()
    for _ in range(3):
        assert_directional_derivative(network, x, target, grad, rng.standard_normal(x.shape))


def test_gradient_of_each_pixel(rng):
    # Every coordinate of the input gradient, on the smallest map that pools.
    weights = tiny_weights(rng, dtype=np.float64)
    network = SubNetwork(weights, 0, 2)
    x = random_input(rng, 0, 3, 3, dtype=np.float64)
    target = np.abs(rng.standard_normal(network.output_shape(3, 3)))
    _, grad = network.loss_and_gradient(x, target)
    grad = grad.copy()
    for index in np.ndindex(x.shape):
        one_hot = np.zeros_like(x)
        one_hot[index] = 1.0
        assert_directional_derivative(network, x, target, grad, one_hot)


def test_target_shape_is_checked(rng):
    network = SubNetwork(tiny_weights(rng), 1, 3)
    x = random_input(rng, 1, 8, 8)
    with pytest.raises(ValueError, match="target"):
        network.loss_and_gradient(x, np.zeros((5, 4, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="target"):
        network.loss_and_gradient(x, np.zeros(network.output_shape(8, 8), dtype=np.float64))
    with pytest.raises(ValueError, match="map"):
        network.forward(np.zeros((2, 8, 8), dtype=np.float32))


# --- construction ---------------------------------------------------------------------


def test_missing_or_mismatched_weights_are_model_errors(rng):
    weights = tiny_weights(rng)
    incomplete = {name: value for name, value in weights.items() if name != "conv3_3"}
    with pytest.raises(ModelError, match="conv3_3"):
        SubNetwork(incomplete, 2, 4)
    broken = dict(weights)
    weight, bias = broken["conv2_2"]
    broken["conv2_2"] = (weight[:, :2], bias)
    with pytest.raises(ModelError, match="conv2_2"):
        SubNetwork(broken, 1, 3)


@pytest.mark.parametrize(("start", "end"), DECONVOLUTIONS)
def test_flop_count(rng, start, end):
    weights = tiny_weights(rng)
    network = SubNetwork(weights, start, end)
    height, width = 13, 10
    expected = 0
    for name in vgg.layers_between(start, end):
        out_channels, in_channels = weights[name][0].shape[:2]
        expected += 2 * out_channels * in_channels * 9 * height * width
        if name in vgg.POOL_AFTER:
            height, width = (height + 1) // 2, (width + 1) // 2
    assert network.flops(13, 10, backward=False) == expected
    assert network.flops(13, 10) == 2 * expected


def test_layers_follow_the_vgg_contract(rng):
    network = SubNetwork(tiny_weights(rng), 3, 5)
    assert network.layers == vgg.layers_between(3, 5)
    assert (network.in_channels, network.out_channels) == (TINY_CHANNELS["3"], TINY_CHANNELS["5"])


# --- deconvolution --------------------------------------------------------------------


def test_deconvolution_recovers_features(rng):
    # Widening channels, as in VGG, keeps the inversion well posed, and positive biases
    # keep most ReLUs open near the solution. (Tiny random networks otherwise have
    # dead-ReLU local minima that stop any optimiser at a loss ratio of 1e-2..1e-1.)
    weights = tiny_weights(rng, channels={**TINY_CHANNELS, "1": 12, "2": 16})
    weights = {name: (weight, bias + 2) for name, (weight, bias) in weights.items()}
    network = SubNetwork(weights, 0, 2)
    x_true = random_input(rng, 0, 8, 8)
    target = network.forward(x_true)
    initial = (x_true + 0.1 * rng.standard_normal(x_true.shape)).astype(np.float32)
    result = deconvolve(network, target, initial)
    assert result.x.shape == initial.shape and result.x.dtype == np.float32
    assert result.losses[0] == pytest.approx(network.loss_and_gradient(initial, target)[0])
    assert result.loss <= 1e-2 * result.losses[0]  # median 5e-5, worst of 200 runs 1e-3
    assert result.loss == pytest.approx(network.loss_and_gradient(result.x, target)[0], rel=1e-3)
    assert all(b <= a for a, b in zip(result.losses, result.losses[1:], strict=False))
    assert len(result.losses) == result.iterations + 1
