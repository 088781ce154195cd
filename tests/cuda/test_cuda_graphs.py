"""The deconvolution's CUDA graphs under the CuPy stand-in: capture, replay and fallbacks.

The stand-in captures as strictly as CUDA (tests/standin_capture.py): launches and
cuBLAS products on the capturing stream are recorded, anything else that a capture
forbids (or that would escape the graph) raises and spoils the capture, and a replay
reads the captured *addresses*. So a graph that captured a buffer which changes or
dies between calls shows here. The launch budgets per L-BFGS iteration, and the graph
path against the eager one and the CPU, are in test_cuda_pipeline.py.
"""

from __future__ import annotations

import gc
import logging
import sys

import cupy_standin
import numpy as np
import pytest
import standin_capture
from numba import cuda
from numba.core import config

from diva_numba.gpu import cublas_capture, launch_graphs
from diva_numba.image_analogy import deep_analogy
from diva_numba.image_analogy.deep_analogy import AnalogyModel, AnalogyParams, analogy
from diva_numba.kernels import vector_ops
from diva_numba.kernels.targets import kernel_array
from diva_numba.models import tiny_weights, vgg
from diva_numba.network import features
from diva_numba.network import graphs as network_graphs
from diva_numba.network import subnetwork as network_module
from diva_numba.network.subnetwork import SubNetwork, deconvolve
from diva_numba.optim.lbfgs import LBFGSParams
from diva_numba.run.transfer import TransferParams

pytestmark = [
    pytest.mark.cudasim,
    pytest.mark.skipif(
        not config.ENABLE_CUDASIM, reason="the CuPy stand-in runs under the CUDA simulator only"
    ),
]

GRAPH_LAUNCH = cupy_standin.GRAPH_LAUNCH
PARAMS = LBFGSParams(max_iterations=4)


@cuda.jit
def add_one(a):
    i = cuda.grid(1)
    if i < a.size:
        a[i] += 1


def host(array):
    return cupy_standin.asnumpy(array)


# --- the stand-in -------------------------------------------------------------------------


def test_the_stand_in_records_replays_and_refuses_as_a_capture_does(gpu):
    cupy = sys.modules["cupy"]
    _, counters = gpu
    values = cupy.zeros(6, dtype=cupy.float32)
    stream = cupy.cuda.Stream(non_blocking=True)
    on_stream = cuda.external_stream(stream.ptr)
    with pytest.raises(RuntimeError, match="legacy"):
        cupy.cuda.get_current_stream().begin_capture()

    with stream:
        stream.begin_capture()
        add_one[2, 4, on_stream](values)
        graph = stream.end_capture()
    assert counters.launches["add_one"] == 0 and counters.recorded["add_one"] == 1
    np.testing.assert_array_equal(host(values), 0)  # recorded, not run
    graph.launch()
    graph.launch()
    assert counters.launches[GRAPH_LAUNCH] == 2 and counters.launches["add_one"] == 0
    np.testing.assert_array_equal(host(values), 2)
    values[...] = 10  # a replay reads what the captured address holds now
    graph.launch()
    np.testing.assert_array_equal(host(values), 11)

    matrix, product = cupy.ones((2, 2), dtype=cupy.float32), cupy.empty((2, 2), cupy.float32)
    forbidden = {
        "a launch on another stream": lambda: add_one[2, 4](values),
        "an allocation": lambda: cupy.zeros(3),
        "a download": values.get,
        "an upload": lambda: cupy.asarray(np.ones(3)),
        "a CuPy kernel": lambda: values + values,
        "a device write": lambda: values.fill(0),
        "a synchronisation": stream.synchronize,
        "a graph launch": graph.launch,
    }
    for what, action in forbidden.items():
        with stream:
            stream.begin_capture()
            with pytest.raises(cupy_standin.CaptureViolation):
                action()
            with pytest.raises(RuntimeError, match="Invalidated"):
                stream.end_capture()
        assert not stream.is_capturing(), what
    with stream:  # CuPy refuses cuBLAS on a capturing stream (before any CUDA call)
        stream.begin_capture()
        with pytest.raises(NotImplementedError, match="cuBLAS"):
            cupy.matmul(matrix, matrix, out=product)
        stream.end_capture()

    scratch = cupy.zeros(6, dtype=cupy.float32)
    with stream:
        stream.begin_capture()
        add_one[2, 4, on_stream](scratch)
        graph = stream.end_capture()
    del scratch
    gc.collect()
    with pytest.raises(cupy_standin.CaptureViolation, match="freed"):
        graph.launch()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_captured_gemm_computes_what_cupy_matmul_does(gpu, rng, dtype):
    """The ctypes cuBLAS calls of cublas_capture, on the stand-in libcublas (column-major)."""
    cupy = sys.modules["cupy"]
    stream = cupy.cuda.Stream(non_blocking=True)
    gemm = cublas_capture.StreamGemm(stream.ptr, like=cupy.zeros(1))
    a, b, w = (rng.standard_normal(shape).astype(dtype) for shape in ((5, 7), (7, 3), (5, 4)))
    out = cupy.empty((5, 3), dtype=dtype)
    gemm.matmul(cupy.asarray(a), cupy.asarray(b), out)
    np.testing.assert_array_equal(host(out), a @ b)
    # op(a) = a.T: the backward pass's W^T dY, with W as it lies.
    transposed = cupy.empty((7, 4), dtype=dtype)
    gemm.matmul(cupy.asarray(a), cupy.asarray(w), transposed, transpose_a=True)
    np.testing.assert_array_equal(host(transposed), a.T @ w)
    with pytest.raises(ValueError, match="do not chain"):
        gemm.matmul(cupy.asarray(a), cupy.asarray(w), out)
    with pytest.raises(ValueError, match="C-contiguous"):
        gemm.matmul(cupy.asarray(a).T, cupy.asarray(a), cupy.empty((7, 7), dtype=dtype))

    # Captured: recorded with the stream's workspace, run by the replay.
    a_gpu, b_gpu, out = cupy.asarray(a), cupy.asarray(b), cupy.zeros((5, 3), dtype=dtype)
    with stream:
        stream.begin_capture()
        gemm.matmul(a_gpu, b_gpu, out)
        graph = stream.end_capture()
    np.testing.assert_array_equal(host(out), 0)
    graph.launch()
    np.testing.assert_array_equal(host(out), a @ b)


# --- fallbacks ----------------------------------------------------------------------------


def _network_and_inputs(rng, start=0, end=2):
    cupy = sys.modules["cupy"]
    network = SubNetwork(tiny_weights(3, width=4).layers, start, end)
    initial = rng.uniform(0, 1, (network.in_channels, 6, 5)).astype(np.float32)
    target = rng.uniform(0, 1, network.output_shape(6, 5)).astype(np.float32)
    return network, initial, target, cupy.asarray(initial), cupy.asarray(target)


def _eager_launches(network) -> int:
    pools = sum(name in vgg.POOL_AFTER for name in network.layers)
    return 2 * len(network.layers) + pools + 1


def _graph_notices(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "CUDA graphs are off" in r.getMessage()]


def _cupy_matmul(self, a, b, out, *, transpose_a=False):
    """What a GEMM through CuPy would do: CuPy refuses it while the stream captures."""
    sys.modules["cupy"].matmul(a.T if transpose_a else a, b, out=out)


def _no_cublas():
    raise cublas_capture.CublasError("libcublas cannot be loaded (test)")


def _refused_launch(self, stream=None):
    raise RuntimeError("cudaErrorInvalidValue: invalid argument (test)")


@pytest.mark.parametrize(
    ("failure", "problem"),
    [
        ("no libcublas", "the capture failed (CublasError: libcublas cannot"),
        ("cuBLAS via CuPy", "the capture failed (NotImplementedError"),
        ("graph launch refused", "the first replay failed (RuntimeError: cudaErrorInvalidValue"),
    ],
)
def test_a_failed_capture_falls_back_to_eager_launches_with_one_notice(
    gpu, rng, monkeypatch, caplog, failure, problem
):
    _, counters = gpu
    if failure == "no libcublas":
        monkeypatch.setattr(cublas_capture, "load_cublas", _no_cublas)
    elif failure == "cuBLAS via CuPy":
        monkeypatch.setattr(cublas_capture.StreamGemm, "matmul", _cupy_matmul)
    else:
        monkeypatch.setattr(standin_capture.Graph, "launch", _refused_launch)
    monkeypatch.setattr(features, "_notices_given", set())
    caplog.set_level(logging.WARNING, logger="diva_numba")
    network, initial, target, x0, t = _network_and_inputs(rng)

    first = deconvolve(network, t, x0, params=PARAMS)
    assert network.graph_problem.startswith(problem)
    assert "given up" in network.graph_status
    assert not cupy_standin.CAPTURE.stream  # the failed capture was ended
    with cupy_standin.counting(counters) as used:
        again = deconvolve(network, t, x0, params=PARAMS)
    eager = deconvolve(network, t, x0, params=PARAMS, cuda_graph=False)
    reference = deconvolve(network, target, initial, params=PARAMS)

    assert len(_graph_notices(caplog)) == 1
    assert used.launches[GRAPH_LAUNCH] == 0 and sum(used.recorded.values()) == 0
    # Eager launches, as without graphs: the pass's kernels and the optimiser's two.
    assert used.launch_count <= (_eager_launches(network) + 2) * again.evaluations + 2
    for result in (first, again):
        assert result.losses == eager.losses
        np.testing.assert_array_equal(host(result.x), host(eager.x))
    np.testing.assert_allclose(host(eager.x), reference.x, rtol=1e-4, atol=1e-5)


def test_a_replay_that_differs_from_the_eager_pass_turns_graphs_off(gpu, rng, monkeypatch, caplog):
    _, counters = gpu
    monkeypatch.setattr(features, "_notices_given", set())
    caplog.set_level(logging.WARNING, logger="diva_numba")
    network, initial, target, x0, t = _network_and_inputs(rng, 1, 3)
    real_capture = launch_graphs.GraphCapture.capture

    def corrupted_capture(self, enqueue):
        """A graph that gets the gradient wrong: it ends by copying the input over it."""

        def wrong(queue):
            enqueue(queue)
            (workspace,) = network._workspaces.values()
            gradient = kernel_array(workspace.input_gradient.reshape(-1))
            vector_ops.copy(gradient, workspace.graph.k_flat_input, stream=queue.stream)

        return real_capture(self, wrong)

    monkeypatch.setattr(launch_graphs.GraphCapture, "capture", corrupted_capture)
    result = deconvolve(network, t, x0, params=PARAMS)
    eager = deconvolve(network, t, x0, params=PARAMS, cuda_graph=False)

    check = network.graph_check
    assert not check.passed and check.loss_error == 0 and check.gradient_error > 1e-2
    assert network.graph_problem.startswith("the first replay differs")
    assert len(_graph_notices(caplog)) == 1
    assert result.losses == eager.losses
    np.testing.assert_array_equal(host(result.x), host(eager.x))
    with cupy_standin.counting(counters) as used:
        deconvolve(network, t, x0, params=PARAMS)
    assert used.launches[GRAPH_LAUNCH] == 0


def test_a_target_key_loads_the_target_once_and_a_new_target_replaces_it(gpu, rng):
    """Two objectives on one workspace: each evaluation reads its own target."""
    cupy = sys.modules["cupy"]
    _, counters = gpu
    network, _, target, x0, t = _network_and_inputs(rng, 3, 5)
    other = cupy.asarray(rng.uniform(0, 1, target.shape).astype(np.float32))
    keys = object(), object()
    losses = {}
    for key, wanted in ((keys[0], t), (keys[1], other), (keys[0], t), (None, other)):
        with cupy_standin.counting(counters) as used:
            loss, _ = network.loss_and_gradient(x0, wanted, cuda_graph=True, target_key=key)
        losses.setdefault(id(wanted), set()).add(float(host(loss)[0]))
        eager_loss, _ = network.loss_and_gradient(x0, wanted)
        assert losses[id(wanted)] == {float(host(eager_loss)[0])}
    # The last call copied the input and its keyless target, then replayed the graph.
    assert used.launches["_copy_kernel"] == 2 and used.launches[GRAPH_LAUNCH] == 1
    assert network.graph_problem == ""


def test_a_graph_that_reads_the_callers_buffer_shows(gpu, rng, monkeypatch):
    """What the graph's own input buffer prevents: replays reading a stale point.

    The optimiser keeps its current and trial points in two rows and evaluates them in
    turn; a graph captured on the first row it was called with reads that row at every
    replay. On a GPU the losses would be silently wrong; here the run visibly departs
    from the eager one.
    """
    network, _, _, x0, t = _network_and_inputs(rng, 2, 4)

    def on_the_callers_buffer(network, workspace, x, target, target_key):
        if workspace.graph is None:
            workspace.graph = network_graphs.GraphSlot(workspace)
            workspace.graph.k_input = kernel_array(x)  # captured as it lies: the bug
            vector_ops.copy(workspace.graph.k_flat_target, kernel_array(target.reshape(-1)))
        slot = workspace.graph
        if slot.graph is None:
            network_graphs._capture_and_check(network, workspace, slot)
        else:
            slot.graph.launch()
        return workspace.loss, workspace.input_gradient

    eager = deconvolve(network, t, x0, params=PARAMS, cuda_graph=False)
    monkeypatch.setattr(network_module, "graphed_loss_and_gradient", on_the_callers_buffer)
    stale = deconvolve(network, t, x0, params=PARAMS)
    assert network.graph_problem == ""  # its first replay matched: the bug is later
    assert stale.losses[0] == eager.losses[0] and stale.losses != eager.losses


# --- the switch ---------------------------------------------------------------------------


def test_the_analogy_switch_reaches_the_deconvolution(tiny_model, cpu, monkeypatch):
    """AnalogyParams.cuda_graphs (on by default) is what every deconvolution is given."""
    seen = []
    real_deconvolve = deep_analogy.deconvolve

    def spy(*args, **kwargs):
        seen.append(kwargs["cuda_graph"])
        return real_deconvolve(*args, **kwargs)

    monkeypatch.setattr(deep_analogy, "deconvolve", spy)
    image = (np.indices((40, 40)).sum(axis=0) % 7 * 30).astype(np.uint8)
    rgb = np.ascontiguousarray(np.stack([image, image.T, 255 - image], axis=-1))
    params = AnalogyParams(patchmatch_iterations=1, lbfgs_iterations=1, cuda_graphs=False)
    analogy(AnalogyModel(tiny_model, cpu), rgb, rgb, params=params)
    assert AnalogyParams().cuda_graphs is True
    assert seen and set(seen) == {False}


def test_the_switch_is_not_part_of_a_runs_fingerprint():
    """Graphs decide how the GPU launches, not the frames: a run resumes either way."""
    on = TransferParams.for_device("cuda")
    off = TransferParams.for_device(
        "cuda", analogy=AnalogyParams.for_device("cuda", cuda_graphs=False)
    )
    assert on.analogy.cuda_graphs and not off.analogy.cuda_graphs
    assert on.fingerprint() == off.fingerprint()
    assert "cuda_graphs" not in on.fingerprint()["analogy"]
