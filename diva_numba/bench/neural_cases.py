"""The benchmark case of neural style: one evaluation of its loss and gradient.

An evaluation is what L-BFGS repeats for every frame (:mod:`diva_numba.neural_style.loss`):
one forward pass from the image to relu5_1, the Gram matrices and their gradients
at the five style layers, and one backward pass to the image. Its floating-point
operations are the convs' GEMMs (forward and input gradient) and, per style layer
with ``C`` channels and ``N`` pixels, ``4 C^2 N`` for ``F F^T`` and ``(G - A) F``.
"""

from __future__ import annotations

import numpy as np

from diva_numba.models import vgg
from diva_numba.neural_style.params import STYLE_LAYERS, NeuralStyleParams

#: Frame sizes (H, W) of the cases at the "real" size: a 16:9 frame at the CPU's and the
#: GPU's working sizes.
REAL_SHAPES = ((144, 256), (288, 512))


def evaluation_flops(network, height: int, width: int) -> int:
    """GEMM FLOPs of one loss-and-gradient evaluation of an ``height x width`` image."""
    total = network.flops(height, width)
    for layer in STYLE_LAYERS:
        level = int(layer[4])
        channels = network._convs[network.tap_index[layer]].out_channels
        level_height, level_width = vgg.level_shape(height, width, level)
        total += 4 * channels * channels * level_height * level_width
    return total


def neural_style_cases(sizes, weights, case_type, bind) -> list:
    """One evaluation at each frame size, on random weights at VGG-19's widths."""
    from diva_numba.neural_style.loss import NeuralStyleLoss

    shapes = REAL_SHAPES if sizes.channel_divisor == 1 else ((18, 32), (36, 64))

    def evaluation_call(backend, rng, shape):
        style = backend.upload(rng.uniform(-120, 120, (3, *shape)).astype(np.float32))
        content = backend.upload(rng.uniform(-120, 120, (3, *shape)).astype(np.float32))
        loss = NeuralStyleLoss.build(weights, style, NeuralStyleParams())
        loss.set_content(content)
        x = backend.upload(rng.uniform(-120, 120, (3, *shape)).astype(np.float32))
        return lambda: loss(x)

    cases = []
    for shape in shapes:
        network = NeuralStyleLoss.build(
            weights, np.zeros((3, 40, 40), np.float32), NeuralStyleParams()
        ).network
        cases.append(
            case_type(
                "neural_style_step",
                f"content, 5 Grams, TV: {shape[1]} x {shape[0]} image",
                (3, *shape),
                bind(evaluation_call, shape),
                flops=evaluation_flops(network, *shape),
            )
        )
    return cases
