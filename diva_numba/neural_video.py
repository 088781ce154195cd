"""Neural style on video: Ruder et al.'s temporal loss along the optical flow, frame by frame.

See docs/DESIGN.md section 11.

A shot's first frame is optimised from itself (or noise) for ``iterations``
L-BFGS steps. Every later frame ``i`` (Ruder, Dosovitskiy and Brox 2016):

* starts from the previous output moved into it along the backward optical flow
  (DIS, :mod:`diva_numba.flow`), so it needs far fewer steps (``later_iterations``);
* adds the temporal loss: the distance to that moved output, weighted per pixel by
  ``c`` = 1 where the forward-backward flow check trusts the flow and 0 where it
  fails (occlusions, motion boundaries, content come into the picture);
* with ``long_term`` offsets ``J``, also the outputs of frames ``i - j``, each moved
  by the flow from frame ``i`` to frame ``i - j`` and weighted
  ``max(c_j - sum_{k in J, k < j} c_k, 0)``: a pixel is held to the nearest
  earlier frame that shows it.

The optimisation works at the working size (``work_size``); the result is
enlarged to the output size by bicubic interpolation, then the mask and the
colour preservation apply (:class:`~diva_numba.finishing.Finisher`).
:func:`neural_transfer_video` is the whole job, with the plumbing of the analogy's
(:func:`~diva_numba.transfer.transfer_video`): checks before any work, a work
directory that resumes, the clip's timing and audio.
"""

from __future__ import annotations

import os
import shutil
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diva_numba.deep_analogy import load_model
from diva_numba.device import Device, resolve_device, to_device, to_host, within_memory
from diva_numba.errors import InputError, Interrupted, OutputError
from diva_numba.finishing import FinishSpec
from diva_numba.flow import flow_pair, occlusion_mask, warp_image
from diva_numba.frames import FrameReport, starts_shot
from diva_numba.imageio import resize, save_image
from diva_numba.neural_params import NeuralStyleParams
from diva_numba.neural_style import NeuralStyler, deliver
from diva_numba.outputs import AtomicFile, check_free_space, check_target, refuse_inputs
from diva_numba.planning import check_encoding, plan_transfer, work_space_needed
from diva_numba.transfer import (
    TransferResult,
    _FrameCounter,
    _terminate_as_interrupt,
    encode_video,
)
from diva_numba.video import read_frames
from diva_numba.workdir import BackgroundWriter, WorkDirectory, run_manifest


@dataclass(frozen=True)
class Previous:
    """An earlier frame: its index, its input at the working size, its output (level 0, host)."""

    index: int
    input_frame: np.ndarray  # uint8 (H, W, 3)
    output: np.ndarray  # float32 (3, H, W), unclipped


def moved_outputs(
    history: list[Previous], index: int, frame: np.ndarray, params: NeuralStyleParams
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Earlier outputs moved into frame ``index`` and their weights (Ruder et al.).

    Parameters
    ----------
    history : list of Previous
        Newest first.
    index : int
    frame : uint8 (H, W, 3)
        Frame ``index`` at the working size.
    params : NeuralStyleParams
        ``long_term`` adds offsets beside 1; ``flow_preset``.

    Returns
    -------
    list of ``(w_j float32 (3, H, W), c_j float32 (H, W))``, host arrays
        Offset 1 first (the start of the optimisation), then the long-term ones
        present in ``history``; ``c_j = max(trusted_j - sum of trusted_k, k < j, 0)``.
    """
    by_index = {previous.index: previous for previous in history}
    moved = []
    closer = np.zeros(frame.shape[:2], np.float32)
    for offset in (1, *params.long_term):
        previous = by_index.get(index - offset)
        if previous is None:
            continue
        forward, backward = flow_pair(previous.input_frame, frame, preset=params.flow_preset)
        trusted = 1.0 - occlusion_mask(forward, backward).astype(np.float32)
        warped = warp_image(np.ascontiguousarray(previous.output.transpose(1, 2, 0)), backward)
        weight = np.maximum(trusted - closer, 0.0)
        closer += trusted
        moved.append((np.ascontiguousarray(warped.transpose(2, 0, 1)), weight))
    return moved


def stylise_clip(
    styler: NeuralStyler,
    plan,
    clip_path: Path,
    work: WorkDirectory,
    *,
    on_frame: Callable[[FrameReport], None] | None = None,
    finisher=None,
) -> None:
    """Stylise every frame of the plan not yet in ``work``, saving state after each.

    Parameters
    ----------
    styler : NeuralStyler
        The style on the run's device, with the run's params.
    plan : TransferPlan
    clip_path : Path
    work : WorkDirectory
        Frames already done are skipped; the next one continues from the saved state.
    on_frame : callable, optional
    finisher : Finisher, optional
        Mask and colour preservation.
    """
    params = styler.params
    done = work.finished_frames(plan.start, plan.end)
    first = plan.start + done
    if first >= plan.end:
        return
    history = load_history(work) if done else []
    depth = max((1, *params.long_term))
    device = styler.device
    with BackgroundWriter() as writer:
        for index, frame in read_frames(clip_path, start=first, end=plan.end):
            writer.check()
            started = time.perf_counter()
            frame = resize(frame, *plan.output_shape)
            work_frame = resize(frame, *plan.work_shape)
            content = styler.preprocess(work_frame)
            if history and starts_shot(history[0].input_frame, work_frame, params.cut_threshold):
                history = []
            if not history or params.independent:
                result = styler.optimise(
                    content, styler.start(content, seed=params.seed + index),
                    iterations=params.iterations,
                )  # fmt: skip
            else:
                moved = [
                    (to_device(warped, device), to_device(weight, device))
                    for warped, weight in moved_outputs(history, index, work_frame, params)
                ]
                if moved:
                    initial = moved[0][0]
                    iterations = params.later_iterations
                else:  # the previous frame is not in the history: start afresh
                    initial, iterations = styler.start(content), params.iterations
                result = styler.optimise(
                    content, initial, iterations=iterations,
                    temporal=moved if params.temporal_weight else (),
                )  # fmt: skip
            output = deliver(result.rgb, *plan.output_shape)
            finished = output if finisher is None else finisher(index, frame, output)
            history = [Previous(index, work_frame, to_host(result.image)), *history][:depth]
            writer.submit(_frame_writer(work, history, finished))
            if on_frame is not None:
                seconds = time.perf_counter() - started
                total = plan.end - plan.start
                on_frame(FrameReport(index, index + 1 - plan.start, total, seconds, frame,
                                     finished, None))  # fmt: skip


def _frame_writer(work: WorkDirectory, history: list[Previous], output: np.ndarray):
    """The job that writes a finished frame, then the state that names it (each atomically)."""
    newest = history[0]
    arrays = {
        "index": np.asarray(newest.index),
        "input_frame": newest.input_frame,
        "output_frame": newest.output,
    }
    for number, previous in enumerate(history[1:], start=1):
        arrays[f"history_index_{number}"] = np.asarray(previous.index)
        arrays[f"history_input_{number}"] = previous.input_frame
        arrays[f"history_output_{number}"] = previous.output

    def write() -> None:
        save_image(work.frame_path(newest.index), output)
        with AtomicFile(work.path / "state.npz") as temp, open(temp, "wb") as handle:
            np.savez(handle, **arrays)

    return write


def load_history(work: WorkDirectory) -> list[Previous]:
    """The earlier frames a resumed run continues from, newest first."""
    path = work.path / "state.npz"
    try:
        with open(path, "rb") as handle, np.load(handle) as arrays:
            history = [
                Previous(int(arrays["index"]), arrays["input_frame"], arrays["output_frame"])
            ]
            number = 1
            while f"history_index_{number}" in arrays.files:
                history.append(
                    Previous(
                        int(arrays[f"history_index_{number}"]),
                        arrays[f"history_input_{number}"],
                        arrays[f"history_output_{number}"],
                    )
                )
                number += 1
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        raise InputError(f"work directory {work.path}: state.npz is damaged; remove it") from None
    if history[0].output.ndim != 3 or history[0].output.shape[0] != 3:
        raise InputError(
            f"work directory {work.path} holds another method's state; remove it to start again"
        )
    return history


def neural_transfer_video(
    style: str | os.PathLike,
    clip: str | os.PathLike,
    output: str | os.PathLike,
    params: NeuralStyleParams | None = None,
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
    mask: str | os.PathLike | None = None,
) -> TransferResult:
    """Paint every frame of ``clip`` in the manner of ``style``, with the temporal loss.

    The arguments are those of :func:`~diva_numba.transfer.transfer_video` (which
    comes here when its ``params`` are :class:`NeuralStyleParams`); keyframes and
    scale-out are the analogy's alone.

    Returns
    -------
    TransferResult
        ``last_profile`` is None: the method has one stage.

    Examples
    --------
    >>> from diva_numba import NeuralStyleParams, transfer_video
    >>> transfer_video("starry.jpg", "clip.mp4", "out.mp4",
    ...                NeuralStyleParams.for_device("cpu"))  # doctest: +SKIP
    """
    style, clip, output = Path(style), Path(clip), Path(output)
    device = device if isinstance(device, Device) else resolve_device(device)
    params = params or NeuralStyleParams.for_device(device)
    work_dir = Path(work_dir) if work_dir is not None else output.with_name(output.name + ".work")
    finish = FinishSpec(
        mask=None if mask is None else Path(mask), mask_feather=params.mask_feather,
        preserve_colour=params.preserve_colour,
    )  # fmt: skip
    inputs = [style, clip, *([Path(model)] if model is not None else []), *finish.inputs()]
    check_target(output, overwrite=overwrite, inputs=inputs)
    refuse_inputs(work_dir, inputs)
    plan = plan_transfer(style, clip, params, start=start, end=end)
    finish.check(plan)
    check_encoding(plan, clip, output, crf=params.crf, chroma=params.chroma)
    if not (resume and work_dir.exists()):
        check_free_space(
            work_dir.parent, work_space_needed(plan), what=f"work directory {work_dir}"
        )
    total = plan.end - plan.start
    keep_hint = (
        f"the finished frames are kept in {work_dir}; fix that and run the same command "
        "with --resume to continue"
    )
    counter = _FrameCounter(on_frame, total, progress=progress)

    def compute(on: Device) -> WorkDirectory:
        extra = finish.fingerprint()
        manifest = {
            **run_manifest(style, clip, plan, params, on),
            **({"finish": extra} if extra else {}),
        }
        work = WorkDirectory.open(work_dir, manifest, resume=resume or on != device)
        counter.done = work.finished_frames(plan.start, plan.end)
        styler = NeuralStyler(load_model(model, on), plan.style, params)
        finisher = None if finish.is_plain else finish.open(clip, plan, work.path)
        try:
            with counter:
                stylise_clip(styler, plan, clip, work, on_frame=counter.frame, finisher=finisher)
        except OutputError as exc:
            raise OutputError(f"{exc}; {keep_hint}") from None
        return work

    try:
        with _terminate_as_interrupt():
            smaller = f"--work-size (now {max(plan.work_width, plan.work_height)})"
            work = within_memory(device, compute, smaller=smaller, cpu_fallback=cpu_fallback)
            try:
                encode_video(
                    plan, clip, work, output, crf=params.crf, chroma=params.chroma,
                    overwrite=overwrite,
                    keep_frames=None if keep_frames is None else Path(keep_frames),
                )  # fmt: skip
            except OutputError as exc:
                raise OutputError(f"{exc}; {keep_hint}") from None
    except KeyboardInterrupt:
        raise Interrupted(
            f"interrupted after {counter.done} of {total} frames; the work is kept in "
            f"{work_dir}; run the same command with --resume to continue"
        ) from None
    shutil.rmtree(work_dir, ignore_errors=True)
    return TransferResult(output, total, plan.width, plan.height, None)
