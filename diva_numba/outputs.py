"""Outputs that appear whole or not at all, and the checksums that tie a run to its inputs."""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from diva_numba.errors import OutputError, os_reason

#: Suffix of every temporary file an :class:`AtomicFile` makes (cleaners look for it).
PARTIAL_SUFFIX = ".part"


class AtomicFile:
    """A file that appears at ``path`` complete, or not at all.

    The content is written to a temporary file with a unique name beside
    ``path`` (same file system, so the final rename is atomic), created with
    the permissions the umask gives a new file. :meth:`commit` moves it into
    place; :meth:`discard` deletes it. Used as a context manager it yields the
    temporary path, commits when the block succeeds and discards otherwise.

    Parameters
    ----------
    path : path-like
        The file to create or replace.
    fsync : bool, default False
        Flush the content to the disk before the rename, for files that must
        survive a power cut (caches that are trusted later).

    Raises
    ------
    OutputError
        The directory is missing or not writable, or writing fails (disk
        full, ...); the message names ``path`` and the reason.
    """

    def __init__(self, path: str | os.PathLike, *, fsync: bool = False):
        self.path = Path(path)
        self.fsync = fsync
        directory = self.path.parent
        self.temp = directory / f".{self.path.name}.{secrets.token_hex(6)}{PARTIAL_SUFFIX}"
        try:
            # Not tempfile.mkstemp: its files are private (0600) whatever the umask says.
            os.close(os.open(self.temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileNotFoundError:
            raise OutputError(f"{self.path}: directory {directory} does not exist") from None
        except PermissionError:
            raise OutputError(f"{self.path}: directory {directory} is not writable") from None
        except OSError as exc:
            raise OutputError(f"cannot write {self.path}: {os_reason(exc)}") from None

    def commit(self) -> None:
        """Move the finished temporary file into place."""
        try:
            if self.fsync:
                fd = os.open(self.temp, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            os.replace(self.temp, self.path)
        except OSError as exc:
            self.discard()
            raise OutputError(f"cannot write {self.path}: {os_reason(exc)}") from None

    def discard(self) -> None:
        """Delete the temporary file; ``path`` is left as it was."""
        self.temp.unlink(missing_ok=True)

    def __enter__(self) -> Path:
        return self.temp

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None:
            self.commit()
            return
        self.discard()
        if isinstance(exc, OSError):
            raise OutputError(f"cannot write {self.path}: {os_reason(exc)}") from None


def write_atomically(path: str | os.PathLike, data: bytes, *, fsync: bool = False) -> None:
    """Write ``data`` to ``path`` through an :class:`AtomicFile`."""
    with AtomicFile(path, fsync=fsync) as temp, open(temp, "wb") as handle:
        handle.write(data)


def check_target(path: Path, *, overwrite: bool, inputs: Iterable[os.PathLike] = ()) -> None:
    """Refuse an output that would destroy an input, or that cannot be written.

    Parameters
    ----------
    path : Path
        The output file or directory.
    overwrite : bool
        Whether an existing ``path`` may be replaced.
    inputs : iterable of path-like, optional
        Files the run reads. An output that is one of them, whatever the
        spelling of either path (relative, through a symbolic link, a hard
        link), is refused even with ``overwrite``; so is an output directory
        that holds one of them (replacing it would delete the input).

    Raises
    ------
    OutputError
    """
    path = Path(path)
    refuse_inputs(path, inputs)
    if path.exists() and not overwrite:
        raise OutputError(f"{path} exists; pass --overwrite to replace it")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"{path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"{path}: directory {parent} is not writable")


def refuse_inputs(path: Path, inputs: Iterable[os.PathLike]) -> None:
    """Refuse an output ``path`` whose writing would replace or delete one of ``inputs``.

    Raises
    ------
    OutputError
    """
    for source in inputs:
        if _destroys(Path(path), Path(source)):
            raise OutputError(f"{path} is an input of this run ({source}); choose another output")


def _destroys(output: Path, source: Path) -> bool:
    """Whether writing ``output`` would replace or delete ``source``."""
    if not output.exists() or not source.exists():
        return False
    if os.path.samefile(output, source):
        return True
    if output.is_dir() and not output.is_symlink():
        resolved = source.resolve()
        if resolved.is_relative_to(output.resolve()):
            return True
        # A hard link to the input inside the directory dies with it too.
        identity = (source.stat().st_dev, source.stat().st_ino)
        return any(
            (entry.stat().st_dev, entry.stat().st_ino) == identity
            for entry in output.rglob("*")
            if entry.is_file()
        )
    return False


def check_free_space(directory: Path, needed: int, *, what: str) -> None:
    """Refuse to start when ``directory``'s file system has less than ``needed`` bytes free.

    Raises
    ------
    OutputError
        Naming ``what`` needs the space, and how much is missing.
    """
    directory = Path(directory)
    while not directory.exists() and directory != directory.parent:
        directory = directory.parent
    free = shutil.disk_usage(directory).free
    if free < needed:
        raise OutputError(
            f"not enough free space in {directory} for {what}: it needs about "
            f"{_megabytes(needed)}, {_megabytes(free)} are free"
        )


def _megabytes(count: int) -> str:
    return f"{count / 1e6:,.0f} MB" if count >= 1e6 else f"{count / 1e3:,.0f} kB"


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


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's content, hex (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
