"""The ``diva-numba`` command line."""

from __future__ import annotations

import sys

import click

from diva_numba import __version__
from diva_numba.cli_common import UserError, notice
from diva_numba.errors import DivaError


class DivaGroup(click.Group):
    """A group whose commands report DivaError and Ctrl-C as one line each."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except DivaError as exc:
            raise UserError(exc) from None
        except KeyboardInterrupt:
            notice("interrupted")
            ctx.exit(130)


@click.group(cls=DivaGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="diva-numba")
def cli():
    """Deep Image Video Analogy: give a video the look of a style image.

    Run `diva-numba COMMAND --help` for the options of each command.
    """


@cli.command()
def info():
    """Show the compute devices, library versions and model status."""
    from diva_numba.info import collect_info

    for key, value in collect_info():
        click.echo(f"{key + ':':<22} {value}")


def _register_subcommands() -> None:
    from diva_numba.cli_models import models

    cli.add_command(models)


_register_subcommands()


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="diva-numba")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

__all__ = ["cli", "main"]
