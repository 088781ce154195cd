"""The work directory of a video run: manifest, finished frames, the last frame's state.

A run keeps everything it needs to continue in one directory (by default
``OUTPUT.work``): ``manifest.json`` ties it to its inputs and parameters,
``frames/NNNNNN.png`` holds the finished frames, ``state.npz`` what the next
frame inherits (docs/DESIGN.md section 3) and ``latent_b.npz`` B's latent
features. Every file is written atomically, so a run killed at any moment
resumes from its last finished frame with the same result as an uninterrupted
run. :class:`BackgroundWriter` writes a frame's files while the next frame is
computed.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from diva_numba.errors import InputError, OutputError, os_reason
from diva_numba.gpu.device import to_host
from diva_numba.outputs import AtomicFile, file_sha256, write_atomically

WORK_FORMAT = 1
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
    image at its own size), which seeds frame t+1's.

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

    @classmethod
    def open(cls, path: Path, manifest: dict, *, resume: bool) -> WorkDirectory:
        """Create the directory, or check it against ``manifest`` when resuming.

        Raises
        ------
        InputError
            The directory belongs to a different run, or is damaged.
        OutputError
            It exists and ``resume`` was not asked for, or cannot be created.
        """
        work = cls(path, manifest)
        manifest_file = path / "manifest.json"
        if path.exists():
            if not resume:
                raise OutputError(
                    f"work directory {path} exists from an earlier run; pass --resume to "
                    "continue it, or remove it to start again"
                )
            try:
                saved = json.loads(manifest_file.read_text())
            except (OSError, ValueError):
                raise InputError(
                    f"work directory {path} is damaged (no readable manifest.json); remove it "
                    "to start again"
                ) from None
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
            work.frames.mkdir(parents=True)
        except OSError as exc:
            raise OutputError(f"cannot create work directory {path}: {os_reason(exc)}") from None
        write_atomically(manifest_file, json.dumps(manifest, indent=2).encode())
        return work

    def frame_path(self, index: int) -> Path:
        return self.frames / f"{index:06d}.png"

    def finished_frames(self, start: int, end: int) -> int:
        """How many frames from ``start`` on are done, in order, with their state saved."""
        state = self.load_state()
        if state is None:
            return 0
        done = state.index + 1 - start
        if not all(self.frame_path(i).exists() for i in range(start, start + done)):
            raise InputError(f"work directory {self.path} is missing finished frames; remove it")
        return min(done, end - start)

    def save_state(self, state: FrameState) -> None:
        self._save_arrays("state.npz", state.to_arrays())

    def load_state(self) -> FrameState | None:
        return self._load_state("state.npz")

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
        path = self.path / "latent_b.npz"
        if not path.exists():
            return None
        try:
            with open(path, "rb") as handle, np.load(handle) as arrays:
                return {int(key.split("_")[1]): arrays[key] for key in arrays.files}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            raise InputError(
                f"work directory {self.path}: latent_b.npz is damaged; remove it"
            ) from None


class BackgroundWriter:
    """Writes each frame's files in a background thread, so the next frame need not wait.

    Jobs run one at a time in the order submitted, and at most one is pending:
    :meth:`submit` first waits for the one before (so memory holds one frame's
    host copies at most, and the files of frame t are complete before those of
    frame t + 1 begin). A job's failure, an :class:`~diva_numba.errors.OutputError`
    for a full disk, is raised in the caller's thread by the next :meth:`submit`
    or :meth:`check`, or when the ``with`` block ends; the block's end waits for
    the last job, also when it ends by an exception (which then is the one
    raised), so that an interrupted run keeps every frame it reported finished.

    Examples
    --------
    >>> with BackgroundWriter() as writer:  # doctest: +SKIP
    ...     writer.submit(lambda: work.save_state(host_state))
    """

    def __init__(self):
        self._executor: ThreadPoolExecutor | None = None
        self._pending: Future | None = None

    def __enter__(self) -> BackgroundWriter:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="diva-numba-writer")
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        try:
            self.wait()
        except Exception:
            if exc_type is None:
                raise
            # The block's own exception is the one to report; the frame whose files
            # failed is not finished, and a resumed run computes it again.
        finally:
            self._executor.shutdown(wait=True)
            self._executor = None

    def submit(self, job: Callable[[], None]) -> None:
        """Run ``job`` in the background once the previous job is done."""
        self.wait()
        self._pending = self._executor.submit(job)

    def check(self) -> None:
        """Raise the failure of a finished job now, without waiting for a running one."""
        if self._pending is not None and self._pending.done():
            self.wait()

    def wait(self) -> None:
        """Wait for the pending job; raise its failure."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()


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
