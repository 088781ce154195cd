"""Pieces shared by the click commands: the device option, error translation, notices."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

import click

from diva_numba.device import Device, is_out_of_memory, release_gpu_memory, resolve_device
from diva_numba.errors import DeviceError, DivaError

T = TypeVar("T")


class UserError(click.ClickException):
    """A :class:`DivaError` shown as one line with the error's own exit status."""

    def __init__(self, error: DivaError):
        super().__init__(str(error))
        self.exit_code = error.exit_code


def notice(message: str) -> None:
    """One line to stderr that the user should read but that is not an error."""
    click.echo(f"diva-numba: {message}", err=True)


def device_option(command):
    """Add ``--device auto|cuda|cpu``; the command receives a resolved :class:`Device`."""

    @click.option(
        "--device",
        "device_name",
        type=click.Choice(["auto", "cuda", "cpu"]),
        default="auto",
        show_default=True,
        help="Compute device; auto uses CUDA when Numba sees a GPU and CuPy works.",
    )
    @functools.wraps(command)
    def wrapper(*args, device_name: str, **kwargs):
        device = resolve_device(device_name)
        if device.note:
            notice(device.note)
        return command(*args, device=device, **kwargs)

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


def within_memory(device: Device, work: Callable[[Device], T], *, smaller: str) -> T:
    """Run ``work(device)``, turning running out of memory into advice.

    Parameters
    ----------
    device : Device
    work : callable
        The whole computation on one device: model loading and every
        allocation must happen inside it, so that a retry starts clean.
    smaller : str
        What the user can lower, e.g. ``"--size (now 480) or --ratio"``.

    Returns
    -------
    What ``work`` returns.

    Raises
    ------
    DeviceError
        Out of memory, with the advice; when ``--device auto`` chose the GPU the
        line also offers ``--device cpu``, and on a terminal the user is asked
        whether to continue on the CPU right away.
    """
    try:
        return work(device)
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        where = "GPU memory" if device.is_cuda else "memory"
        message = f"out of {where} on {device.description}; try a smaller {smaller}"
    # Outside the except block: the failed attempt's frames, and its arrays, are gone.
    if device.is_cuda and device.automatic:
        release_gpu_memory()
        if is_interactive() and click.confirm(
            f"diva-numba: {message}. Continue on the CPU instead (much slower)?", err=True
        ):
            cpu = resolve_device("cpu")
            notice(f"continuing on the {cpu.description}")
            return within_memory(cpu, work, smaller=smaller)
        message += ", or run on the CPU with --device cpu"
    raise DeviceError(message)


__all__ = [
    "Device",
    "UserError",
    "as_user_errors",
    "device_option",
    "is_interactive",
    "notice",
    "within_memory",
]
