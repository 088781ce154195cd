"""Outputs that appear whole or not at all, and the checksums that tie a run to its inputs."""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from diva_numba.errors import OutputError, os_reason

#: Suffix of every temporary file an :class:`AtomicFile` makes (cleaners look for it).
PARTIAL_SUFFIX = ".part"
#: File in every directory the tool fills, listing the files it wrote there.
MARKER = ".diva-numba-output"


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
            # Some file systems (/proc) refuse new files this way in a directory that exists.
            reason = "is not writable" if directory.is_dir() else "does not exist"
            raise OutputError(f"{self.path}: directory {directory} {reason}") from None
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


def check_target(
    path: str | os.PathLike,
    *,
    overwrite: bool,
    inputs: Iterable[os.PathLike] = (),
    directory: bool = False,
    members: Sequence[str] | None = None,
) -> None:
    """The one rule for every file and directory the tool writes, checked before any work.

    An existing output is replaced only with ``overwrite``; an input of the run
    is never replaced, even with it; an existing directory is replaced (or
    written into) only where the tool itself made what is there, as recorded
    by the marker file (:data:`MARKER`) it writes into every directory it fills.

    Parameters
    ----------
    path : path-like
        The output file, or directory with ``directory``.
    overwrite : bool
        Whether existing outputs may be replaced.
    inputs : iterable of path-like, optional
        Files the run reads. An output that is one of them, whatever the
        spelling of either path (relative, through a symbolic link, a hard
        link), is refused even with ``overwrite``; so is an output directory
        that holds one of them (replacing it would delete the input).
    directory : bool, default False
        ``path`` is a directory: replaced as a whole (``members`` None), or
        kept, with the files ``members`` written into it (it may exist then).
    members : sequence of str, optional
        Names of the files written into the directory ``path``.

    Raises
    ------
    OutputError
        One line naming the output and why it is refused.
    """
    path = Path(path)
    if members is None:  # the files written into a kept directory are checked one by one
        refuse_inputs(path, inputs)
    parent = path.parent if str(path.parent) else Path(".")
    if not directory:
        if path.is_dir():
            raise OutputError(f"{path} is a directory; give a file name")
        if path.exists() and not overwrite:
            raise OutputError(f"{path} exists; pass --overwrite to replace it")
    elif path.exists() and not path.is_dir():
        raise OutputError(f"{path} exists and is not a directory")
    elif members is not None:
        _check_members(path, members, overwrite=overwrite, inputs=inputs)
        if path.is_dir():
            parent = path
    elif path.exists():
        if not overwrite:
            raise OutputError(f"{path} exists; pass --overwrite to replace it")
        if Path.cwd().resolve().is_relative_to(path.resolve()):
            raise OutputError(f"{path} holds the current directory; choose another output")
        foreign = sorted(set(_entries(path)) - made_here(path))
        if foreign:
            raise OutputError(
                f"{path} holds files diva-numba did not write ({_listing(foreign)}); "
                "--overwrite replaces only its own outputs: choose another directory"
            )
    while directory and not parent.exists() and parent != parent.parent:
        parent = parent.parent  # created with the directory
    if parent.exists() and not parent.is_dir():
        raise OutputError(f"{path}: {parent} is not a directory")
    if not parent.is_dir():
        raise OutputError(f"{path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"{path}: directory {parent} is not writable")


def _check_members(
    path: Path, members: Sequence[str], *, overwrite: bool, inputs: Iterable[os.PathLike]
) -> None:
    if not path.is_dir():
        return
    existing = [name for name in members if (path / name).exists()]
    for name in existing:
        refuse_inputs(path / name, inputs)
    if existing and not overwrite:
        raise OutputError(
            f"{path} already holds {_listing(existing)}; pass --overwrite to replace them"
        )
    foreign = sorted(set(existing) - made_here(path))
    if foreign:
        raise OutputError(
            f"{path} holds files diva-numba did not write ({_listing(foreign)}); "
            "--overwrite replaces only its own outputs: choose another directory"
        )


def _entries(path: Path) -> list[str]:
    return [entry.name for entry in path.iterdir() if entry.name != MARKER]


def _listing(names: Sequence[str]) -> str:
    shown = ", ".join(names[:3])
    return shown if len(names) <= 3 else f"{shown} and {len(names) - 3} more"


def made_here(directory: Path) -> set[str]:
    """Names of the files the tool wrote into ``directory``, from its marker (empty if none)."""
    try:
        record = json.loads((Path(directory) / MARKER).read_text("utf-8"))
    except (OSError, ValueError):
        return set()
    names = record.get("files") if isinstance(record, dict) else None
    return {name for name in names if isinstance(name, str)} if isinstance(names, list) else set()


def mark_directory(directory: Path, names: Iterable[str]) -> None:
    """Record (atomically) that the tool wrote ``names`` into ``directory``, with earlier ones."""
    directory = Path(directory)
    record = {"by": "diva-numba", "files": sorted(made_here(directory) | set(names))}
    write_atomically(directory / MARKER, (json.dumps(record, indent=1) + "\n").encode())


def remove_made(
    directory: Path, names: Iterable[str], *, inputs: Iterable[os.PathLike] = ()
) -> None:
    """Delete those of ``names`` that the tool wrote into ``directory``, and forget them.

    Only files its marker records are touched, never an input of the run: what
    ``--overwrite`` clears of an earlier run's outputs, and nothing else.
    """
    directory = Path(directory)
    made = made_here(directory)
    inputs = list(inputs)
    gone = set()
    for name in sorted(set(names) & made):
        if Path(name).name != name:
            continue  # a marker names files in its own directory, nothing beyond it
        try:
            refuse_inputs(directory / name, inputs)
            (directory / name).unlink(missing_ok=True)
        except (OutputError, OSError):
            continue  # an input of this run, or not ours to remove after all
        gone.add(name)
    if gone:
        record = {"by": "diva-numba", "files": sorted(made - gone)}
        write_atomically(directory / MARKER, (json.dumps(record, indent=1) + "\n").encode())


def make_directory(path: Path) -> None:
    """Create ``path`` and its missing parents with the permissions the umask gives.

    Raises
    ------
    OutputError
    """
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create directory {path}: {os_reason(exc)}") from None


def remove_partials(directory: Path, names: Iterable[str]) -> None:
    """Remove the temporary files that interrupted writes of ``directory/NAME`` left there.

    Only names an :class:`AtomicFile` for one of ``names`` makes are touched;
    call it when no other process can be writing them (under the run's lock).
    """
    directory = Path(directory) if str(directory) else Path(".")
    wanted = set(names)
    pattern = re.compile(rf"\.(.+)\.[0-9a-f]{{12}}{re.escape(PARTIAL_SUFFIX)}")
    try:
        entries = list(directory.iterdir())
    except OSError:
        return
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match and match.group(1) in wanted:
            try:
                entry.unlink()
            except OSError:
                pass


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
def atomic_directory(
    path: Path, *, overwrite: bool, inputs: Iterable[os.PathLike] = ()
) -> Iterator[Path]:
    """A temporary directory beside ``path`` that becomes ``path`` when the block succeeds.

    The block writes its files into the yielded directory; every file there is
    recorded in the marker (:func:`mark_directory`), so that a later
    ``overwrite`` may replace the directory. An existing ``path`` is replaced
    only under :func:`check_target`'s rule. On any exception the temporary
    directory is removed and an existing ``path`` is left as it was; an
    OSError (disk full, ...) becomes an :class:`OutputError`. Directories are
    created with the permissions the umask gives, like files.
    """
    path = Path(path)
    check_target(path, overwrite=overwrite, inputs=inputs, directory=True)
    parent = path.parent if str(path.parent) else Path(".")
    staging = _fresh_directory(parent, path.name, PARTIAL_SUFFIX)
    try:
        yield staging
        mark_directory(staging, _entries(staging))
        if path.exists():
            old = _fresh_directory(parent, path.name, ".old")
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


def _fresh_directory(parent: Path, name: str, suffix: str) -> Path:
    """A new empty directory ``parent/.name.<hex><suffix>`` (not mkdtemp's private 0700)."""
    for _ in range(100):
        candidate = parent / f".{name}.{secrets.token_hex(6)}{suffix}"
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
        except OSError as exc:
            reason = os_reason(exc)
            raise OutputError(f"{parent / name}: cannot create a directory ({reason})") from None
    raise OutputError(f"{parent / name}: cannot create a temporary directory")
