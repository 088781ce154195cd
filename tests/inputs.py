"""Random inputs shared by the kernel, optimiser, network and CUDA-simulator tests.

Every maker draws from the test's ``rng`` fixture (``tests/conftest.py``), so a
failing case replays with the seed in its report.
"""

import numpy as np

from diva_numba.models import vgg


def unit_features(rng, channels, height, width):
    """Random float32 (C, H, W) features, L2-normalised per pixel."""
    features = rng.standard_normal((channels, height, width))
    return (features / np.linalg.norm(features, axis=0, keepdims=True)).astype(np.float32)


def feature_pairs(rng, channels, source_shape, target_shape, features=unit_features):
    """(A, A', B, B'): ``features(rng, C, H, W)`` maps on the source, then the target grid."""
    a, a_prime = (features(rng, channels, *source_shape) for _ in range(2))
    b, b_prime = (features(rng, channels, *target_shape) for _ in range(2))
    return a, a_prime, b, b_prime


def random_field(rng, shape, bounds, spill=0):
    """Int32 ``(*shape, 2)`` random matches in a ``bounds`` map, or up to ``spill`` px outside."""
    ys = rng.integers(-spill, bounds[0] + spill, shape)
    xs = rng.integers(-spill, bounds[1] + spill, shape)
    return np.stack([ys, xs], axis=-1).astype(np.int32)


def identity(shape):
    """Int32 ``(*shape, 2)`` field matching every pixel to itself."""
    ys, xs = np.indices(shape)
    return np.stack([ys, xs], axis=-1).astype(np.int32)


def random_flow(rng, shape, spread):
    """Float32 ``(*shape, 2)`` flow of ``(dx, dy)``, uniform in ``[-spread, spread)``."""
    return rng.uniform(-spread, spread, size=(*shape, 2)).astype(np.float32)


def random_quadratic(rng, size, dtype=np.float64):
    """``0.5 x'Ax - b'x`` with SPD ``A`` (eigenvalues 1..10), and its minimiser.

    Returns ``(fun_and_grad, minimiser)``; the gradient comes back in ``dtype``.
    """
    basis, _ = np.linalg.qr(rng.standard_normal((size, size)))
    matrix = basis @ np.diag(np.geomspace(1.0, 10.0, size)) @ basis.T
    offset = rng.standard_normal(size)

    def fun_and_grad(x):
        x64 = x.astype(np.float64)
        grad = matrix @ x64 - offset
        return float(0.5 * x64 @ matrix @ x64 - offset @ x64), grad.astype(dtype)

    return fun_and_grad, np.linalg.solve(matrix, offset)


def vgg_weights(rng, channels, *, layers=vgg.CONV_LAYERS, dtype=np.float32, weight_scale=None):
    """Random weights with VGG-19's layer names and chaining, for a 3-channel input.

    ``channels`` maps a block's digit (``"1"`` .. ``"5"``) to the output channels of its
    layers. Weights are normal times ``weight_scale`` (He scaling ``sqrt(2 / 9 C_in)``
    when None, which keeps activations O(1) through 13 layers), biases normal times 0.1.
    Returns ``{name: ((O, C, 3, 3) weight, (O,) bias)}`` in ``dtype``.
    """
    weights = {}
    in_channels = 3
    for name in layers:
        out_channels = channels[name[4]]
        scale = np.sqrt(2.0 / (in_channels * 9)) if weight_scale is None else weight_scale
        weight = rng.standard_normal((out_channels, in_channels, 3, 3)) * scale
        bias = rng.standard_normal(out_channels) * 0.1
        weights[name] = (weight.astype(dtype), bias.astype(dtype))
        in_channels = out_channels
    return weights
