"""``diva-numba bench``: kernel microbenchmarks against the device's measured limits."""

from __future__ import annotations

from pathlib import Path

import click

from diva_numba.bench import (
    KERNEL_NAMES,
    SIZES,
    BenchSettings,
    format_markdown,
    format_table,
    run_benchmarks,
    write_json,
)
from diva_numba.cli.common import as_user_errors, default_of, device_option, notice
from diva_numba.outputs import check_target


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@device_option
@click.option(
    "--kernel",
    "kernels",
    multiple=True,
    type=click.Choice(KERNEL_NAMES),
    metavar="NAME",
    help=f"Time only this kernel (repeatable; default: all): {', '.join(KERNEL_NAMES)}.",
)
@click.option(
    "--repeat",
    type=click.IntRange(min=1),
    default=default_of(BenchSettings, "repeat"),
    show_default=True,
    help="Timed calls per case after the warm-up call (slow cases stop after ~10 s).",
)
@click.option(
    "--size",
    type=click.Choice(SIZES),
    default=default_of(BenchSettings, "size"),
    show_default=True,
    help="real: the sizes of a 448x448 image; small: tiny inputs that only check it all runs.",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Also write every timing and derived rate to this JSON file.",
)
@click.option(
    "--markdown",
    is_flag=True,
    help="Print a Markdown table (for BENCHMARKS.md) instead of the plain-text one.",
)
@click.option("--overwrite", is_flag=True, help="Replace the --json file if it exists.")
@click.option("-q", "--quiet", is_flag=True, help="No progress lines on stderr.")
@as_user_errors
def bench(device, kernels, repeat, size, json_path, markdown, overwrite, quiet):
    """Time each Numba kernel and report its share of the device's limits.

    Measures the device's memory bandwidth and float32 matrix rate first, then
    times every kernel at the sizes a 448x448 image gives it (median of the
    timed calls after a warm-up call that compiles). For each case it prints
    the compulsory bytes and/or FLOPs, the rates achieved and the percentage of
    the roofline limit (100% = as fast as the device can move the data or do
    the arithmetic).
    """
    if json_path is not None:
        check_target(json_path, overwrite=overwrite)  # before minutes of timing, not after
    settings = BenchSettings(size=size, repeat=repeat, kernels=tuple(dict.fromkeys(kernels)))
    report = run_benchmarks(device, settings=settings, progress=None if quiet else notice)
    click.echo(format_markdown(report) if markdown else format_table(report))
    if json_path is not None:
        write_json(report, json_path, overwrite=overwrite)
        if not quiet:
            notice(f"wrote {json_path}")


__all__ = ["bench"]
