"""VGG-19 feature maps relu1_1 .. relu5_1 of an image, computed by onnxruntime.

See docs/DESIGN.md section 4.

One :class:`FeatureExtractor` holds one onnxruntime session for the whole run.
Inputs and outputs go through IO binding into buffers allocated here: CuPy
buffers on the GPU (onnxruntime's CUDA provider writes the features straight
into them, no host round trip), NumPy buffers on the CPU.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from diva_numba.device import Device, is_cuda_array, is_out_of_memory, to_host
from diva_numba.errors import InputError, ModelError
from diva_numba.models.export import INPUT_NAME, read_onnx_weights
from diva_numba.models.vgg import FEATURE_LAYERS, level_shape

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


class FeatureExtractor:
    """Computes the five VGG-19 feature maps of images with one onnxruntime session.

    Parameters
    ----------
    model_path : path-like
        A feature model written by this package (checked with
        :func:`~diva_numba.models.validate_onnx`).
    device : Device
        Where the features should live. On CUDA the session uses onnxruntime's
        CUDA provider when it has one; otherwise it runs on the CPU and the
        results are copied to the GPU.
    threads : int, optional
        onnxruntime intra-op threads on the CPU (default: all available cores).

    Attributes
    ----------
    weights : VGGWeights
        The weights inside the model (what the deconvolution must use too).
    runs_on_gpu : bool
        Whether onnxruntime itself runs on the GPU.

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
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # errors only: no provider chatter on stderr
        options.intra_op_num_threads = threads or available_cores()
        providers: list = ["CPUExecutionProvider"]
        self._device_id = 0
        if device.is_cuda and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            import cupy

            self._device_id = cupy.cuda.Device().id
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": self._device_id}))
        try:
            self._session = onnxruntime.InferenceSession(
                str(self.model_path), sess_options=options, providers=providers
            )
        except Exception as exc:  # onnxruntime raises its own, unexported classes
            if is_out_of_memory(exc):
                raise
            raise ModelError(f"onnxruntime cannot load {self.model_path}: {exc}") from None
        # The CUDA provider can fail to initialise (missing CUDA libraries) and
        # onnxruntime then quietly falls back to the CPU.
        self.runs_on_gpu = "CUDAExecutionProvider" in self._session.get_providers()

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
