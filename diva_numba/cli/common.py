"""Pieces shared by the click commands: the device option, error translation, notices."""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import sys

import click

from diva_numba.errors import DivaError
from diva_numba.gpu.device import Device, resolve_device


class UserError(click.ClickException):
    """A :class:`DivaError` shown as one line with the error's own exit status."""

    def __init__(self, error: DivaError):
        super().__init__(str(error))
        self.exit_code = error.exit_code


class FiniteFloat(click.FloatRange):
    """A float option in a range that also refuses NaN and infinity.

    ``click.FloatRange`` lets both through: NaN compares false with every bound,
    and an open upper bound admits infinity.
    """

    name = "finite float"

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


def notice(message: str) -> None:
    """One line to stderr that the user should read but that is not an error.

    Written above a progress bar on screen (the bar is drawn again below it),
    so that the two do not share a line.
    """
    from tqdm import tqdm

    tqdm.write(f"diva-numba: {message}", file=sys.stderr)


def device_option(command):
    """Add ``--device auto|cuda|cpu``; the command receives a resolved :class:`Device`.

    The GPU is probed before the command does any work
    (:func:`~diva_numba.gpu.device.cuda_status`): with ``auto`` a GPU that fails the
    probe means the CPU and a notice with the reason; with ``cuda`` it is a
    :class:`~diva_numba.errors.DeviceError` (exit 4) with the reason.
    """

    @click.option(
        "--device",
        "device_name",
        type=click.Choice(["auto", "cuda", "cpu"]),
        default="auto",
        show_default=True,
        help="Compute device; auto uses CUDA when a trial Numba kernel and a cuBLAS "
        "product run correctly on the GPU, and otherwise the CPU, saying why.",
    )
    @functools.wraps(command)
    def wrapper(*args, device_name: str, **kwargs):
        device = resolve_device(device_name)
        if device.note and not kwargs.get("quiet"):
            notice(device.note)
        return command(*args, device=device, **kwargs)

    return wrapper


def quiet_option(command):
    """Add ``-q/--quiet``: no progress, notices or summary on stderr; errors still show."""

    @click.option(
        "-q",
        "--quiet",
        is_flag=True,
        help="No progress, notices or summary on standard error (errors still show).",
    )
    @functools.wraps(command)
    def wrapper(*args, quiet: bool, **kwargs):
        if quiet:
            # The library's notices about inputs are warnings (a dropped alpha channel,
            # a reduced decode); -q promises none of them, only the errors.
            logging.getLogger("diva_numba").setLevel(logging.ERROR)
        return command(*args, quiet=quiet, **kwargs)

    return wrapper


def as_user_errors(command):
    """Turn DivaError into a one-line ClickException inside ``command``."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except DivaError as exc:
            raise UserError(exc) from None

    return wrapper


def is_interactive() -> bool:
    """Whether a person is at the terminal to answer a question."""
    return sys.stdin.isatty() and sys.stderr.isatty()


def ask_cpu_fallback(reason: str) -> bool:
    """On a terminal, ask whether to continue on the CPU after running out of GPU memory."""
    return is_interactive() and click.confirm(
        f"diva-numba: {reason}. Continue on the CPU instead (much slower)?", err=True
    )


def default_of(params_class, name: str):
    """The default of field ``name`` of a parameter dataclass, for a click option."""
    for item in dataclasses.fields(params_class):
        if item.name == name:
            return item.default
    raise AttributeError(f"{params_class.__name__} has no field {name!r}")


def by_device(defaults: dict[str, object]) -> str:
    """A per-device default as option help shows it: ``480 on a GPU, 320 on the CPU``."""
    return f"{defaults['cuda']} on a GPU, {defaults['cpu']} on the CPU"


__all__ = [
    "Device",
    "FiniteFloat",
    "UserError",
    "as_user_errors",
    "ask_cpu_fallback",
    "by_device",
    "default_of",
    "device_option",
    "is_interactive",
    "notice",
    "quiet_option",
]
