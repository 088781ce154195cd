"""What a benchmark run measured, and how it is printed and saved.

A case's *fraction of limit* is its roofline floor, ``max(bytes / bandwidth, flops /
matmul rate)``, over its median time: 100 % means the kernel runs as fast as the
device could possibly move its data or do its arithmetic.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from diva_numba.bench.backends import DeviceLimits
from diva_numba.outputs import check_target, write_atomically

if TYPE_CHECKING:
    from diva_numba.bench.runner import BenchSettings


@dataclass(frozen=True)
class Measurement:
    """The timings of one benchmark case.

    Attributes
    ----------
    kernel : str
        Name from :data:`~diva_numba.bench.cases.KERNEL_NAMES`.
    case : str
        Which instance, e.g. ``relu1_1 p5``.
    shape : str
        The main input's shape.
    seconds : tuple of float
        Every timed call, in order.
    bytes : int or None
        Compulsory memory traffic.
    flops : int or None
        Floating-point operations (an upper bound where the kernel skips work).
    """

    kernel: str
    case: str
    shape: str
    seconds: tuple[float, ...]
    bytes: int | None
    flops: int | None

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def bandwidth(self) -> float | None:
        """Achieved compulsory bytes per second."""
        return None if self.bytes is None else self.bytes / self.median

    @property
    def flop_rate(self) -> float | None:
        """Achieved floating-point operations per second."""
        return None if self.flops is None else self.flops / self.median

    def floor_seconds(self, limits: DeviceLimits) -> tuple[float, str]:
        """The roofline's lower bound on the time, and which limit sets it."""
        memory = 0.0 if self.bytes is None else self.bytes / limits.bandwidth
        compute = 0.0 if self.flops is None else self.flops / limits.matmul_rate
        return (memory, "memory") if memory >= compute else (compute, "compute")

    def limit_fraction(self, limits: DeviceLimits) -> float:
        """Roofline floor over the median time (1.0: as fast as the device allows)."""
        return self.floor_seconds(limits)[0] / self.median


@dataclass(frozen=True)
class BenchReport:
    """Everything one benchmark run measured.

    Attributes
    ----------
    device : str
        Human-readable device (GPU model, or CPU model and thread count).
    settings : BenchSettings
    limits : DeviceLimits
    measurements : tuple of Measurement
    environment : dict
        Date, library versions and thread counts.
    """

    device: str
    settings: BenchSettings
    limits: DeviceLimits
    measurements: tuple[Measurement, ...]
    environment: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """A JSON-ready dictionary, with the derived rates of every case."""
        rows = []
        for measurement in self.measurements:
            row = asdict(measurement)
            row["seconds"] = list(measurement.seconds)
            _, bound = measurement.floor_seconds(self.limits)
            row.update(
                median_seconds=measurement.median,
                bytes_per_second=measurement.bandwidth,
                flops_per_second=measurement.flop_rate,
                limit_fraction=measurement.limit_fraction(self.limits),
                bound=bound,
            )
            rows.append(row)
        settings = asdict(self.settings)
        settings["kernels"] = list(self.settings.kernels)
        return {
            "device": self.device,
            "settings": settings,
            "limits": asdict(self.limits),
            "environment": self.environment,
            "measurements": rows,
        }


_COLUMNS = (
    "kernel",
    "case",
    "shape",
    "runs",
    "median ms",
    "best ms",
    "MB",
    "GFLOP",
    "GB/s",
    "GFLOP/s",
    "% of limit",
)
#: The first columns hold text (left-aligned); the others numbers (right-aligned).
_TEXT_COLUMNS = 3


def shape_text(shape) -> str:
    """``(512, 56, 56)`` as ``512x56x56``, the form :attr:`Measurement.shape` holds."""
    return "x".join(str(size) for size in shape)


def _number(value: float | None, unit: float, digits: int) -> str:
    """``value / unit`` with thousands separators, or ``-`` when unknown."""
    if value is None:
        return "-"
    return f"{value / unit:,.{digits}f}"


def _rows(report: BenchReport) -> list[tuple[str, ...]]:
    rows = []
    for measurement in report.measurements:
        _, bound = measurement.floor_seconds(report.limits)
        fraction = measurement.limit_fraction(report.limits)
        rows.append(
            (
                measurement.kernel,
                measurement.case,
                measurement.shape,
                str(len(measurement.seconds)),
                _number(measurement.median, 1e-3, 3),
                _number(min(measurement.seconds), 1e-3, 3),
                _number(measurement.bytes, 1e6, 1),
                _number(measurement.flops, 1e9, 2),
                _number(measurement.bandwidth, 1e9, 1),
                _number(measurement.flop_rate, 1e9, 1),
                f"{100 * fraction:.1f} ({bound})",
            )
        )
    return rows


def _header_lines(report: BenchReport) -> list[str]:
    limits = report.limits
    return [
        f"device: {report.device}",
        f"memory bandwidth: {limits.bandwidth / 1e9:,.1f} GB/s ({limits.bandwidth_method})",
        f"matmul rate: {limits.matmul_rate / 1e9:,.1f} GFLOP/s ({limits.matmul_method})",
        f"sizes: {report.settings.size}; median of up to {report.settings.repeat} timed calls "
        "after a warm-up call",
    ]


def format_table(report: BenchReport) -> str:
    """The report as aligned plain text: a few header lines, then one row per case."""
    rows = [_COLUMNS, *_rows(report)]
    widths = [max(len(row[column]) for row in rows) for column in range(len(_COLUMNS))]

    def line(row):
        cells = (
            cell.ljust(width) if index < _TEXT_COLUMNS else cell.rjust(width)
            for index, (cell, width) in enumerate(zip(row, widths, strict=True))
        )
        return "  ".join(cells).rstrip()

    body = [line(rows[0]), "  ".join("-" * width for width in widths), *map(line, rows[1:])]
    return "\n".join([*_header_lines(report), "", *body])


def format_markdown(report: BenchReport) -> str:
    """The report as a Markdown list of the limits and a GitHub table, for BENCHMARKS.md."""
    header = [f"- {line}" for line in _header_lines(report)]
    alignment = ["---" if index < _TEXT_COLUMNS else "---:" for index in range(len(_COLUMNS))]
    table = ["| " + " | ".join(row) + " |" for row in (_COLUMNS, tuple(alignment), *_rows(report))]
    return "\n".join([*header, "", *table])


def write_json(report: BenchReport, path: Path, *, overwrite: bool = False) -> None:
    """Write :meth:`BenchReport.to_dict` to ``path`` (never half-written).

    Raises
    ------
    OutputError
        If the file exists and ``overwrite`` is not given, or cannot be written.
    """
    path = Path(path)
    check_target(path, overwrite=overwrite)
    write_atomically(path, (json.dumps(report.to_dict(), indent=2) + "\n").encode())


__all__ = [
    "BenchReport",
    "Measurement",
    "format_markdown",
    "format_table",
    "shape_text",
    "write_json",
]
