"""What ``diva-numba info`` reports: devices, library versions, model status."""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version

from diva_numba import __version__
from diva_numba.device import cuda_status, resolve_device


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


def _onnxruntime_providers() -> str:
    try:
        import onnxruntime
    except ImportError:
        return "onnxruntime not installed"
    return ", ".join(onnxruntime.get_available_providers())


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
        ("onnxruntime", _package_version("onnxruntime") + _gpu_build_suffix()),
        ("onnxruntime providers", _onnxruntime_providers()),
        *_cupy_versions(),
        ("GPU", device.description if ok else f"none usable: {reason}"),
        ("device (auto)", device.kind),
        *_model_rows(),
    ]
    return rows


def _gpu_build_suffix() -> str:
    gpu = _package_version("onnxruntime-gpu")
    return "" if gpu == "not installed" else f" (onnxruntime-gpu {gpu})"
