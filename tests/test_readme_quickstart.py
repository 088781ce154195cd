"""Every command of the README's quick start runs as written, on small inputs.

The quick start's snippets are read from README.md itself: ``tools/example.sh``
runs in a copy of the checkout's layout with this environment standing in for
``.venv`` (already installed, so nothing is installed) on a few frames of the
bundled example; the ``diva-numba`` commands run with their own arguments on
small files of the names they use. The tiny model stands in for VGG-19 through
``DIVA_NUMBA_MODEL``, which the commands honour.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import cv2
import pytest
from click.testing import CliRunner
from clips import pan_frames, write_clip

from diva_numba.cli import cli
from diva_numba.video import probe_video

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_FRAMES = ["--start", "23", "--end", "26", "--work-size", "64"]
FAST = ["--iters", "2", "--lbfgs-iters", "2", "--guided-iters", "1", "--guided-lbfgs-iters", "1"]


def quick_start() -> str:
    readme = (ROOT / "README.md").read_text()
    return readme.split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]


def snippets() -> list[str]:
    """The quick start's commands: its indented code lines."""
    return [line.strip() for line in quick_start().splitlines() if line.startswith("    ")]


def test_the_quick_start_fits_one_screen_and_holds_only_known_commands():
    assert len(quick_start().splitlines()) <= 45
    commands = snippets()
    assert commands[0] == "tools/example.sh"
    assert {shlex.split(c)[:2][-1] for c in commands[1:]} == {"transfer", "analogy"}
    assert all(c.startswith(".venv/bin/diva-numba ") for c in commands[1:])


def test_the_options_the_quick_start_names_exist():
    help_text = CliRunner().invoke(cli, ["transfer", "--help"]).output
    named = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", quick_start()))
    assert named >= {"--style-frame", "--work-size", "--start", "--end", "--resume"}
    assert all(option in help_text for option in named)


@pytest.fixture
def small_files(tmp_path, monkeypatch, tiny_model):
    frames = pan_frames(4, width=64, height=48)
    write_clip(tmp_path / "my-clip.mp4", frames, fps=Fraction(25))
    style = cv2.applyColorMap(frames[0][:, :, 1], cv2.COLORMAP_JET)
    for name in ("my-style.png", "painting.png"):
        cv2.imwrite(str(tmp_path / name), style)
    cv2.imwrite(str(tmp_path / "photo.png"), frames[2][:, :, ::-1])
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.slow
def test_the_diva_numba_commands_run_as_written(small_files, tiny_model):
    for command in snippets()[1:]:
        args = shlex.split(command)[1:]
        result = CliRunner().invoke(cli, args, env={"DIVA_NUMBA_MODEL": str(tiny_model)})
        assert result.exit_code == 0, f"{command}\n{result.output}"
        assert "done in" in result.stderr
    assert probe_video(small_files / "out.mp4").frame_count == 4
    assert (small_files / "out" / "A_prime.png").is_file()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_the_example_script_runs_on_a_few_frames(tmp_path, tiny_model):
    (tmp_path / "tools" / "example").mkdir(parents=True)
    shutil.copy(ROOT / "tools" / "example.sh", tmp_path / "tools")
    for name in ("clip.mp4", "style.png"):
        shutil.copy(ROOT / "tools" / "example" / name, tmp_path / "tools" / "example")
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    # This environment stands in for .venv, already installed.
    venv_bin = tmp_path / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "python").symlink_to(sys.executable)
    command = venv_bin / "diva-numba"
    command.write_text(f'#!/usr/bin/env bash\nexec "{sys.executable}" -m diva_numba "$@"\n')
    command.chmod(0o755)
    stamp = subprocess.run(
        [sys.executable, "-c", _STAMP], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    (tmp_path / ".venv" / ".diva-numba-install").write_text(stamp.stdout)

    result = subprocess.run(
        ["bash", "tools/example.sh", *EXAMPLE_FRAMES, *FAST],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "DIVA_NUMBA_MODEL": str(tiny_model), "DIVA_VENV": ".venv"},
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert "installing" not in result.stderr
    assert "transfer: carrying the keyframes along the optical flow" in result.stderr
    assert "transfer: frame 23, full analogy, level 5: patchmatch" in result.stderr
    assert "diva-numba: done in" in result.stderr
    assert result.stdout.strip() == "example-out.mp4"
    assert probe_video(tmp_path / "example-out.mp4").frame_count == 3
    assert (tmp_path / "example-out.mp4.preview.png").is_file()


def _stamp_command() -> str:
    script = (ROOT / "tools" / "example.sh").read_text()
    return re.search(r"-c '(.*?)'", script).group(1)


_STAMP = _stamp_command()
