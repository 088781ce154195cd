"""VGG-19 feature maps relu1_1 .. relu5_1 of an image, computed by onnxruntime.

See docs/DESIGN.md section 4.

One :class:`FeatureExtractor` holds one onnxruntime session for the whole run.
Inputs and outputs go through IO binding into buffers allocated here: CuPy
buffers on the GPU (onnxruntime's CUDA provider writes the features straight
into them, no host round trip), NumPy buffers on the CPU.

Which onnxruntime: the CPU build (``onnxruntime``, what diva-numba installs) or
the CUDA build (``onnxruntime-gpu``, installed *instead* by whoever wants ONNX on
the GPU), never both: they install the same ``onnxruntime`` package, so with both
the files of whichever came last win. :func:`onnxruntime_build` says which is
present. On a CUDA device with the CPU build,
:class:`~diva_numba.image_analogy.deep_analogy.AnalogyModel`
computes the features with the project's own GPU forward pass (the sub-network
code the deconvolution uses, same weights) and says so once; with the CUDA build
its CUDA provider runs with TF32 off, so that the features agree with the CPU's to
float32 tolerance (TF32 keeps 10 mantissa bits of the inputs of every product).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

from diva_numba.errors import InputError, ModelError
from diva_numba.gpu.device import Device, error_line, is_cuda_array, is_out_of_memory, to_host
from diva_numba.models.export import INPUT_NAME, read_onnx_weights
from diva_numba.models.vgg import FEATURE_LAYERS, level_shape

log = logging.getLogger("diva_numba")

CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"
#: Options of onnxruntime's CUDA provider besides the device: no TF32 in its cuBLAS
#: products and cuDNN convolutions (``use_tf32``, onnxruntime 1.18 and later; its
#: default is 1). The NCHW convolutions used here honour it (cuDNN's graph API, used
#: for NHWC or fused convolutions, would not).
CUDA_PROVIDER_OPTIONS = {"use_tf32": 0}

#: Distributions that install the ``onnxruntime`` import package, CPU build first.
ONNXRUNTIME_DISTRIBUTIONS = (
    "onnxruntime",
    "onnxruntime-gpu",
    "onnxruntime-directml",
    "onnxruntime-openvino",
    "onnxruntime-rocm",
    "onnxruntime-qnn",
)
_BUILD_NAMES = {"onnxruntime": "CPU build", "onnxruntime-gpu": "CUDA build"}

#: Smallest image side accepted. Four 2x2 pools lie between the image and
#: relu5_1, so 16 = 2**4 px is the smallest side for which relu5_1 is at least
#: 1x1 without any pooling window hanging over the image edge (ceil rounding
#: would accept smaller images, but their coarse levels would be mostly edge).
MIN_SIDE = 16


def available_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def check_image(image) -> tuple[int, int]:
    """Validate an RGB image for feature extraction and return its (height, width).

    Raises
    ------
    InputError
        If the image is not ``(H, W, 3)``, not uint8 or floating point, or
        smaller than :data:`MIN_SIDE` on a side.
    """
    shape = getattr(image, "shape", None)
    dtype = getattr(image, "dtype", None)
    if shape is None or len(shape) != 3 or shape[2] != 3:
        raise InputError(f"the image must be an RGB (H, W, 3) array, got shape {shape}")
    if dtype is None or not (dtype == np.uint8 or np.issubdtype(dtype, np.floating)):
        raise InputError(f"the image must be uint8 or floating point (0..255), got {dtype}")
    height, width = int(shape[0]), int(shape[1])
    if min(height, width) < MIN_SIDE:
        raise InputError(
            f"the image is {width}x{height} px; VGG-19 features need at least "
            f"{MIN_SIDE} px on each side"
        )
    return height, width


def _data_pointer(array) -> int:
    if is_cuda_array(array):
        return array.__cuda_array_interface__["data"][0]
    return array.ctypes.data


@dataclass(frozen=True)
class OnnxruntimeBuild:
    """Which onnxruntime is installed, and what it can run on.

    Attributes
    ----------
    distributions : tuple of str
        The installed distributions of :data:`ONNXRUNTIME_DISTRIBUTIONS`; more
        than one is a broken installation (they share the import package).
    version : str
        ``onnxruntime.__version__``; "" when it cannot be imported.
    providers : tuple of str
        ``onnxruntime.get_available_providers()``: what the build was made with
        (a provider listed may still fail to start for want of its libraries).
    error : str
        Why ``import onnxruntime`` failed ("" when it did not).
    """

    distributions: tuple[str, ...]
    version: str
    providers: tuple[str, ...]
    error: str = ""

    @property
    def has_cuda_provider(self) -> bool:
        return CUDA_PROVIDER in self.providers

    @property
    def conflict(self) -> str:
        """What is wrong with an installation of several builds ("" if nothing)."""
        if len(self.distributions) < 2:
            return ""
        names = " and ".join(self.distributions)
        return (
            f"{names} are both installed; they share the onnxruntime package, so which one "
            "runs depends on the order they were installed in: uninstall all of them, then "
            "install one"
        )

    @property
    def flavour(self) -> str:
        """``"onnxruntime-gpu 1.22.0 (CUDA build)"`` and the like."""
        if self.error:
            return f"cannot be imported ({self.error})"
        if self.conflict:
            return f"{self.version}: BROKEN, {self.conflict}"
        if not self.distributions:
            return f"{self.version} (a build not installed from PyPI)"
        name = self.distributions[0]
        build = _BUILD_NAMES.get(name)
        return f"{name} {self.version}" + (f" ({build})" if build else "")


def onnxruntime_build() -> OnnxruntimeBuild:
    """The onnxruntime build of this environment (see :class:`OnnxruntimeBuild`)."""
    installed = []
    for name in ONNXRUNTIME_DISTRIBUTIONS:
        try:
            version(name)
        except PackageNotFoundError:
            continue
        installed.append(name)
    try:
        import onnxruntime
    except Exception as exc:
        return OnnxruntimeBuild(tuple(installed), "", (), error=f"{type(exc).__name__}: {exc}")
    return OnnxruntimeBuild(
        tuple(installed), onnxruntime.__version__, tuple(onnxruntime.get_available_providers())
    )


def cpu_feature_path(threads: int | None = None) -> str:
    """How the features are computed on the CPU, as ``diva-numba info`` says it."""
    return f"onnxruntime, {CPU_PROVIDER}, {threads or available_cores()} threads"


def gpu_feature_path(build: OnnxruntimeBuild) -> str:
    """How the features are computed on a CUDA device with ``build``, before trying it."""
    if build.has_cuda_provider:
        return (
            f"onnxruntime, {CUDA_PROVIDER} with TF32 off (if it does not start: "
            "diva-numba's own GPU forward pass)"
        )
    return "diva-numba's own GPU forward pass (onnxruntime has no CUDA provider)"


def _no_cuda_provider(build: OnnxruntimeBuild) -> str:
    return f"onnxruntime has no CUDA provider: {build.flavour} is installed"


#: Notices already given in this process (see :func:`notice_once`).
_notices_given: set[str] = set()


def notice_once(message: str, level: int = logging.INFO) -> None:
    """Log ``message`` on the ``diva_numba`` logger unless this process already did."""
    if message not in _notices_given:
        _notices_given.add(message)
        log.log(level, "%s", message)


class FeatureExtractor:
    """Computes the five VGG-19 feature maps of images with one onnxruntime session.

    Parameters
    ----------
    model_path : path-like
        A feature model written by this package (checked with
        :func:`~diva_numba.models.validate_onnx`).
    device : Device
        Where the features should live. On CUDA the session uses onnxruntime's
        CUDA provider (TF32 off) when the build has one and it starts and runs a
        trial image; otherwise it runs on the CPU and the results are copied to
        the GPU (:class:`~diva_numba.image_analogy.deep_analogy.AnalogyModel` then uses its own
        GPU forward pass instead).
    threads : int, optional
        onnxruntime intra-op threads on the CPU (default: all available cores).

    Attributes
    ----------
    weights : VGGWeights
        The weights inside the model (what the deconvolution must use too).
    runs_on_gpu : bool
        Whether onnxruntime itself runs on the GPU.
    gpu_unavailable_reason : str
        On a CUDA device where onnxruntime does not run on the GPU, why not
        ("" otherwise).
    cuda_provider_failed : bool
        Whether the build has a CUDA provider that failed (to start, or on the
        trial image), rather than having none.

    Examples
    --------
    >>> extractor = FeatureExtractor(ensure_model(), resolve_device("cpu"))  # doctest: +SKIP
    >>> features = extractor(rgb_uint8_image)  # doctest: +SKIP
    >>> features["relu3_1"].shape  # doctest: +SKIP
    (256, 112, 112)
    """

    def __init__(
        self, model_path: str | os.PathLike, device: Device, *, threads: int | None = None
    ):
        import onnxruntime

        self.model_path = Path(model_path)
        self.device = device
        self.weights = read_onnx_weights(self.model_path)
        self.gpu_unavailable_reason = ""
        self.cuda_provider_failed = False
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # errors only: no provider chatter on stderr
        options.intra_op_num_threads = threads or available_cores()
        self._device_id = 0
        self._session = None
        if device.is_cuda:
            build = onnxruntime_build()
            if build.conflict:
                notice_once(f"onnxruntime: {build.conflict}", logging.WARNING)
            if build.has_cuda_provider:
                self._session = self._start_cuda_session(onnxruntime, options)
            else:
                self.gpu_unavailable_reason = _no_cuda_provider(build)
        if self._session is None:
            self._session = self._open_session(onnxruntime, options, [CPU_PROVIDER])
        self.runs_on_gpu = CUDA_PROVIDER in self._session.get_providers()

    def _open_session(self, onnxruntime, options, providers: list):
        try:
            return onnxruntime.InferenceSession(
                str(self.model_path), sess_options=options, providers=providers
            )
        except Exception as exc:  # onnxruntime raises its own, unexported classes
            if is_out_of_memory(exc):
                raise
            raise ModelError(f"onnxruntime cannot load {self.model_path}: {exc}") from None

    def _start_cuda_session(self, onnxruntime, options):
        """A session on onnxruntime's CUDA provider that has run a trial image.

        Otherwise the CPU session onnxruntime fell back to, or None; either way
        :attr:`gpu_unavailable_reason` says why.
        """
        import cupy

        self._device_id = cupy.cuda.Device().id
        provider = (CUDA_PROVIDER, {"device_id": self._device_id, **CUDA_PROVIDER_OPTIONS})
        self.cuda_provider_failed = True
        try:
            session = onnxruntime.InferenceSession(
                str(self.model_path), sess_options=options, providers=[provider, CPU_PROVIDER]
            )
        except Exception as exc:
            if is_out_of_memory(exc):
                raise
            # A model onnxruntime cannot load fails again, as a ModelError, on the CPU.
            self._device_id = 0
            self.gpu_unavailable_reason = f"onnxruntime's CUDA provider failed: {error_line(exc)}"
            return None
        if CUDA_PROVIDER not in session.get_providers():
            # onnxruntime quietly falls back to the CPU when the provider cannot start:
            # the session is a CPU session.
            self._device_id = 0
            self.gpu_unavailable_reason = (
                "onnxruntime's CUDA provider did not start (its CUDA or cuDNN libraries are "
                "missing or of another version)"
            )
            return session
        trial = np.zeros((1, 3, MIN_SIDE, MIN_SIDE), dtype=np.float32)
        try:
            session.run(None, {INPUT_NAME: trial})
        except Exception as exc:
            if is_out_of_memory(exc):
                raise
            self._device_id = 0
            self.gpu_unavailable_reason = (
                f"onnxruntime's CUDA provider failed on a trial image: {error_line(exc)}"
            )
            return None
        self.cuda_provider_failed = False
        return session

    def output_shapes(self, height: int, width: int) -> dict[str, tuple[int, int, int]]:
        """``(C, H_L, W_L)`` of each feature map for an image of ``height x width``."""
        channels = self.weights.channels
        return {
            layer: (channels["conv" + layer[4:]], *level_shape(height, width, level))
            for level, layer in enumerate(FEATURE_LAYERS, start=1)
        }

    def __call__(self, image) -> dict[str, object]:
        """The feature maps of one image.

        Parameters
        ----------
        image : array, (H, W, 3)
            RGB, uint8 or floating point on the 0..255 scale; NumPy, or CuPy on
            a CUDA device. Sides of at least :data:`MIN_SIDE`.

        Returns
        -------
        dict of str to array
            ``relu1_1`` .. ``relu5_1`` (in that order), float32 ``(C, H_L, W_L)``
            C-contiguous, with ``H_L = ceil(H / 2**(L-1))``: CuPy arrays when the
            device is CUDA, NumPy arrays otherwise.
        """
        height, width = check_image(image)
        if self.runs_on_gpu:
            import cupy as xp
        else:
            xp = np
            image = to_host(image)
        batch = xp.ascontiguousarray(xp.asarray(image).transpose(2, 0, 1)[None], dtype=np.float32)
        where = "cuda" if self.runs_on_gpu else "cpu"
        binding = self._session.io_binding()
        binding.bind_input(
            INPUT_NAME, where, self._device_id, np.float32, batch.shape, _data_pointer(batch)
        )
        features = {}
        for layer, shape in self.output_shapes(height, width).items():
            buffer = xp.empty((1, *shape), dtype=np.float32)
            binding.bind_output(
                layer, where, self._device_id, np.float32, buffer.shape, _data_pointer(buffer)
            )
            features[layer] = buffer[0]
        if self.runs_on_gpu:
            # onnxruntime reads the input on its own stream: the upload must be done.
            xp.cuda.get_current_stream().synchronize()
        self._session.run_with_iobinding(binding)
        if self.device.is_cuda and not self.runs_on_gpu:
            import cupy

            features = {layer: cupy.asarray(value) for layer, value in features.items()}
        return features
