"""The ``diva-numba`` command line."""

from __future__ import annotations

from diva_numba.environment import apply_runtime_defaults

# Before anything below imports NumPy or Numba, or the settings come too late.
apply_runtime_defaults()

import logging  # noqa: E402
import sys  # noqa: E402

import click  # noqa: E402

from diva_numba import __version__  # noqa: E402
from diva_numba.cli.common import UserError, notice  # noqa: E402
from diva_numba.errors import DivaError  # noqa: E402


class DivaGroup(click.Group):
    """A group whose commands report DivaError, usage errors and Ctrl-C as one line each."""

    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.exceptions.NoArgsIsHelpError:
            raise  # a group given nothing shows its help, as it should
        except click.UsageError as exc:
            raise _one_line(exc) from None

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except DivaError as exc:
            raise UserError(exc) from None
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as exc:
            raise _one_line(exc) from None
        except KeyboardInterrupt:
            notice("interrupted")
            ctx.exit(130)


def _one_line(error: click.UsageError) -> click.ClickException:
    """A usage error (a missing file, an unknown option) as one ``Error:`` line, like every
    other error: click's usage block above it repeats what ``--help`` is for."""
    command = error.ctx.command_path if error.ctx is not None else "diva-numba"
    one_line = click.ClickException(f"{error.format_message()} (usage: '{command} --help')")
    one_line.exit_code = error.exit_code
    return one_line


@click.group(cls=DivaGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="diva-numba")
@click.option("-v", "--verbose", is_flag=True, help="Also report the progress of every stage.")
def cli(verbose: bool):
    """Deep Image Video Analogy: give a video the look of a style image.

    Run `diva-numba COMMAND --help` for the options of each command.
    """
    _configure_logging(logging.DEBUG if verbose else logging.INFO)


class _NoticeHandler(logging.Handler):
    """Library log records as `diva-numba: message` lines on stderr.

    A warning is said once per run: an input read twice (a mask checked, then
    opened for the frames; an image given as both style and mask) would say the
    same thing about it again.
    """

    def __init__(self):
        super().__init__()
        self._warned: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.levelno >= logging.WARNING:
            if message in self._warned:
                return
            self._warned.add(message)
        notice(message)


def _configure_logging(level: int) -> None:
    logger = logging.getLogger("diva_numba")
    logger.handlers[:] = [_NoticeHandler()]
    logger.setLevel(level)
    logger.propagate = False


@cli.command()
def info():
    """Show the compute devices, library versions and model status."""
    from diva_numba.cli.system_info import collect_info

    for key, value in collect_info():
        click.echo(f"{key + ':':<22} {value}")


def _register_subcommands() -> None:
    from diva_numba.cli.analogy_command import analogy
    from diva_numba.cli.bench_command import bench
    from diva_numba.cli.metrics_command import metrics
    from diva_numba.cli.models_command import models
    from diva_numba.cli.stylise_command import stylise
    from diva_numba.cli.transfer_command import transfer

    for command in (analogy, transfer, stylise, bench, metrics, models):
        cli.add_command(command)


_register_subcommands()


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="diva-numba")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

__all__ = ["cli", "main"]
