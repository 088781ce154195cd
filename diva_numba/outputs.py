"""Outputs that appear whole or not at all."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from diva_numba.errors import OutputError, os_reason


def check_target(path: Path, *, overwrite: bool) -> None:
    """Refuse an existing output unless ``overwrite``; refuse a missing parent directory."""
    if path.exists() and not overwrite:
        raise OutputError(f"{path} exists; pass --overwrite to replace it")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"{path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"{path}: directory {parent} is not writable")


@contextmanager
def atomic_directory(path: Path, *, overwrite: bool) -> Iterator[Path]:
    """A temporary directory beside ``path`` that becomes ``path`` when the block succeeds.

    On any exception the temporary directory is removed and an existing
    ``path`` is left as it was; an OSError (disk full, ...) becomes an
    :class:`OutputError`.
    """
    check_target(path, overwrite=overwrite)
    parent = path.parent if str(path.parent) else Path(".")
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".part", dir=parent))
    except OSError as exc:
        raise OutputError(f"{path}: cannot create a directory ({exc.strerror})") from None
    try:
        yield staging
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=parent))
            os.replace(path, old / "previous")
            os.replace(staging, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, path)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise OutputError(f"cannot write {path}: {os_reason(exc)}") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
