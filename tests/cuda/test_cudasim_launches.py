"""How many Numba launches (and GEMMs) the deconvolution makes on the GPU path.

Every launch costs the host a few microseconds and, with CuPy arrays, used to wait for
the GPU (docs/DESIGN.md section 9), so the counts are part of the contract: a
loss-and-gradient evaluation of a sub-network with ``n`` convs and ``p`` pools is
``2 n`` GEMMs and ``2 n + p + 1`` Numba launches (one per conv each way, one per pool,
the loss), and an L-BFGS iteration that needs one evaluation adds two (the step that
stores the pair and forms the direction and trial point; the pass that reduces the
evaluation's scalars). Before the kernels were fused, an iteration made 59 (levels
0 -> 2) to 81 (3 -> 5) launches.

Runs under the simulator, counting the launches that reach ``FakeCUDAKernel``; GEMMs
are counted where the stand-in array module runs them on the host.
"""

import types

import numpy as np
import pytest
from inputs import random_quadratic, vgg_weights
from numba import config, cuda

from diva_numba.gpu.device import to_host
from diva_numba.models import vgg
from diva_numba.network import subnetwork as network_module
from diva_numba.optim.lbfgs import LBFGSParams, minimize_lbfgs

pytestmark = [
    pytest.mark.cudasim,
    pytest.mark.skipif(
        not config.ENABLE_CUDASIM,
        reason="counts the launches that reach the CUDA simulator's kernel class: simulator only",
    ),
]

#: Levels 0 -> 2 and 1 -> 3 stay within this per L-BFGS iteration even launched one by
#: one; the deeper sub-networks need two launches per conv, so eagerly they cannot (17
#: and 21). With each evaluation replayed as a CUDA graph every level makes 4
#: (tests/cuda/test_cuda_pipeline.py).
ITERATION_BUDGET = 15
EVALUATION_START, EVALUATION_END, GEMM = "evaluation start", "evaluation end", "GEMM"


@pytest.fixture
def launches(monkeypatch):
    """The names of the kernels launched, in order, with GEMMs and evaluations marked."""
    from numba.cuda.simulator.kernel import FakeCUDAKernel

    log = []
    call = FakeCUDAKernel.__call__

    def counting_call(kernel, *args):
        if not kernel._device:
            log.append(kernel.fn.__name__)
        return call(kernel, *args)

    def matmul(a, b, out):
        log.append(GEMM)
        out.copy_to_device(np.ascontiguousarray(to_host(a) @ to_host(b)))
        return out

    module = types.SimpleNamespace(
        matmul=matmul,
        asarray=lambda a, dtype=None: cuda.to_device(np.ascontiguousarray(a, dtype=dtype)),
        ascontiguousarray=lambda a: a,
        empty=lambda shape, dtype: cuda.device_array(shape, dtype=np.dtype(dtype)),
    )
    monkeypatch.setattr(FakeCUDAKernel, "__call__", counting_call)
    monkeypatch.setattr(network_module, "array_module", lambda array: module)
    return log


def numba_launches(log):
    return sum(1 for name in log if name not in (GEMM, EVALUATION_START, EVALUATION_END))


def expected_network_launches(start, end):
    layers = vgg.layers_between(start, end)
    pools = sum(1 for name in layers if name in vgg.POOL_AFTER)
    return 2 * len(layers) + pools + 1, 2 * len(layers)


def between_evaluations(log):
    """The launches from the end of each evaluation to the end of the next."""
    ends = [index for index, name in enumerate(log) if name == EVALUATION_END]
    return [log[a + 1 : b + 1] for a, b in zip(ends, ends[1:], strict=False)]


CHANNELS = {"1": 2, "2": 3, "3": 3, "4": 3, "5": 3}


@pytest.mark.parametrize(("start", "end"), [(3, 5), (2, 4), (1, 3), (0, 2)])
def test_network_evaluation_launches(rng, launches, start, end):
    network = network_module.SubNetwork(vgg_weights(rng, CHANNELS), start, end)
    x = rng.standard_normal((network.in_channels, 4, 5)).astype(np.float32)
    target = np.abs(rng.standard_normal(network.output_shape(4, 5))).astype(np.float32)
    network.loss_and_gradient(cuda.to_device(x), cuda.to_device(target))  # workspace built
    launches.clear()
    network.loss_and_gradient(cuda.to_device(x), cuda.to_device(target))
    expected_launches, expected_gemms = expected_network_launches(start, end)
    assert numba_launches(launches) == expected_launches
    assert launches.count(GEMM) == expected_gemms


def test_optimiser_launches_two_kernels_per_evaluation(rng, launches):
    """Steepest descent, pairs filling the history, full history: always two."""
    host_objective, _ = random_quadratic(rng, 9)

    def objective(x):
        launches.append(EVALUATION_START)
        value, grad = host_objective(to_host(x))
        launches.append(EVALUATION_END)
        return cuda.to_device(np.array([value])), cuda.to_device(grad)

    result = minimize_lbfgs(objective, cuda.to_device(rng.standard_normal(9)),
                            params=LBFGSParams(max_iterations=7, gradient_tolerance=0))  # fmt: skip
    segments = between_evaluations(launches)
    assert len(segments) == result.evaluations - 1 >= 7
    assert [numba_launches(segment) for segment in segments] == [2] * len(segments)


def test_deconvolution_iteration_fits_the_budget(rng, launches):
    start, end = 0, 2
    # Positive biases keep the ReLUs alive: with a few random channels and a 4 x 4 input
    # every unit of relu2_1 can be dead, and L-BFGS then stops at a zero gradient before
    # its first iteration (seed 1143164853 did).
    weights = {name: (w, np.abs(b) + np.float32(0.5)) for name, (w, b) in
               vgg_weights(rng, CHANNELS).items()}  # fmt: skip
    network = network_module.SubNetwork(weights, start, end)
    x0 = rng.standard_normal((3, 4, 4)).astype(np.float32)
    target = cuda.to_device(
        np.abs(rng.standard_normal(network.output_shape(4, 4))).astype(np.float32)
    )

    def objective(x):
        launches.append(EVALUATION_START)
        loss_and_gradient = network.loss_and_gradient(x, target)
        launches.append(EVALUATION_END)
        return loss_and_gradient

    result = minimize_lbfgs(objective, cuda.to_device(x0), params=LBFGSParams(max_iterations=3))
    network_launches, network_gemms = expected_network_launches(start, end)
    segments = between_evaluations(launches)
    assert len(segments) == result.evaluations - 1 >= 3
    for segment in segments:
        assert numba_launches(segment) == network_launches + 2 <= ITERATION_BUDGET
        assert segment.count(GEMM) == network_gemms
