"""Real-GPU tests of the pipeline: features, sub-networks, L-BFGS, analogy and video.

Skipped as tests/test_gpu.py is (``DIVA_TEST_GPU=1`` and a usable GPU), which tests
the kernels one by one. Here the feature extractor, the VGG sub-networks (cuBLAS GEMMs
through ``cupy.matmul``), L-BFGS, ``analogy()`` and ``transfer_video()`` run on a CUDA
:class:`~diva_numba.gpu.device.Device` against the CPU.

    DIVA_TEST_GPU=1 python -m pytest -q tests/test_gpu_pipeline.py            # tiny model
    DIVA_TEST_GPU=1 python -m pytest -q tests/test_gpu_pipeline.py -m model   # real VGG-19

Agreement expected: sub-networks and L-BFGS to float32 rounding; whole analogies to
what float32 rounding moves (most of each field, a fraction of a grey level). GEMMs
must run in full float32: leave ``CUPY_TF32`` unset.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np
import pytest
from gpu_checks import SKIP_REASON, assert_on_gpu, field_agreement
from inputs import vgg_weights

from diva_numba.gpu.device import resolve_device, to_host
from diva_numba.image_analogy.deep_analogy import AnalogyModel, AnalogyParams, analogy
from diva_numba.models import vgg
from diva_numba.network.subnetwork import FEATURE_LEVELS, SubNetwork, deconvolve
from diva_numba.optim.lbfgs import LBFGSParams, minimize_lbfgs

TOOLS = Path(__file__).resolve().parents[1] / "tools"
EXAMPLE = TOOLS / "example"

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(SKIP_REASON is not None, reason=SKIP_REASON or "a GPU is usable"),
]


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


def random_image(rng, height, width):
    smooth = cv2.GaussianBlur(rng.uniform(0, 255, (height, width, 3)).astype(np.float32), (0, 0), 2)
    return np.clip(smooth, 0, 255).astype(np.uint8)


def as_float(value) -> float:
    """A number, a one-element array or a one-element GPU array as a float."""
    return float(np.asarray(to_host(value)).reshape(()))


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
    from diva_numba.network.features import FeatureExtractor

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


@pytest.mark.parametrize(("start", "end"), DECONVOLUTIONS)
def test_the_deconvolution_cuda_graph_matches_the_eager_pass(cp, rng, start, end):
    """Captured on this GPU, checked at its first replay, then replayed at new inputs."""
    network = SubNetwork(vgg_weights(rng, CHANNELS), start, end)
    height, width = (29, 35) if start > 0 else (58, 70)
    shape = network.output_shape(height, width)
    target = cp.asarray(np.abs(rng.standard_normal(shape)).astype(np.float32))
    key = object()
    for _ in range(3):  # the capture, then two replays
        x = cp.asarray(level_input(rng, network, height, width))
        loss, grad = network.loss_and_gradient(x, target, cuda_graph=True, target_key=key)
        loss, grad = as_float(loss), to_host(grad)  # the eager call reuses the buffers
        assert network.graph_problem == "", network.graph_status
        eager_loss, eager_grad = network.loss_and_gradient(x, target)
        eager_grad = to_host(eager_grad)
        assert loss == pytest.approx(as_float(eager_loss), rel=1e-4)
        scale = float(np.abs(eager_grad).max())
        np.testing.assert_allclose(grad, eager_grad, rtol=1e-4, atol=1e-4 * scale)
    assert network.graph_check.passed, network.graph_status


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
    """The astronaut against a zoomed, shifted, recoloured copy; and the true field.

    The pair of the pipeline benchmark, taken from tools/bench_pipeline.py.
    """
    spec = importlib.util.spec_from_file_location("bench_pipeline", TOOLS / "bench_pipeline.py")
    bench_pipeline = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_pipeline)
    return bench_pipeline.known_pair(size)


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
            device, work_size=96, guided_lbfgs_iterations=2,
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
