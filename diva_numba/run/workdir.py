"""The work directory of a video run: manifest, finished frames, the last frame's state.

A run keeps everything it needs to continue in one directory (by default
``OUTPUT.work``): ``manifest.json`` ties it to its inputs and parameters,
``frames/NNNNNN.png`` holds the finished frames, ``state.npz`` what the next
frame inherits (docs/DESIGN.md section 3) and ``latent_b.npz`` B's latent
features. Every file is written atomically, so a run killed at any moment
resumes from its last finished frame with the same result as an uninterrupted
run. :class:`~diva_numba.run.background_writer.BackgroundWriter` writes a
frame's files while the next frame is computed.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import socket
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from diva_numba.errors import InputError, OutputError, os_reason
from diva_numba.gpu.device import to_host
from diva_numba.outputs import (
    PARTIAL_SUFFIX,
    AtomicFile,
    file_sha256,
    make_directory,
    write_atomically,
)

log = logging.getLogger("diva_numba")

WORK_FORMAT = 1
#: The file a running run holds locked (:class:`WorkLock`).
LOCK_NAME = "lock"
#: The entry of state.npz that says whether latent_b.npz was saved before it.
LATENT_B_SAVED = "latent_b_saved"
#: Manifest entries a resumed run may change: a run started on the GPU can finish on
#: the CPU (frames differ only by rounding; sizes and parameters are still checked).
RESUMABLE_ANYWHERE = frozenset({"device"})


@dataclass
class FrameState:
    """What frame t+1 needs from frame t; saved in the work directory after every frame.

    The frames are host arrays; the fields and deconvolution solutions live on the
    run's device while the frame loop runs, and are host arrays when loaded or saved.

    Each level's solution in ``deconv_ab`` is that of its *anchor*, the last frame
    that solved it, in that frame's geometry: each later frame moves it once, along
    ``anchor_flows[level]`` (frame t to the anchor, the backward flows composed),
    so that rounding never piles up from frame to frame. ``anchor_new[level]``
    marks the pixels of frame t the anchor does not show (occluded on the way, or
    come into the picture). A level missing from both is anchored on frame t.
    ``output_field`` is the synthesis' field of frame t's output (into the style
    image at its own size), which seeds frame t+1's; ``output_offsets`` the
    fractions of a pixel the output was sampled off it (None: none).
    ``input_grey`` is an anchor frame's input at the output size, in grey, for
    the flow to it at that size (None where not needed).

    With anchor frames (:mod:`diva_numba.run.anchor_frames`), ``anchor_frame`` is
    the index of the anchor frame t was made from (t itself on an anchor; -1
    without anchors) and ``anchor_frame_flows`` frame t's flows ``(to the anchor,
    from the anchor)``, from which frame t+1's are chained. A frame carried from
    its anchor holds no fields or solutions: the next anchor starts from its
    anchor's, saved apart (:meth:`WorkDirectory.save_anchor`).
    """

    index: int
    input_frame: np.ndarray
    output_frame: np.ndarray
    fields_ab: dict[int, object]
    deconv_ab: dict[int, object]
    anchor_flows: dict[int, np.ndarray] = field(default_factory=dict)
    anchor_new: dict[int, np.ndarray] = field(default_factory=dict)
    output_field: object | None = None
    anchor_frame: int = -1
    anchor_frame_flows: tuple[np.ndarray, np.ndarray] | None = None
    output_offsets: np.ndarray | None = None
    input_grey: np.ndarray | None = None

    def anchor(self, level: int) -> tuple[np.ndarray, np.ndarray] | None:
        """``(anchor flow, new pixels)`` of ``level``'s solution; None if anchored here."""
        if level not in self.anchor_flows:
            return None
        return self.anchor_flows[level], self.anchor_new[level]

    def to_arrays(self) -> dict[str, np.ndarray]:
        arrays = {
            "index": np.asarray(self.index),
            "input_frame": self.input_frame,
            "output_frame": self.output_frame,
        }
        arrays.update({f"field_ab_{lv}": to_host(v) for lv, v in self.fields_ab.items()})
        arrays.update({f"deconv_ab_{lv}": to_host(v) for lv, v in self.deconv_ab.items()})
        arrays.update({f"anchor_flow_{lv}": v for lv, v in self.anchor_flows.items()})
        arrays.update({f"anchor_new_{lv}": v for lv, v in self.anchor_new.items()})
        if self.output_field is not None:
            arrays["output_field"] = to_host(self.output_field)
        if self.output_offsets is not None:
            arrays["output_offsets"] = self.output_offsets
        if self.input_grey is not None:
            arrays["input_grey"] = self.input_grey
        arrays["anchor_frame"] = np.asarray(self.anchor_frame)
        if self.anchor_frame_flows is not None:
            arrays["anchor_frame_to"], arrays["anchor_frame_from"] = self.anchor_frame_flows
        return arrays

    @classmethod
    def from_arrays(cls, arrays) -> FrameState:
        def levels(prefix: str) -> dict[int, np.ndarray]:
            return {
                int(key[len(prefix) :]): arrays[key] for key in arrays if key.startswith(prefix)
            }

        return cls(
            index=int(arrays["index"]),
            input_frame=arrays["input_frame"],
            output_frame=arrays["output_frame"],
            fields_ab=levels("field_ab_"),
            deconv_ab=levels("deconv_ab_"),
            anchor_flows=levels("anchor_flow_"),
            anchor_new=levels("anchor_new_"),
            output_field=arrays.get("output_field"),
            output_offsets=arrays.get("output_offsets"),
            input_grey=arrays.get("input_grey"),
            anchor_frame=int(arrays.get("anchor_frame", -1)),
            anchor_frame_flows=(arrays["anchor_frame_to"], arrays["anchor_frame_from"])
            if "anchor_frame_to" in arrays
            else None,
        )


class WorkDirectory:
    """Per-run state on disk: a manifest, the finished frames, the last frame's state.

    Parameters
    ----------
    path : Path
    manifest : dict
        What the run depends on (inputs' checksums, parameters, frame range,
        size); a resumed run must present the same one.
    """

    def __init__(self, path: Path, manifest: dict):
        self.path = path
        self.manifest = manifest
        self.frames = path / "frames"
        self._latent_b_expected = False  # set by load_state

    @classmethod
    def open(cls, path: Path, manifest: dict, *, resume: bool) -> WorkDirectory:
        """Create the directory, or check it against ``manifest`` when resuming.

        A directory left by a run that finished no frame (it failed to start, or
        was killed first) is started over, with or without ``resume``.

        Raises
        ------
        InputError
            The directory belongs to a different run, or is damaged.
        OutputError
            It exists and ``resume`` was not asked for, or cannot be created.
        """
        work = cls(path, manifest)
        manifest_file = path / "manifest.json"
        if _holds_work(path) and _unstarted(path):
            log.info("work directory %s holds no finished frame; starting it over", path)
            _clear(path)
        if _holds_work(path):
            if not resume:
                raise OutputError(
                    f"work directory {path} exists from an earlier run; pass --resume to "
                    "continue it, or remove it to start again"
                )
            saved = _read_manifest(path)
            if saved is None:
                raise InputError(
                    f"work directory {path} is damaged (no readable manifest.json); remove it "
                    "to start again"
                )
            differences = [
                key
                for key in manifest
                if key not in RESUMABLE_ANYWHERE and saved.get(key) != manifest[key]
            ]
            if differences:
                raise InputError(
                    f"work directory {path} was made by a different run (differs in: "
                    f"{', '.join(differences)}); use the same inputs and options, or remove it"
                )
            return work
        try:
            work.frames.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create work directory {path}: {os_reason(exc)}") from None
        write_atomically(manifest_file, json.dumps(manifest, indent=2).encode())
        return work

    def frame_path(self, index: int) -> Path:
        return self.frames / f"{index:06d}.png"

    def finished_frames(self, start: int, end: int) -> int:
        """How many frames from ``start`` on are done, in order, with their state saved.

        Every finished frame is read back (:meth:`read_frame`), so that a damaged
        one is reported now rather than at the encode.

        Raises
        ------
        InputError
            A finished frame is missing, unreadable or of the wrong size.
        """
        state = self.load_state()
        if state is None:
            return 0
        done = min(state.index + 1 - start, end - start)
        if not all(self.frame_path(i).exists() for i in range(start, start + done)):
            raise InputError(f"work directory {self.path} is missing finished frames; remove it")
        for index in range(start, start + done):
            self.read_frame(index)
        return done

    def read_frame(self, index: int) -> np.ndarray:
        """A finished frame, RGB uint8 ``(H, W, 3)`` at the run's output size.

        The tool's own file: decoded at full size whatever its size (the
        decompression guard of :func:`~diva_numba.images.load_image` is for
        the user's images).

        Raises
        ------
        InputError
            The file is missing, damaged, or not of the size in the manifest.
        """
        path = self.frame_path(index)
        where = f"work directory {self.path}: frame {path.name}"
        try:
            data = np.fromfile(path, dtype=np.uint8)
        except OSError as exc:
            raise InputError(f"{where} cannot be read ({os_reason(exc)}); remove it") from None
        image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
        if image is None:
            raise InputError(f"{where} is damaged; remove the work directory to start again")
        width, height = self.manifest.get("size", (image.shape[1], image.shape[0]))
        if image.shape[:2] != (height, width):
            raise InputError(
                f"{where} is {image.shape[1]}x{image.shape[0]}, not {width}x{height}; remove "
                "the work directory to start again"
            )
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)

    def save_state(self, state: FrameState) -> None:
        # Whether B's latent features were on disk when this frame was finished (they
        # are written first): on resume their absence is then damage, not a fresh run.
        has_latent_b = (self.path / "latent_b.npz").exists()
        self._save_arrays("state.npz", {**state.to_arrays(), LATENT_B_SAVED: has_latent_b})

    def load_state(self) -> FrameState | None:
        path = self.path / "state.npz"
        self._latent_b_expected = False
        state = self._load_state("state.npz")
        if state is not None:
            with open(path, "rb") as handle, np.load(handle) as arrays:
                self._latent_b_expected = bool(arrays.get(LATENT_B_SAVED, False))
        return state

    def save_anchor(self, state: FrameState) -> None:
        """Keep an anchor frame's whole state (``anchors/NNNNNN.npz``) for the frames after it."""
        (self.path / "anchors").mkdir(exist_ok=True)
        self._save_arrays(f"anchors/{state.index:06d}.npz", state.to_arrays())

    def load_anchor(self, index: int) -> FrameState:
        """The saved state of anchor frame ``index``.

        Raises
        ------
        InputError
            It is missing or damaged.
        """
        state = self._load_state(f"anchors/{index:06d}.npz")
        if state is None:
            raise InputError(
                f"work directory {self.path}: anchor frame {index} is missing; remove it"
            )
        return state

    def drop_anchors_but(self, index: int) -> None:
        """Delete the saved anchor frames other than ``index`` (the one in use)."""
        for path in sorted((self.path / "anchors").glob("*.npz")):
            if path.name != f"{index:06d}.npz":
                path.unlink(missing_ok=True)

    def _load_state(self, name: str) -> FrameState | None:
        path = self.path / name
        if not path.exists():
            return None
        try:
            with open(path, "rb") as handle, np.load(handle) as arrays:
                return FrameState.from_arrays({key: arrays[key] for key in arrays.files})
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            raise InputError(f"work directory {self.path}: {name} is damaged; remove it") from None

    def save_latent_b(self, latent_b: dict[int, object]) -> None:
        self._save_arrays("latent_b.npz", {f"level_{lv}": to_host(v) for lv, v in latent_b.items()})

    def _save_arrays(self, name: str, arrays: dict[str, np.ndarray]) -> None:
        with AtomicFile(self.path / name) as temp, open(temp, "wb") as handle:
            np.savez(handle, **arrays)

    def load_latent_b(self) -> dict[int, np.ndarray] | None:
        """B's latent features saved by the run (None if it has none yet).

        Raises
        ------
        InputError
            The file is damaged, or missing where the last state says it was saved
            (call :meth:`load_state` first for that check).
        """
        path = self.path / "latent_b.npz"
        if not path.exists():
            if self._latent_b_expected:
                raise InputError(f"work directory {self.path}: latent_b.npz is missing; remove it")
            return None
        try:
            with open(path, "rb") as handle, np.load(handle) as arrays:
                return {int(key.split("_")[1]): arrays[key] for key in arrays.files}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            raise InputError(
                f"work directory {self.path}: latent_b.npz is damaged; remove it"
            ) from None


def _holds_work(path: Path) -> bool:
    """Whether ``path`` exists with anything in it but the lock."""
    if not path.exists():
        return False
    if not path.is_dir():
        return True
    return any(entry.name != LOCK_NAME for entry in path.iterdir())


def _read_manifest(path: Path) -> dict | None:
    try:
        saved = json.loads((path / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    return saved if isinstance(saved, dict) and "format" in saved else None


def _unstarted(path: Path) -> bool:
    """A work directory of this tool in which no frame was finished (nothing to lose)."""
    if not path.is_dir() or _read_manifest(path) is None:
        return False
    return not any(path.rglob("state.npz")) and not any(path.rglob("[0-9]*.png"))


def _holds_finished_work(path: Path) -> bool:
    return _holds_work(path) and not _unstarted(path)


def _clear(path: Path) -> None:
    """Remove everything in ``path`` but its lock."""
    for entry in path.iterdir():
        if entry.name == LOCK_NAME:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


class WorkLock:
    """One run at a time in a work directory: an exclusive lock held while the run lives.

    Entering creates the directory if it is missing (:attr:`created`) and takes
    an advisory lock (``flock``) on its ``lock`` file, which names the holder.
    The operating system drops the lock when its process ends in any way, so a
    lock file left by a killed run is simply taken over.

    With ``wait`` a held lock is waited for instead (a chunk's worker, whose
    predecessor from an interrupted run may still be finishing its files).

    Raises
    ------
    OutputError
        Another live run holds the lock (its process is named), or the
        directory cannot be created.
    """

    def __init__(self, path: Path, *, wait: bool = False):
        self.path = Path(path)
        self.wait = wait
        self.created = False
        self._fd: int | None = None

    def __enter__(self) -> WorkLock:
        if self.path.exists() and not self.path.is_dir():
            raise OutputError(f"work directory {self.path} exists and is not a directory")
        if not self.path.exists():
            make_directory(self.path)
            self.created = True
        elif not any((self.path / name).exists() for name in ("manifest.json", LOCK_NAME)) and any(
            self.path.iterdir()
        ):
            raise OutputError(
                f"work directory {self.path} holds files that are not diva-numba's; choose "
                "another --work-dir"
            )
        lock_file = self.path / LOCK_NAME
        try:
            fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise OutputError(f"cannot lock work directory {self.path}: {os_reason(exc)}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if self.wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "unknown"
            os.close(fd)
            raise OutputError(
                f"work directory {self.path} is in use by another run ({holder}); wait for it "
                "to end, or write another output"
            ) from None
        previous = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
        if previous:
            log.info("work directory %s: taking over from a run that ended (%s)", self.path,
                     previous)  # fmt: skip
        holder = (
            f"process {os.getpid()} on {socket.gethostname()}, since {time.strftime('%H:%M:%S')}"
        )
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder.encode(), 0)
        self._fd = fd
        # What the run's own process writes cannot be in progress now: temporary files
        # left there are a killed run's. Not under chunks/: the workers of a chunked run
        # may outlive its lock for a moment, and their files go with the directory.
        for directory in (self.path, self.path / "frames", self.path / "anchors"):
            for leftover in directory.glob(f".*{PARTIAL_SUFFIX}"):
                leftover.unlink(missing_ok=True)
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        """Release the lock; after a failure, remove a directory this run made in vain."""
        try:
            if exc_type is not None and self.created and not _holds_finished_work(self.path):
                shutil.rmtree(self.path, ignore_errors=True)
        finally:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def run_manifest(style_path: Path, clip_path: Path, plan, params, device) -> dict:
    """What a work directory is tied to.

    Parameters
    ----------
    style_path, clip_path : Path
        The inputs, identified by their SHA-256.
    plan : TransferPlan
        Frame range and working size.
    params : TransferParams
        Only what decides the frames' content (:meth:`TransferParams.fingerprint`).
    device : Device
    """
    return {
        "format": WORK_FORMAT,
        "style_sha256": file_sha256(style_path),
        "clip_sha256": file_sha256(clip_path),
        "frames": [plan.start, plan.end],
        "size": [plan.width, plan.height],
        "work_size": [plan.work_width, plan.work_height],
        "params": params.fingerprint(),
        "device": device.kind,
    }
