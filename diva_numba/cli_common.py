"""Pieces shared by the click commands: the device option, error translation, notices."""

from __future__ import annotations

import functools

import click

from diva_numba.device import Device, resolve_device
from diva_numba.errors import DivaError


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


__all__ = ["Device", "UserError", "as_user_errors", "device_option", "notice"]
