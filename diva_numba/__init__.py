"""diva-numba: Deep Image Video Analogy with hand-written Numba kernels.

The public API (see the README's "Python API" section and docs/DESIGN.md):

* :func:`transfer_video` - a video in the look of a style image, as
  ``diva-numba transfer`` makes it, with :class:`TransferParams`;
* :func:`analogy_files` - the image analogy from files into a directory, as
  ``diva-numba analogy`` does; :func:`analogy` on arrays, with
  :class:`AnalogyModel` and :class:`AnalogyParams`;
* :class:`Keyframe` (with :class:`KeyframeParams`) and :class:`ScaleOut`, the
  other argument types of :func:`transfer_video`; :class:`RunSpec` and
  :func:`run_transfer`, a run specified once, then run;
* :func:`stylise` - neural style (Gatys et al.) for one image, as ``diva-numba
  stylise`` makes it, with :class:`NeuralStyleParams`; the same params make
  :func:`transfer_video` use that method, with Ruder et al.'s temporal loss;
* :func:`resolve_device` and :class:`Device`;
* the errors: :class:`DivaError` and its kinds, each with the exit status the
  command line uses.

Names are imported on first use, so that ``import diva_numba`` loads neither
NumPy nor Numba: a program can still apply
:func:`diva_numba.environment.apply_runtime_defaults` after it.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("diva-numba")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

_EXPORTS = {
    "AnalogyModel": "image_analogy.deep_analogy",
    "AnalogyParams": "image_analogy.params",
    "AnalogyResult": "image_analogy.deep_analogy",
    "analogy": "image_analogy.deep_analogy",
    "load_model": "image_analogy.deep_analogy",
    "analogy_files": "run.analogy_files",
    "TransferParams": "run.params",
    "TransferResult": "run.transfer",
    "transfer_video": "run.transfer",
    "FrameReport": "run.progress",
    "Keyframe": "finishing.keyframes",
    "KeyframeParams": "finishing.keyframes",
    "ScaleOut": "run.spec",
    "RunSpec": "run.spec",
    "run_transfer": "run.transfer",
    "NeuralStyleParams": "neural_style.params",
    "stylise": "neural_style.styler",
    "Device": "gpu.device",
    "resolve_device": "gpu.device",
    "DivaError": "errors",
    "InputError": "errors",
    "ModelError": "errors",
    "DeviceError": "errors",
    "OutputError": "errors",
    "Interrupted": "errors",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted([*globals(), *__all__])
