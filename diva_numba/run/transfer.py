"""Video style transfer: plan a run, stylise its frames, encode the result.

:func:`transfer_video` is the whole job: it builds the run's
:class:`~diva_numba.run.spec.RunSpec` from its arguments and hands it to
:func:`run_transfer`, which ``diva-numba transfer`` calls with the spec it built.
That checks every input and the output before any frame is processed, keeps
per-frame state in a work directory (:mod:`diva_numba.run.workdir`) so that an
interrupted run resumes, runs the frame loop (:mod:`diva_numba.run.frame_loop`;
frame 0 a full image analogy, later frames seeded along the optical flow,
docs/DESIGN.md section 3), falls back to the CPU when a GPU runs out of memory if asked to,
and encodes the finished frames with the clip's timing and audio under a
temporary name that becomes the output only when the video is complete.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from diva_numba.errors import Interrupted, OutputError
from diva_numba.finishing.keyframes import Keyframe
from diva_numba.gpu.device import Device, resolve_device, within_memory
from diva_numba.gpu.timing import Profile
from diva_numba.image_analogy.deep_analogy import load_model
from diva_numba.neural_style.params import NeuralStyleParams
from diva_numba.outputs import (
    AtomicFile,
    check_free_space,
    check_target,
    made_here,
    make_directory,
    mark_directory,
    refuse_inputs,
    remove_made,
    remove_partials,
)
from diva_numba.run.frame_loop import stylise_frames
from diva_numba.run.neural_frame_loop import stylise_neural_frames
from diva_numba.run.params import (
    GUIDED_LBFGS_BY_DEVICE,
    VIDEO_SYNTHESIS,
    WORK_SIZE_BY_DEVICE,
    TransferParams,
)
from diva_numba.run.planning import TransferPlan, check_encoding, plan_transfer, work_space_needed
from diva_numba.run.progress import FrameReport, VideoProgress
from diva_numba.run.scale_out import check_cluster, run_chunks
from diva_numba.run.spec import RunSpec, ScaleOut
from diva_numba.run.workdir import WorkDirectory, WorkLock
from diva_numba.video import VideoWriter, read_frames
from diva_numba.video.metrics import WarpError, warp_error

log = logging.getLogger("diva_numba")

# The parameters live in their own module; they are part of this one's interface too.
__all__ = [
    "GUIDED_LBFGS_BY_DEVICE",
    "VIDEO_SYNTHESIS",
    "WORK_SIZE_BY_DEVICE",
    "TransferParams",
    "RunSpec",
    "ScaleOut",
    "TransferResult",
    "encode_video",
    "run_transfer",
    "transfer_video",
]


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
    inputs: Sequence[Path] = (),
) -> None:
    """Encode the finished frames (with the clip's audio) to ``output``, atomically.

    Frames keep the clip's timing: its exact rate, or for a variable rate each
    frame's own time (``plan.frame_times``). With ``overwrite``, the frames an
    earlier run kept in ``keep_frames`` outside this run's range are removed
    (never a file the tool did not write there, nor one of ``inputs``).
    """
    kept = [kept_frame_name(index) for index in range(plan.start, plan.end)]
    if keep_frames is not None:
        make_directory(keep_frames)
        remove_partials(keep_frames, kept)
        if overwrite:
            # Otherwise the folder would mix this run's frames with an earlier run's.
            stale = {n for n in made_here(keep_frames) if KEPT_FRAME.fullmatch(n)} - set(kept)
            remove_made(keep_frames, stale, inputs=inputs)
        mark_directory(keep_frames, kept)
    settings = plan.writer_settings(clip_path, crf=crf, chroma=chroma)
    with VideoWriter(output, **settings, overwrite=overwrite) as writer:
        for index, name in zip(range(plan.start, plan.end), kept, strict=True):
            writer.write(work.read_frame(index))
            if keep_frames is not None:
                with AtomicFile(keep_frames / name) as temp:
                    shutil.copyfile(work.frame_path(index), temp)


#: The names :func:`kept_frame_name` gives.
KEPT_FRAME = re.compile(r"[0-9]{6,}\.png")


def kept_frame_name(index: int) -> str:
    """The name of frame ``index`` in the ``keep_frames`` directory."""
    return f"{index:06d}.png"


def check_run_paths(output: Path, work_dir: Path, keep_frames: Path | None) -> None:
    """Refuse a work directory that is, holds or lies in another output of the run.

    Everything in the work directory is deleted when the video is written.

    Raises
    ------
    OutputError
    """
    work = work_dir.resolve()
    for what, other in (("the output", output), ("--keep-frames", keep_frames)):
        if other is None:
            continue
        resolved = other.resolve()
        if resolved.is_relative_to(work) or work.is_relative_to(resolved):
            raise OutputError(
                f"work directory {work_dir} and {what} {other} overlap (the work directory is "
                "deleted when the video is written); choose another --work-dir"
            )
    if keep_frames is not None and keep_frames.resolve() == output.resolve():
        raise OutputError(f"--keep-frames {keep_frames} is the output; choose another directory")


@dataclass
class TransferResult:
    """What :func:`transfer_video` made.

    Attributes
    ----------
    output : Path
        The video written.
    frames : int
        Frames in it.
    width, height : int
        Its frame size.
    last_profile : Profile or None
        Time per stage and level of the last frame computed in this call (None
        when every frame was already done and only encoding ran).
    seconds : float
        Wall time of the call.
    frames_computed : int
        Frames stylised in this call (fewer than ``frames`` after ``resume``).
    warp_error : WarpError or None
        Flicker of the result: its warping error, and the input clip's own
        (:mod:`diva_numba.metrics`), measured on the finished frames before
        encoding; None for a single frame.
    """

    output: Path
    frames: int
    width: int
    height: int
    last_profile: Profile | None = None
    seconds: float = 0.0
    frames_computed: int = 0
    warp_error: WarpError | None = None


def transfer_video(
    style: str | os.PathLike,
    clip: str | os.PathLike,
    output: str | os.PathLike,
    params: TransferParams | None = None,
    *,
    device: Device | str = "auto",
    model: str | os.PathLike | None = None,
    start: int = 0,
    end: int | None = None,
    work_dir: str | os.PathLike | None = None,
    resume: bool = False,
    overwrite: bool = False,
    keep_frames: str | os.PathLike | None = None,
    on_frame: Callable[[FrameReport], None] | None = None,
    progress: bool = False,
    cpu_fallback: bool | Callable[[str], bool] = False,
    scale_out: ScaleOut | None = None,
    keys: Sequence[Keyframe] = (),
    mask: str | os.PathLike | None = None,
) -> TransferResult:
    """Give every frame of ``clip`` the look of the ``style`` image, without flicker.

    Parameters
    ----------
    style : path-like
        The style image B' (PNG, JPEG, ...).
    clip : path-like
        The video (anything FFmpeg reads).
    output : path-like
        The video to write (``.mp4``, ``.m4v``, ``.mov`` or ``.mkv``): H.264 with
        the clip's frame timing and audio. It appears only when complete.
    params : TransferParams or NeuralStyleParams, optional
        Default: :meth:`TransferParams.for_device` of the device used (the deep
        analogy). :class:`~diva_numba.neural_style.params.NeuralStyleParams` runs
        the neural-style method instead (:mod:`diva_numba.run.neural_frame_loop`;
        without ``keys`` and ``scale_out``).
    device : Device or {"auto", "cuda", "cpu"}, default "auto"
    model : path-like, optional
        ONNX feature model; default: the VGG-19 model, fetched on first use.
    start, end : int, optional
        The frame range ``[start, end)``; default the whole clip.
    work_dir : path-like, optional
        Where per-frame state is kept; default ``OUTPUT.work``. Removed when
        the video is written.
    resume : bool, default False
        Continue the run whose state is in ``work_dir``.
    overwrite : bool, default False
        Replace ``output`` if it exists (never an input of the run).
    keep_frames : path-like, optional
        Also copy the output frames there as PNG files (``NNNNNN.png``). The
        directory may exist; files already there are replaced only with
        ``overwrite``, and only those the tool wrote (never an input); frames an
        earlier run kept there outside this run's range are then removed.
    on_frame : callable, optional
        Called with a :class:`~diva_numba.run.progress.FrameReport` after every frame.
    progress : bool, default False
        Report progress on stderr (:mod:`diva_numba.run.progress`): on a terminal a
        bar with the stages of full analogies and the time left, otherwise one
        line per stage of a full analogy and per frame.
    cpu_fallback : bool or callable, default False
        When ``device`` was "auto", the GPU was chosen and it runs out of
        memory: continue on the CPU from the frame that failed (True), or ask
        the callable, given the reason, whether to.
    scale_out : ScaleOut, optional
        Run the clip in chunks on Ray workers (shots and long stretches in
        parallel, joins blended; :mod:`diva_numba.run.scale_out`). ``on_frame`` is
        then not called: frames are made in other processes.
    keys : sequence of Keyframe, optional
        Paintings of frames of the clip (``Keyframe(index, path)``; ``style``
        may be one of them). Each is carried forward and backward along the
        flow and re-anchored on its own frame (:mod:`diva_numba.finishing.keyframes`);
        the deep analogy (with ``style``) fills in only what no keyframe shows.
    mask : path-like, optional
        A grey image or a video of the clip's length: white is stylised,
        black passes the input through unchanged (``params.mask_feather``).

    Returns
    -------
    TransferResult

    Raises
    ------
    InputError
        An input is missing or unusable, or ``work_dir`` belongs to another run.
    OutputError
        The output cannot be written (checked before any work), or writing
        failed (disk full); finished frames are kept for ``resume``.
    DeviceError
        No usable GPU, or out of memory.
    Interrupted
        Ctrl-C (or SIGTERM from the main thread); the work is kept for ``resume``.

    Examples
    --------
    >>> from diva_numba import TransferParams, transfer_video
    >>> params = TransferParams.for_device("cpu", temporal_weight=0.5)
    >>> transfer_video("style.png", "clip.mp4", "out.mp4", params)  # doctest: +SKIP
    """
    device = device if isinstance(device, Device) else resolve_device(device)
    spec = RunSpec.make(
        style, clip, params, device=device, keys=keys, mask=mask, model=model, start=start,
        end=end, scale_out=scale_out,
    )  # fmt: skip
    return run_transfer(
        spec, output, device=device, work_dir=work_dir, resume=resume, overwrite=overwrite,
        keep_frames=keep_frames, on_frame=on_frame, progress=progress, cpu_fallback=cpu_fallback,
    )  # fmt: skip


def run_transfer(
    spec: RunSpec,
    output: str | os.PathLike,
    *,
    device: Device | str = "auto",
    work_dir: str | os.PathLike | None = None,
    resume: bool = False,
    overwrite: bool = False,
    keep_frames: str | os.PathLike | None = None,
    on_frame: Callable[[FrameReport], None] | None = None,
    progress: bool = False,
    cpu_fallback: bool | Callable[[str], bool] = False,
) -> TransferResult:
    """Make the video ``spec`` describes: :func:`transfer_video` given its specification.

    The command line builds the :class:`~diva_numba.run.spec.RunSpec` and calls
    this; the other arguments, and what it returns and raises, are those of
    :func:`transfer_video`.
    """
    started = time.perf_counter()
    output = Path(output)
    device = device if isinstance(device, Device) else resolve_device(device)
    work_dir = Path(work_dir) if work_dir is not None else output.with_name(output.name + ".work")
    keep_frames = None if keep_frames is None else Path(keep_frames)
    plan = _checked_plan(spec, output, work_dir, keep_frames, overwrite=overwrite, resume=resume)
    if spec.scale_out is not None:
        check_cluster(spec.scale_out)
    total = plan.end - plan.start
    keep_hint = (
        f"the finished frames are kept in {work_dir}; fix that and run the same command "
        "with --resume to continue"
    )
    counter = _FrameCounter(on_frame, total, progress=progress)
    manifest: dict = {}

    def compute(on: Device) -> WorkDirectory:
        # A retry on the CPU after running out of GPU memory continues the same run.
        work = WorkDirectory.open(
            work_dir, {**manifest, "device": on.kind}, resume=resume or on != device
        )
        counter.done = work.finished_frames(plan.start, plan.end)
        if counter.done:
            log.info("resuming after %d of %d frames", counter.done, total)
        analogy_model = load_model(spec.model, on, progress=progress)
        # The neural-style method has a frame loop of its own (run.neural_frame_loop).
        neural = isinstance(spec.params, NeuralStyleParams)
        loop = stylise_neural_frames if neural else stylise_frames
        try:
            with counter:
                loop(analogy_model, spec, plan, work, on_frame=counter.frame,
                     on_stage=counter.stage)  # fmt: skip
        except OutputError as exc:
            raise OutputError(f"{exc}; {keep_hint}") from None
        return work

    try:
        with _terminate_as_interrupt(), WorkLock(work_dir):
            remove_partials(output.parent, [output.name])
            # The fingerprint, once (it hashes the inputs): inside, so Ctrl-C stops it too.
            manifest.update(spec.manifest(plan, device))
            if spec.scale_out is None:
                smaller = f"--work-size (now {max(plan.work_width, plan.work_height)}) or --size"
                work = within_memory(device, compute, smaller=smaller, cpu_fallback=cpu_fallback)
            else:
                with counter:
                    work = run_chunks(spec, plan, device, work_dir=work_dir, manifest=manifest,
                                      resume=resume, counter=counter)  # fmt: skip
            try:
                encode_video(
                    plan, spec.clip, work, output, crf=spec.params.crf,
                    chroma=spec.params.chroma, overwrite=overwrite, keep_frames=keep_frames,
                    inputs=spec.inputs(),
                )  # fmt: skip
            except OutputError as exc:
                raise OutputError(f"{exc}; {keep_hint}") from None
            flicker = _warp_error(plan, spec.clip, work)
            shutil.rmtree(work_dir, ignore_errors=True)
    except KeyboardInterrupt:
        if not work_dir.exists():
            raise Interrupted("interrupted before the first frame was finished") from None
        raise Interrupted(
            f"interrupted after {counter.done} of {total} frames; the work is kept in "
            f"{work_dir}; run the same command with --resume to continue"
        ) from None
    return TransferResult(
        output, total, plan.width, plan.height, counter.last_profile,
        seconds=time.perf_counter() - started, frames_computed=counter.computed,
        warp_error=flicker,
    )  # fmt: skip


def _warp_error(plan: TransferPlan, clip: Path, work: WorkDirectory) -> WarpError | None:
    """Warping error of the finished frames against the clip's motion (None for one frame)."""
    if plan.end - plan.start < 2:
        return None
    finished = (work.read_frame(index) for index in range(plan.start, plan.end))
    inputs = (frame for _, frame in read_frames(clip, start=plan.start, end=plan.end))
    return warp_error(finished, inputs)


def _checked_plan(
    spec: RunSpec,
    output: Path,
    work_dir: Path,
    keep_frames: Path | None,
    *,
    overwrite: bool,
    resume: bool,
) -> TransferPlan:
    """The run's plan, once every input and every output passed their checks.

    Raises
    ------
    InputError, OutputError
    """
    inputs = spec.inputs()
    check_target(output, overwrite=overwrite, inputs=inputs)
    refuse_inputs(work_dir, inputs)
    check_run_paths(output, work_dir, keep_frames)
    plan = plan_transfer(spec.style, spec.clip, spec.params, start=spec.start, end=spec.end)
    if keep_frames is not None:
        kept = [kept_frame_name(index) for index in range(plan.start, plan.end)]
        check_target(keep_frames, overwrite=overwrite, inputs=inputs, directory=True,
                     members=kept)  # fmt: skip
    spec.check(plan)
    check_encoding(plan, spec.clip, output, crf=spec.params.crf, chroma=spec.params.chroma)
    if not (resume and work_dir.exists()):
        needed = work_space_needed(plan)
        check_free_space(work_dir.parent, needed, what=f"work directory {work_dir}")
    return plan


class _FrameCounter:
    """Counts finished frames, passes reports on, and reports the optional progress."""

    def __init__(self, on_frame, total: int, *, progress: bool):
        self.on_frame = on_frame
        self.total = total
        self.progress = progress
        self.done = 0
        self.computed = 0
        self.last_profile = None
        self.reporter: VideoProgress | None = None

    def __enter__(self):
        if self.progress:
            self.reporter = VideoProgress(self.total, self.done).__enter__()
        return self

    def __exit__(self, *exc_info):
        if self.reporter is not None:
            self.reporter.__exit__(*exc_info)
            self.reporter = None

    def advance(self, frames: int) -> None:
        """Count ``frames`` more finished frames made elsewhere (by workers)."""
        if frames <= 0:
            return
        self.done += frames
        self.computed += frames
        if self.reporter is not None:
            self.reporter.advance(frames)

    def stage(self, index: int, kind: str, name: str, level: int | None) -> None:
        if self.reporter is not None:
            self.reporter.stage(index, kind, name, level)

    def frame(self, report: FrameReport) -> None:
        self.done = report.done
        self.computed += 1
        self.last_profile = report.profile
        if self.reporter is not None:
            self.reporter.frame(report.index, report.kind, report.seconds)
        if self.on_frame is not None:
            self.on_frame(report)


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM like Ctrl-C, so a killed run stops cleanly and can resume.

    Only the main thread may set signal handlers; elsewhere SIGTERM keeps its
    meaning.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
