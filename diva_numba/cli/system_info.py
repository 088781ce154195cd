"""What ``diva-numba info`` reports: devices, library versions, model status.

The GPU row is the outcome of :func:`~diva_numba.gpu.device.cuda_status`'s probe (a
Numba kernel on CuPy arrays and a cuBLAS product), with its reason when it fails;
the feature rows say which onnxruntime build is installed and what computes the
features on each device.
"""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version

from diva_numba import __version__
from diva_numba.gpu.device import cuda_status, resolve_device


def _package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def _cupy_versions() -> list[tuple[str, str]]:
    try:
        import cupy
    except ImportError:
        return [("cupy", "not installed")]
    rows = [("cupy", cupy.__version__)]
    try:
        runtime = cupy.cuda.runtime.runtimeGetVersion()
        driver = cupy.cuda.runtime.driverGetVersion()
        rows.append(("CUDA runtime", _cuda_version_string(runtime)))
        rows.append(("CUDA driver", _cuda_version_string(driver)))
    except Exception as exc:  # CuPy installed for a CUDA the machine lacks
        rows.append(("CUDA", f"unavailable ({exc.__class__.__name__})"))
    return rows


def _cuda_version_string(number: int) -> str:
    return f"{number // 1000}.{(number % 1000) // 10}"


def _feature_rows(gpu_ok: bool) -> list[tuple[str, str]]:
    """The onnxruntime build, its providers, and what computes the features on each device."""
    from diva_numba.network.features import cpu_feature_path, gpu_feature_path, onnxruntime_build

    build = onnxruntime_build()
    gpu_path = gpu_feature_path(build)
    return [
        ("onnxruntime", build.flavour),
        ("onnxruntime providers", ", ".join(build.providers) or "none"),
        ("features on the CPU", cpu_feature_path() if not build.error else "unavailable"),
        ("features on the GPU", gpu_path if gpu_ok else f"no usable GPU; with one: {gpu_path}"),
    ]


def _model_rows() -> list[tuple[str, str]]:
    from diva_numba.models.store import model_status

    status = model_status()
    if not status["present"]:
        return [("model", f"not fetched yet (will be fetched to {status['path']} on first use)")]
    state = "verified" if status["verified"] else "CHECKSUM MISMATCH (will be re-fetched)"
    return [
        ("model", str(status["path"])),
        ("model status", f"{state}, {status['size'] / 1e6:.1f} MB, from {status['source']}"),
    ]


def collect_info() -> list[tuple[str, str]]:
    """Rows of (label, value) describing this installation."""
    device = resolve_device("auto")
    ok, reason = cuda_status()
    rows = [
        ("diva-numba", __version__),
        ("python", platform.python_version()),
        ("platform", platform.platform()),
        ("numpy", _package_version("numpy")),
        ("numba", _package_version("numba")),
        *_cupy_versions(),
        ("GPU", device.description if ok else f"none usable: {reason}"),
        ("device (auto)", device.kind),
        *_feature_rows(ok),
        *_model_rows(),
    ]
    return rows
