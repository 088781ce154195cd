"""Neural style on video: Ruder et al.'s temporal loss along the optical flow, frame by frame.

See docs/DESIGN.md section 11.

A shot's first frame is optimised from itself (or noise) for ``iterations``
L-BFGS steps. Every later frame ``i`` (Ruder, Dosovitskiy and Brox 2016):

* starts from the previous output moved into it along the backward optical flow
  (DIS, :mod:`diva_numba.video.flow`), so it needs far fewer steps (``later_iterations``);
* adds the temporal loss: the distance to that moved output, weighted per pixel by
  ``c`` = 1 where the forward-backward flow check trusts the flow and 0 where it
  fails (occlusions, motion boundaries, content come into the picture);
* with ``long_term`` offsets ``J``, also the outputs of frames ``i - j``, each moved
  by the flow from frame ``i`` to frame ``i - j`` and weighted
  ``max(c_j - sum_{k in J, k < j} c_k, 0)``: a pixel is held to the nearest
  earlier frame that shows it.

The optimisation works at the working size (``work_size``). A shot's first frame
is enlarged to the output size by bicubic interpolation; a later frame's output
is the previous *output* moved along the optical flow at the output size, plus
the optimisation's change from its start, enlarged (:func:`carry_output`; where
the flow is not trusted, the result enlarged): moving the working size's result
and enlarging it again every frame would re-sample the strokes the output shows,
and they would swim (``carry_output`` off: bikes' warping error 2.8 against the
input's 0.73; docs/DESIGN.md section 11). Then the mask and the colour
preservation apply (:class:`~diva_numba.finishing.finisher.Finisher`).
:func:`~diva_numba.run.transfer.run_transfer` calls :func:`stylise_neural_frames`
instead of the analogy's frame loop when the run's parameters are
:class:`NeuralStyleParams`: the checks before any work, the work directory that
resumes, the clip's timing and audio are the same.
"""

from __future__ import annotations

import dataclasses
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from diva_numba.errors import InputError
from diva_numba.gpu.device import to_device, to_host
from diva_numba.image_analogy.deep_analogy import AnalogyModel
from diva_numba.images import resize, save_image
from diva_numba.neural_style.params import NeuralStyleParams
from diva_numba.neural_style.styler import NeuralStyler, deliver
from diva_numba.outputs import AtomicFile
from diva_numba.run.background_writer import BackgroundWriter
from diva_numba.run.planning import TransferPlan
from diva_numba.run.progress import FrameReport, StageCallback
from diva_numba.run.spec import RunSpec
from diva_numba.run.workdir import WorkDirectory
from diva_numba.video import read_frames
from diva_numba.video.flow import flow_pair, occlusion_mask, warp_image
from diva_numba.video.shots import shot_distance


@dataclass(frozen=True)
class Previous:
    """An earlier frame: its index, its input at the working size, its output (level 0, host)."""

    index: int
    input_frame: np.ndarray  # uint8 (H, W, 3)
    output: np.ndarray  # float32 (3, H, W), unclipped
    #: The frame and its output (before finishing) at the output size, uint8 (H', W', 3).
    frame: np.ndarray | None = None
    delivered: np.ndarray | None = None


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


def stylise_neural_frames(
    model: AnalogyModel,
    spec: RunSpec,
    plan: TransferPlan,
    work: WorkDirectory,
    *,
    on_frame: Callable[[FrameReport], None] | None = None,
    on_stage: StageCallback | None = None,
) -> None:
    """Stylise every frame of the plan not yet in ``work``, saving state after each.

    :func:`~diva_numba.run.frame_loop.stylise_frames` for a run whose parameters
    are :class:`NeuralStyleParams`.

    Parameters
    ----------
    model : AnalogyModel
        Its VGG-19 weights and preprocessing, on the run's device.
    spec : RunSpec
        The run: clip, parameters, mask and colour.
    plan : TransferPlan
        Frame range, working size, the style image at the working size.
    work : WorkDirectory
        Frames already done are skipped; the next one continues from the saved state.
    on_frame : callable, optional
        Called after every finished frame.
    on_stage : callable, optional
        ``on_stage(index, kind, stage, None)`` as a frame's optimisation starts.
    """
    params = spec.params
    done = work.finished_frames(plan.start, plan.end)
    first = plan.start + done
    if first >= plan.end:
        return
    styler = NeuralStyler(model, plan.style, params)
    finisher = spec.finisher(plan, work.path)
    history = load_history(work) if done else []
    depth = max((1, *params.long_term))
    device = styler.device
    with BackgroundWriter() as writer:
        for index, frame in read_frames(spec.clip, start=first, end=plan.end):
            writer.check()
            started = time.perf_counter()
            frame = resize(frame, *plan.output_shape)
            work_frame = resize(frame, *plan.work_shape)
            content = styler.preprocess(work_frame)
            if history and params.cuts.is_cut(shot_distance(history[0].input_frame, work_frame)):
                history = []
            kind = "full" if not history or params.independent else "seeded"
            if on_stage is not None:
                on_stage(index, kind, "optimising the pixels (L-BFGS)", None)
            if kind == "full":
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
            carried = kind == "seeded" and moved and _carries(history[0], index, params)
            if carried:
                start, held = styler.to_rgb(moved[0][0]), to_host(moved[0][1])
                output = carry_output(result.rgb, start, held, history[0], frame, params)
            else:
                output = deliver(result.rgb, *plan.output_shape)
            finished = output if finisher is None else finisher(index, frame, output)
            newest = Previous(index, work_frame, to_host(result.image), frame, output)
            # Only the newest frame's output-size pictures are carried on.
            older = [dataclasses.replace(p, frame=None, delivered=None) for p in history]
            history = [newest, *older][:depth]
            writer.submit(_frame_writer(work, history, finished))
            if on_frame is not None:
                seconds = time.perf_counter() - started
                total = plan.end - plan.start
                on_frame(FrameReport(index, index + 1 - plan.start, total, seconds, frame,
                                     finished, None, kind))  # fmt: skip


def _carries(previous: Previous, index: int, params: NeuralStyleParams) -> bool:
    """Whether frame ``index``'s output is carried from ``previous``'s at the output size."""
    return (
        params.carry_output
        and params.temporal_weight > 0
        and previous.index == index - 1
        and previous.delivered is not None
    )


def carry_output(result_rgb: np.ndarray, start_rgb: np.ndarray, held: np.ndarray,
                 previous: Previous, frame: np.ndarray, params: NeuralStyleParams):  # fmt: skip
    """A later frame's output at the output size, carried from the previous output.

    ``O_t = c (warp(O_{t-1}) + up(h (x_t - s_t))) + (1 - c) up(x_t)``: where the flow
    between the two frames at the output size is trusted (``c``, the
    forward-backward check, softened over a pixel or two inside what it does not
    trust), the previous output moved along that flow (bicubic) plus the
    optimisation's change from its start ``s_t`` (the previous result moved at the
    working size) where the temporal loss held it (``h``), enlarged; elsewhere the
    result enlarged. The strokes the viewer saw move with the picture instead of
    being re-sampled from the working size every frame, and content the flow at
    the output size follows is not painted afresh because the coarser flow lost it.

    Parameters
    ----------
    result_rgb, start_rgb : float32 (h, w, 3)
        The optimised frame and the start of its optimisation, RGB at the working size.
    held : float32 (h, w)
        The temporal loss' weight of the previous output (1 where it held the
        optimisation, 0 where it let it paint afresh).
    previous : Previous
        The frame before, with its input and output at the output size.
    frame : uint8 (H, W, 3)
        This frame at the output size.
    params : NeuralStyleParams
        ``flow_preset``.

    Returns
    -------
    uint8 (H, W, 3)
    """
    height, width = frame.shape[:2]
    forward, backward = flow_pair(previous.frame, frame, preset=params.flow_preset)
    trusted = 1.0 - occlusion_mask(forward, backward).astype(np.float32)
    softness = max(1.0, width / result_rgb.shape[1])
    # Softened into the untrusted side only: a trusted pixel stays carried whole.
    trusted = np.maximum(trusted, cv2.GaussianBlur(trusted, (0, 0), softness))[..., None]
    moved = warp_image(previous.delivered.astype(np.float32), backward, cubic=True)
    change = resize((result_rgb - start_rgb) * held[..., None], height, width)
    carried = moved + change
    output = trusted * carried + (1.0 - trusted) * resize(result_rgb, height, width)
    return np.clip(np.rint(output), 0, 255).astype(np.uint8)


def _frame_writer(work: WorkDirectory, history: list[Previous], output: np.ndarray):
    """The job that writes a finished frame, then the state that names it (each atomically)."""
    newest = history[0]
    arrays = {
        "index": np.asarray(newest.index),
        "input_frame": newest.input_frame,
        "output_frame": newest.output,
        "frame": newest.frame,
        "delivered": newest.delivered,
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
            carried = [arrays[name] if name in arrays.files else None
                       for name in ("frame", "delivered")]  # fmt: skip
            history = [
                Previous(
                    int(arrays["index"]), arrays["input_frame"], arrays["output_frame"], *carried
                )  # fmt: skip
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
