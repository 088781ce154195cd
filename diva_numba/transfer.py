"""Video style transfer: the image analogy run frame by frame, seeded along the optical flow.

Frame 0 is a full image analogy with A = the frame and B' = the style image.
Every later frame inherits from the one before it (DESIGN.md section 3):

* the fields ``phi_ab`` of every level, moved along the backward optical flow;
  pixels the flow marks occluded start from the coarser level instead;
* fewer PatchMatch rounds, and A''s deconvolutions warm-started from the
  previous solutions, moved the same way;
* B's latent features (the style image with the clip's look), which change
  slowly, are reused, and the style image's VGG features are computed once;
* at the pixels, the output is pulled towards the previous output warped into
  this frame wherever the flow is reliable (``temporal_weight``).

Per-frame state is saved atomically in a work directory after every frame, so
an interrupted run continues where it stopped (``resume``) and gives the same
frames as an uninterrupted one. The output video is encoded from the finished
frames at the end, under a temporary name, and renamed into place.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from diva_numba.analogy import AnalogyModel, AnalogyParams, FrameGuide, analogy
from diva_numba.device import to_device, to_host
from diva_numba.errors import InputError, OutputError, os_reason
from diva_numba.flow import flow_pair, occlusion_mask, warp_image
from diva_numba.imageio import (
    MAX_AREA,
    MIN_SIDE,
    load_image,
    resize,
    save_image,
)
from diva_numba.kernels.nnf_resample import pull_field
from diva_numba.models import vgg
from diva_numba.outputs import AtomicFile, write_atomically
from diva_numba.video import (
    VideoInfo,
    VideoWriter,
    even_size,
    frame_times,
    probe_video,
    read_frames,
)

log = logging.getLogger("diva_numba")

WORK_FORMAT = 1
#: Manifest entries a resumed run may change: a run started on the GPU can finish on
#: the CPU (frames differ only by rounding; sizes and parameters are still checked).
RESUMABLE_ANYWHERE = frozenset({"device"})


@dataclass(frozen=True)
class TransferParams:
    """How a video is processed.

    Attributes
    ----------
    analogy : AnalogyParams
        The per-frame analogy (frame 0 and ``independent`` runs use it as is).
    long_side : int
        Long side of the working (and output) frames, made even.
    guided_patchmatch_iterations : int
        PatchMatch rounds per level on frames seeded from the previous one.
    guided_lbfgs_iterations : int
        L-BFGS iterations per deconvolution on seeded frames (warm-started).
    temporal_weight : float
        Pull of the previous output, warped into the frame, at reliable
        pixels: the output is ``(A' + w P) / (1 + w)`` there; 0 turns it off.
    refresh_b_every : int
        Recompute B's latent features every this many frames (0: only on the
        first frame).
    independent : bool
        Run every frame as a separate image analogy (the baseline).
    flow_preset : str
        OpenCV DIS preset for the optical flow.
    crf : float
        x264 quality of the output (18: visually lossless).
    chroma : {"420", "444"}
        Colour resolution of the output: 4:2:0 plays everywhere; 4:4:4 keeps
        saturated colour edges sharp (and steady from frame to frame).
    """

    analogy: AnalogyParams = field(default_factory=AnalogyParams)
    long_side: int = 256
    guided_patchmatch_iterations: int = 3
    guided_lbfgs_iterations: int = 10
    temporal_weight: float = 1.0
    refresh_b_every: int = 0
    independent: bool = False
    flow_preset: str = "medium"
    crf: float = 18
    chroma: str = "420"

    def __post_init__(self):
        if self.temporal_weight < 0:
            raise ValueError("temporal_weight must be >= 0")
        if self.long_side < 32:
            raise ValueError("long_side must be at least 32")

    def fingerprint(self) -> dict:
        """The parameters that decide the frames' content, as plain JSON values."""
        data = dataclasses.asdict(self)
        data.pop("crf")
        data.pop("chroma")
        return json.loads(json.dumps(data))


@dataclass
class FrameState:
    """What frame t+1 needs from frame t; saved in the work directory after every frame."""

    index: int
    input_frame: np.ndarray
    output_frame: np.ndarray
    fields_ab: dict[int, np.ndarray]
    deconv_ab: dict[int, np.ndarray]

    def to_arrays(self) -> dict[str, np.ndarray]:
        arrays = {
            "index": np.asarray(self.index),
            "input_frame": self.input_frame,
            "output_frame": self.output_frame,
        }
        arrays.update({f"field_ab_{lv}": to_host(v) for lv, v in self.fields_ab.items()})
        arrays.update({f"deconv_ab_{lv}": to_host(v) for lv, v in self.deconv_ab.items()})
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
        path = self.path / "state.npz"
        if not path.exists():
            return None
        try:
            with open(path, "rb") as handle, np.load(handle) as arrays:
                return FrameState.from_arrays({key: arrays[key] for key in arrays.files})
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            raise InputError(
                f"work directory {self.path}: state.npz is damaged; remove it"
            ) from None

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


@dataclass(frozen=True)
class TransferPlan:
    """The checked inputs of a run and the sizes it works at.

    Attributes
    ----------
    info : VideoInfo
    start, end : int
        The frame range ``[start, end)`` of the clip.
    width, height : int
        Working (and output) frame size.
    style : numpy.ndarray
        uint8 ``(H, W, 3)`` style image at its working size.
    frame_times : tuple of fractions.Fraction or None
        For a variable frame rate: ``end - start + 1`` times in seconds, the
        start of every frame of the range from frame ``start`` on, then the
        end of the last (see :func:`~diva_numba.video.frame_times`); None for
        a constant rate, where frame ``i`` shows at ``i / info.fps``.
    """

    info: VideoInfo
    start: int
    end: int
    width: int
    height: int
    style: np.ndarray
    frame_times: tuple[Fraction, ...] | None = None


def plan_transfer(
    style_path: Path, clip_path: Path, params: TransferParams, *, start: int, end: int | None
) -> TransferPlan:
    """Probe the inputs, check the frame range, and choose the working sizes.

    Raises
    ------
    InputError
        Unreadable inputs, no frames in the range, frames without usable
        timestamps in a variable-rate clip.
    """
    info = probe_video(clip_path)
    last = info.frame_count if end is None else min(end, info.frame_count)
    if start < 0 or start >= last:
        raise InputError(
            f"{clip_path}: frame range [{start}, {last}) is empty (the clip has "
            f"{info.frame_count} frames)"
        )
    times = None
    if info.variable_frame_rate:
        # Resampling to a constant rate would drop or repeat frames; each keeps its time.
        clip_times = frame_times(clip_path)
        if len(clip_times) <= last:
            raise InputError(
                f"{clip_path}: {len(clip_times) - 1} frames have timestamps, "
                f"but the clip has {info.frame_count}"
            )
        times = tuple(t - clip_times[start] for t in clip_times[start : last + 1])
        log.debug("%s: variable frame rate; every frame keeps its own time", clip_path)
    width, height = even_size(
        info.width, info.height, min(params.long_side, max(info.width, info.height))
    )
    if min(width, height) < 32:
        raise InputError(
            f"{clip_path}: {width}x{height} frames are too small (32 px minimum on each "
            "side); ask for a larger --size"
        )
    style = load_image(style_path)
    style_size = style_working_size(*style.shape[:2], long_side=params.long_side, name=style_path)
    return TransferPlan(info, start, last, width, height, resize(style, *style_size), times)


def style_working_size(
    height: int, width: int, *, long_side: int, name: str | os.PathLike = "style image"
) -> tuple[int, int]:
    """The (H, W) the style image is used at: aspect kept, long side as the frames'.

    Never enlarged, except that the short side is brought up to the network's
    minimum; an image so elongated that this would exceed the area limit is
    refused rather than squeezed (its strokes would be distorted).

    Raises
    ------
    InputError
        The style image is too elongated.
    """
    scale = min(long_side, max(height, width)) / max(height, width)
    scale = max(scale, MIN_SIDE / min(height, width))
    size = (max(MIN_SIDE, round(height * scale)), max(MIN_SIDE, round(width * scale)))
    if size[0] * size[1] > MAX_AREA:
        raise InputError(
            f"{name}: {width}x{height} is too elongated to use as a style (at least "
            f"{MIN_SIDE} px on the short side would make it {size[1]}x{size[0]}); crop it"
        )
    return size


def run_manifest(style_path: Path, clip_path: Path, plan: TransferPlan, params, device) -> dict:
    """What a work directory is tied to."""
    return {
        "format": WORK_FORMAT,
        "style_sha256": _file_sha256(style_path),
        "clip_sha256": _file_sha256(clip_path),
        "frames": [plan.start, plan.end],
        "size": [plan.width, plan.height],
        "params": params.fingerprint(),
        "device": device.kind,
    }


@dataclass
class FrameReport:
    """What the frame loop tells its caller after each frame."""

    index: int
    seconds: float
    input_frame: np.ndarray
    output_frame: np.ndarray
    profile: object


def stylise_frames(
    model: AnalogyModel,
    plan: TransferPlan,
    clip_path: Path,
    work: WorkDirectory,
    params: TransferParams,
    *,
    on_frame: Callable[[FrameReport], None] | None = None,
) -> None:
    """Stylise every frame of the plan not yet in ``work``, saving state after each.

    Parameters
    ----------
    model : AnalogyModel
    plan : TransferPlan
    clip_path : Path
    work : WorkDirectory
        Holds the finished frames; frames already done are skipped (resume).
    params : TransferParams
    on_frame : callable, optional
        Called after every finished frame (progress bars, previews).
    """
    done = work.finished_frames(plan.start, plan.end)
    first_todo = plan.start + done
    if first_todo >= plan.end:
        return
    state = work.load_state() if done else None
    latent_b = work.load_latent_b() if done else None
    features_bp = model.features(plan.style)
    guided = dataclasses.replace(params.analogy, lbfgs_iterations=params.guided_lbfgs_iterations)
    for index, frame in _working_frames(clip_path, plan, first_todo):
        started = time.perf_counter()
        refresh_b = (
            latent_b is None
            or params.independent
            or (params.refresh_b_every and (index - plan.start) % params.refresh_b_every == 0)
        )
        if state is None or params.independent:
            result = analogy(
                model, frame, plan.style, params=params.analogy, features_bp=features_bp
            )
            output = result.a_prime
        else:
            forward, backward = flow_pair(state.input_frame, frame, preset=params.flow_preset)
            occluded = occlusion_mask(forward, backward)
            guide = _guide(state, backward, occluded, plan, params)
            if not refresh_b:
                guide.latent_b = {lv: to_device(v, model.device) for lv, v in latent_b.items()}
            result = analogy(
                model, frame, plan.style, params=guided, features_bp=features_bp, guide=guide
            )
            output = _temporal_blend(
                result.a_prime, state.output_frame, backward, occluded, params.temporal_weight
            )
        save_image(work.frame_path(index), output)
        if refresh_b:
            latent_b = {lv: to_host(v) for lv, v in result.latent_b.items()}
            work.save_latent_b(latent_b)
        state = FrameState(
            index=index,
            input_frame=frame,
            output_frame=output,
            fields_ab={lv: to_host(fields[0]) for lv, fields in result.level_fields.items()},
            deconv_ab={lv: to_host(r) for lv, r in result.deconvolutions.items()},
        )
        work.save_state(state)
        if on_frame is not None:
            on_frame(
                FrameReport(index, time.perf_counter() - started, frame, output, result.profile)
            )


def encode_video(
    plan: TransferPlan,
    clip_path: Path,
    work: WorkDirectory,
    output: Path,
    *,
    crf: float,
    chroma: str = "420",
    overwrite: bool,
    keep_frames: Path | None = None,
) -> None:
    """Encode the finished frames (with the clip's audio) to ``output``, atomically.

    Frames keep the clip's timing: its exact rate, or for a variable rate each
    frame's own time (``plan.frame_times``).
    """
    if keep_frames is not None:
        keep_frames.mkdir(parents=True, exist_ok=True)
    with VideoWriter(
        output,
        width=plan.width,
        height=plan.height,
        fps=plan.info.fps,
        crf=crf,
        pixel_format=f"yuv{chroma}p",
        audio_source=clip_path,
        audio_frames=(plan.start, plan.end),
        overwrite=overwrite,
        frame_times=plan.frame_times,
    ) as writer:
        for index in range(plan.start, plan.end):
            frame = load_image(work.frame_path(index))
            writer.write(frame)
            if keep_frames is not None:
                shutil.copyfile(work.frame_path(index), keep_frames / f"{index:06d}.png")


def _working_frames(clip_path: Path, plan: TransferPlan, first: int) -> Iterator:
    for index, frame in read_frames(clip_path, start=first, end=plan.end):
        yield index, resize(frame, plan.height, plan.width)


def _guide(
    state: FrameState, backward: np.ndarray, occluded: np.ndarray, plan: TransferPlan, params
) -> FrameGuide:
    """Seeds for frame t from frame t-1's state, moved along the backward flow."""
    guide = FrameGuide(patchmatch_iterations=params.guided_patchmatch_iterations)
    style_shape = plan.style.shape[:2]
    for level, previous in state.fields_ab.items():
        seeded, invalid = pull_field(
            previous, backward, source_shape=vgg.level_shape(*style_shape, level)
        )
        level_occluded = _pool_mask(occluded, level)
        guide.fields_ab[level] = seeded
        guide.fresh_ab[level] = np.maximum(invalid, level_occluded)
    for level, solution in state.deconv_ab.items():
        guide.deconv_ab[level] = _pull_map(solution, backward)
    return guide


def _pool_mask(mask: np.ndarray, level: int) -> np.ndarray:
    """A pixel mask at feature level ``level``: a cell is set if any pixel under it is."""
    for _ in range(max(level - 1, 0)):
        height, width = mask.shape
        padded = np.zeros((height + height % 2, width + width % 2), dtype=mask.dtype)
        padded[:height, :width] = mask
        mask = padded.reshape(padded.shape[0] // 2, 2, padded.shape[1] // 2, 2).max(axis=(1, 3))
    return mask


def _pull_map(feature_map, backward: np.ndarray):
    """Nearest-neighbour warp of a (C, H, W) map by a pixel-level backward flow."""
    _, height, width = feature_map.shape
    flow_h, flow_w = backward.shape[:2]
    ys = (np.arange(height) + 0.5) * flow_h / height
    xs = (np.arange(width) + 0.5) * flow_w / width
    cell_y = np.minimum(ys.astype(int), flow_h - 1)
    cell_x = np.minimum(xs.astype(int), flow_w - 1)
    sampled = backward[cell_y[:, None], cell_x[None, :]]
    source_y = np.rint(np.arange(height)[:, None] + sampled[..., 1] * height / flow_h)
    source_x = np.rint(np.arange(width)[None, :] + sampled[..., 0] * width / flow_w)
    source_y = np.clip(source_y, 0, height - 1).astype(np.intp)
    source_x = np.clip(source_x, 0, width - 1).astype(np.intp)
    return np.ascontiguousarray(to_host(feature_map)[:, source_y, source_x])


def _temporal_blend(
    stylised: np.ndarray,
    previous_output: np.ndarray,
    backward: np.ndarray,
    occluded: np.ndarray,
    weight: float,
) -> np.ndarray:
    """Pull the frame's output towards the previous output where the flow is reliable."""
    if weight == 0:
        return stylised
    warped = warp_image(previous_output, backward).astype(np.float32)
    reliable = (1.0 - occluded.astype(np.float32))[:, :, None] * weight
    blended = (stylised.astype(np.float32) + reliable * warped) / (1.0 + reliable)
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
