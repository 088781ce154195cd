"""Running the benchmarks: what to time, and the loop that times it.

Each case is called once to compile and warm up, then timed ``repeat`` times
(fewer when a case has used up its time budget, never fewer than once); the
median is reported.
"""

from __future__ import annotations

import datetime
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass

import numba
import numpy as np

from diva_numba.bench.backends import make_backend, measure_limits
from diva_numba.bench.cases import KERNEL_NAMES, SIZES, benchmark_cases
from diva_numba.bench.report import BenchReport, Measurement, shape_text
from diva_numba.gpu.device import Device


@dataclass(frozen=True)
class BenchSettings:
    """What :func:`run_benchmarks` times, and how often.

    Attributes
    ----------
    size : {"real", "small"}
        ``real``: the sizes of a 448 x 448 image (and 224 x 224 for the
        deconvolution step). ``small``: tiny sizes with a sixteenth of the
        channels, for checking that everything runs.
    repeat : int
        Timed calls per case (after one warm-up call).
    kernels : tuple of str
        Names from :data:`~diva_numba.bench.cases.KERNEL_NAMES` to run; empty
        runs them all.
    budget_seconds : float
        A case stops repeating once its timed calls add up to this (it always
        gets at least one), so the slowest CPU cases do not take minutes each.
    seed : int
        Seed of the random inputs.
    """

    size: str = "real"
    repeat: int = 5
    kernels: tuple[str, ...] = ()
    budget_seconds: float = 10.0
    seed: int = 0

    def __post_init__(self):
        if self.size not in SIZES:
            raise ValueError(f"size must be one of {SIZES}, got {self.size!r}")
        if self.repeat < 1:
            raise ValueError(f"repeat must be at least 1, got {self.repeat}")
        unknown = sorted(set(self.kernels) - set(KERNEL_NAMES))
        if unknown:
            raise ValueError(f"unknown kernels {unknown}; choose from {list(KERNEL_NAMES)}")


def run_benchmarks(
    device: Device,
    *,
    settings: BenchSettings = BenchSettings(),  # noqa: B008 (frozen, so sharing it is safe)
    progress: Callable[[str], None] | None = None,
) -> BenchReport:
    """Measure the device's limits, then time every selected case.

    Parameters
    ----------
    device : Device
        ``cpu``: NumPy inputs, the ``njit`` twins. ``cuda``: CuPy inputs, the CUDA
        kernels (imports CuPy).
    settings : BenchSettings
        Sizes, repeats, kernel selection.
    progress : callable, optional
        Called with a line of text before each case.

    Returns
    -------
    BenchReport
    """
    backend = make_backend(device)
    limits = measure_limits(backend, settings.size)
    measurements = []
    for case in benchmark_cases(settings.size, settings.kernels):
        if progress is not None:
            progress(f"timing {case.kernel} {case.case} {shape_text(case.shape)}")
        rng = np.random.default_rng(settings.seed)
        call = case.prepare(backend, rng)
        backend.time_call(call)  # compiles, allocates workspaces, warms caches
        seconds = []
        while len(seconds) < settings.repeat and (
            not seconds or sum(seconds) < settings.budget_seconds
        ):
            seconds.append(backend.time_call(call))
        del call  # free this case's inputs before the next one builds its own
        measurements.append(
            Measurement(
                kernel=case.kernel,
                case=case.case,
                shape=shape_text(case.shape),
                seconds=tuple(seconds),
                bytes=case.bytes,
                flops=case.flops,
            )
        )
    return BenchReport(
        device=backend.description,
        settings=settings,
        limits=limits,
        measurements=tuple(measurements),
        environment=_environment(device),
    )


def _environment(device: Device) -> dict:
    environment = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device_kind": device.kind,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "numba_threads": numba.config.NUMBA_NUM_THREADS,
        "cpu_count": os.cpu_count(),
    }
    if device.is_cuda:
        import cupy

        environment["cupy"] = cupy.__version__
        environment["cuda_runtime"] = cupy.cuda.runtime.runtimeGetVersion()
    return environment


__all__ = ["BenchSettings", "run_benchmarks"]
