"""Kernel microbenchmarks: each kernel at the analogy's real sizes, against the device's limits.

* :mod:`~diva_numba.bench.cases` holds the benchmark cases: the kernels timed, their
  inputs at the pipeline's sizes, and the bytes and FLOPs each cannot avoid;
* :mod:`~diva_numba.bench.backends` is the device side: the measured memory bandwidth
  and matmul rate, cache eviction, and timing on the CPU or between CUDA
  synchronisations;
* :mod:`~diva_numba.bench.runner` holds the settings and the loop that times the cases;
* :mod:`~diva_numba.bench.report` holds the results, their share of the device's
  limits, and the table, Markdown and JSON they are written as.
"""

from diva_numba.bench.backends import DeviceLimits
from diva_numba.bench.cases import KERNEL_NAMES, SIZES, benchmark_cases
from diva_numba.bench.report import (
    BenchReport,
    Measurement,
    format_markdown,
    format_table,
    write_json,
)
from diva_numba.bench.runner import BenchSettings, run_benchmarks

__all__ = [
    "KERNEL_NAMES",
    "SIZES",
    "BenchReport",
    "BenchSettings",
    "DeviceLimits",
    "Measurement",
    "benchmark_cases",
    "format_markdown",
    "format_table",
    "run_benchmarks",
    "write_json",
]
