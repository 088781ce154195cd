"""Checks shared by the command-line tests: one error line, nothing left half-written."""

from pathlib import Path


def assert_one_error(result, exit_code: int) -> str:
    """The single `Error:` line of a failed run, after checking its exit status."""
    assert result.exit_code == exit_code, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, result.output
    # Progress and notices may come first, but not click's usage block around the error.
    assert not any(line.startswith(("Usage:", "Try '")) for line in result.output.splitlines()), (
        result.output
    )
    return lines[0]


def hidden_files(directory: Path) -> list[str]:
    """Names of the dot-files in ``directory``: where temporary outputs would be left."""
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))
