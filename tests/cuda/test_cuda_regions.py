"""Deconvolving boxes of a map on the CUDA path (simulator, CuPy stand-in) as on the CPU."""

import sys

import cupy_standin
import numpy as np
import pytest
from inputs import vgg_weights
from numba import config

from diva_numba.network.regions import changed_boxes, deconvolve_boxes
from diva_numba.network.subnetwork import SubNetwork, deconvolve
from diva_numba.optim.lbfgs import LBFGSParams

pytestmark = [
    pytest.mark.cudasim,
    pytest.mark.skipif(
        not config.ENABLE_CUDASIM, reason="the CuPy stand-in runs under the CUDA simulator only"
    ),
]


def test_boxes_solved_on_the_gpu_match_the_cpu(monkeypatch, rng):
    cupy = cupy_standin.make_module("simulated GPU")
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    cupy_standin.install_launcher(monkeypatch)
    network = SubNetwork(vgg_weights(rng, {"1": 2, "2": 3, "3": 3, "4": 3, "5": 3}), 0, 2)
    warm = rng.standard_normal((3, 20, 28)).astype(np.float32)
    target = np.abs(rng.standard_normal(network.output_shape(20, 28))).astype(np.float32)
    new = np.zeros((20, 28), bool)
    new[14:20, 22:28] = True
    boxes = changed_boxes(new, network.layers, tile=4)
    assert boxes is not None and len(boxes) == 1
    params = LBFGSParams(max_iterations=3)

    def solve(net, goal, start):
        return deconvolve(net, goal, start, params=params)

    on_cpu = warm.copy()
    deconvolve_boxes(solve, network, target, on_cpu, boxes)
    on_gpu = cupy.asarray(warm)
    deconvolve_boxes(solve, network, cupy.asarray(target), on_gpu, boxes)
    assert not np.array_equal(on_cpu, warm)
    np.testing.assert_allclose(cupy_standin.asnumpy(on_gpu), on_cpu, rtol=1e-4, atol=1e-5)
