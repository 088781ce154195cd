"""What the real-GPU tests (tests/test_gpu.py, tests/test_gpu_pipeline.py) share.

When they run (:data:`SKIP_REASON`: ``DIVA_TEST_GPU=1`` and a GPU usable through both
Numba's CUDA target and CuPy), and the checks both files make on GPU results.
"""

from __future__ import annotations

import os
import warnings

import numpy as np

from diva_numba.gpu.device import to_host


def _skip_reason() -> str | None:
    """Why the real-GPU tests cannot run here, or None when they can."""
    if os.environ.get("DIVA_TEST_GPU") != "1":
        return "real-GPU tests: set DIVA_TEST_GPU=1 on a machine with a CUDA GPU and CuPy"
    try:
        from diva_numba.gpu.device import cuda_status

        with warnings.catch_warnings():  # a library's import-time warning is not an error here
            warnings.simplefilter("ignore")
            ok, reason = cuda_status()
    except Exception as exc:  # any failure of the probe is a reason to skip
        return f"DIVA_TEST_GPU=1 but probing the GPU failed: {type(exc).__name__}: {exc}"
    return None if ok else f"DIVA_TEST_GPU=1 but no usable GPU: {reason}"


#: Why the real-GPU tests are skipped here, or None when they run.
SKIP_REASON = _skip_reason()


def assert_on_gpu(cp, *arrays):
    """Outputs of a GPU call are CuPy arrays, as the pipeline relies on."""
    for array in arrays:
        assert isinstance(array, cp.ndarray), type(array)


def field_agreement(first, second) -> float:
    """Fraction of pixels whose matches are identical in two fields."""
    return float(np.all(to_host(first) == to_host(second), axis=-1).mean())
