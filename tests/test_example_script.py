"""tools/example.sh installs once, reinstalls only when the package changes, and stays quiet.

The script runs in a copy of the checkout's layout with a stand-in virtual
environment: its ``python`` records pip calls (printing noise, as pip and
setuptools do) and runs everything else with this interpreter, and its
``diva-numba`` prints the arguments it was given.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "example.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


@pytest.fixture
def checkout(tmp_path):
    (tmp_path / "tools").mkdir()
    shutil.copy(SCRIPT, tmp_path / "tools" / "example.sh")
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "diva-numba"\n')
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    _script(
        bin_dir / "python",
        f"""if [ "$1 $2" = "-m pip" ]; then
    echo "$@" >> "{tmp_path}/pip-calls"
    echo "********** BuildBackendWarning: Editable installation. **********" >&2
    echo "Successfully installed diva-numba"
    exit "${{PIP_EXIT:-0}}"
fi
exec "{sys.executable}" "$@"
""",
    )
    _script(bin_dir / "diva-numba", 'echo "diva-numba $*"\n')
    return tmp_path


def _script(path: Path, body: str) -> None:
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(0o755)


def _run(checkout: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(checkout / "tools" / "example.sh"), *args],
        capture_output=True,
        text=True,
        env={**os.environ, "DIVA_VENV": ".venv", **env},
        timeout=60,
    )


def _pip_calls(checkout: Path) -> int:
    calls = checkout / "pip-calls"
    return len(calls.read_text().splitlines()) if calls.exists() else 0


def test_installs_once_quietly_then_only_when_the_package_changes(checkout):
    first = _run(checkout, "--end", "4")
    assert first.returncode == 0, first.stderr
    assert _pip_calls(checkout) == 1
    assert "Warning" not in first.stderr + first.stdout
    assert "Successfully" not in first.stderr + first.stdout
    assert first.stdout.strip() == (
        "diva-numba transfer tools/example/style.png tools/example/clip.mp4 -o example-out.mp4 "
        "--style-frame 24 --preview --overwrite --end 4"
    )

    again = _run(checkout)
    assert again.returncode == 0, again.stderr
    assert _pip_calls(checkout) == 1
    assert again.stderr == ""

    with open(checkout / "pyproject.toml", "a") as pyproject:
        pyproject.write('dependencies = ["numpy"]\n')
    changed = _run(checkout)
    assert changed.returncode == 0, changed.stderr
    assert _pip_calls(checkout) == 2


def test_a_failed_install_shows_pips_output_and_is_tried_again(checkout):
    failed = _run(checkout, PIP_EXIT="1")
    assert failed.returncode == 1
    assert "BuildBackendWarning" in failed.stderr
    assert "installing failed" in failed.stderr
    assert "diva-numba transfer" not in failed.stdout
    assert _run(checkout).returncode == 0
    assert _pip_calls(checkout) == 2
