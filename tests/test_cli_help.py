"""Every command's help: it shows, it is accurate, it names the environment it reads."""

from __future__ import annotations

import click
import pytest
from cli_checks import assert_one_error
from click.testing import CliRunner

from diva_numba.cli import cli


def _commands(group: click.Group, prefix: tuple[str, ...] = ()):
    for name, command in sorted(group.commands.items()):
        yield (*prefix, name), command
        if isinstance(command, click.Group):
            yield from _commands(command, (*prefix, name))


COMMANDS = [((), cli), *_commands(cli)]


@pytest.mark.parametrize("path, command", COMMANDS, ids=[" ".join(p) or "cli" for p, _ in COMMANDS])
def test_help_shows_and_names_every_environment_variable_an_option_reads(path, command):
    result = CliRunner().invoke(cli, [*path, "--help"], terminal_width=100)
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output
    for param in command.params:
        if isinstance(param, click.Option) and param.envvar:
            names = [param.envvar] if isinstance(param.envvar, str) else list(param.envvar)
            for name in names:
                assert name in result.output, f"{' '.join(path)} {param.opts[0]}: {name}"


def _help(*args: str) -> str:
    result = CliRunner().invoke(cli, [*args, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())


def _option_help(command: str, option: str) -> str:
    (param,) = [p for p in cli.commands[command].params if option in p.opts]
    return param.help


def test_analogy_help_does_not_speak_of_video_frames():
    assert "frame" not in _help("analogy")
    assert _option_help("analogy", "--lbfgs-iters").startswith(
        "L-BFGS iterations per deconvolution at most [default:"
    )
    assert _option_help("analogy", "--iters") == "PatchMatch iterations per level."


def test_transfer_help_says_which_frames_take_the_analogy_options():
    assert "later frames: --guided-lbfgs-iters" in _option_help("transfer", "--lbfgs-iters")
    assert "later frames: --guided-iters" in _option_help("transfer", "--iters")


def test_the_model_cache_variable_is_named_where_models_are_cached():
    assert "DIVA_NUMBA_CACHE" in _help("models")
    assert "DIVA_NUMBA_CACHE" in _help("models", "fetch")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["transfer", "missing.png", "missing.mp4", "-o", "out.mp4"],
         "Invalid value for 'STYLE': File 'missing.png' does not exist. "
         "(usage: 'diva-numba transfer --help')"),
        (["--bogus"], "No such option '--bogus'"),
        (["nosuch"], "No such command 'nosuch'. (usage: 'diva-numba --help')"),
        (["metrics", "texture"], "Missing argument 'OUTPUT'. "
         "(usage: 'diva-numba metrics texture --help')"),
    ],
)  # fmt: skip
def test_a_usage_error_is_one_line_that_points_to_the_help(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, args, prog_name="diva-numba")
    line = assert_one_error(result, 2)
    assert message in line, line


@pytest.mark.parametrize("args", [[], ["metrics"], ["models"]])
def test_a_group_given_nothing_shows_its_help_not_an_error(args):
    result = CliRunner().invoke(cli, args, prog_name="diva-numba")
    assert "Error" not in result.output and "Commands:" in result.output, result.output
    assert result.output.startswith("Usage: diva-numba")
