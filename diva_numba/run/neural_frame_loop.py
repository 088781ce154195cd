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
is enlarged to the output size by bicubic interpolation. A later frame starts
from, and is held to, the previous *output* moved along the optical flow at the
output size and brought to the working size; its output is that moved output
plus the optimisation's change, enlarged (:class:`CarriedOutput`; where the flow
is not trusted, the result enlarged). Moving the working size's result and
enlarging it again every frame re-samples the strokes the output shows, and they
swim (``carry_output`` off: bikes' warping error 3.8 times the input's; on, 1.1
times: docs/DESIGN.md section 11). Then the mask and the colour preservation
apply (:class:`~diva_numba.finishing.finisher.Finisher`).
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
    history: list[Previous],
    index: int,
    frame: np.ndarray,
    params: NeuralStyleParams,
    *,
    first: tuple[np.ndarray, np.ndarray] | None = None,
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
    first : (w_1 float32 (3, H, W), trusted float32 (H, W)), optional
        Offset 1 as the caller made it (:func:`carry_previous`), in place of the
        previous output moved at the working size.

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
        if offset == 1 and first is not None:
            warped, trusted = first
        elif previous is None:
            continue
        else:
            forward, backward = flow_pair(previous.input_frame, frame, preset=params.flow_preset)
            trusted = 1.0 - occlusion_mask(forward, backward).astype(np.float32)
            output = np.ascontiguousarray(previous.output.transpose(1, 2, 0))
            warped = np.ascontiguousarray(warp_image(output, backward).transpose(2, 0, 1))
        weight = np.maximum(trusted - closer, 0.0)
        closer += trusted
        moved.append((warped, weight))
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
            carried = None
            if kind == "full":
                result = styler.optimise(
                    content, styler.start(content, seed=params.seed + index),
                    iterations=params.iterations,
                )  # fmt: skip
            else:
                if _carries(history[0], index, params):
                    carried = carry_previous(history[0], frame, plan.work_shape, params)
                first = None if carried is None else (carried.start_level0(styler), carried.held)
                moved = [
                    (to_device(warped, device), to_device(weight, device))
                    for warped, weight in moved_outputs(
                        history, index, work_frame, params, first=first
                    )  # fmt: skip
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
            if carried is not None:
                output = carried.deliver(result.rgb)
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


@dataclass(frozen=True)
class CarriedOutput:
    """The previous output moved into a frame at the output size, before the frame is optimised.

    Ruder et al.'s temporal target is the previous *result* moved at the working
    size; here it is the previous *output*, moved at the output size along a flow
    computed there, then brought to the working size (:attr:`start`). The frame's
    output is then that moved output plus the optimisation's change, enlarged
    (:meth:`deliver`): what the optimisation leaves alone moves exactly as the
    picture does, and every working-size detail of the output is the optimised
    frame's own, so nothing is re-sampled frame after frame.

    Attributes
    ----------
    moved : float32 (H, W, 3)
        The previous output moved along the backward flow at the output size (Lanczos).
    trusted : float32 (H, W)
        The forward-backward check of that flow, softened by about the
        output-to-working ratio into the pixels it does not trust only.
    start : float32 (h, w, 3)
        ``moved`` at the working size (area): the start and temporal target of
        the frame's optimisation.
    held : float32 (h, w)
        Share of each working pixel that the flow trusts: the temporal loss' weight.
    """

    moved: np.ndarray
    trusted: np.ndarray
    start: np.ndarray
    held: np.ndarray

    def start_level0(self, styler: NeuralStyler) -> np.ndarray:
        """:attr:`start` as the network's input (level 0), on the host."""
        return to_host(styler.preprocess(self.start))

    def deliver(self, result_rgb: np.ndarray) -> np.ndarray:
        """``O_t = c (moved + up(h (x - s))) + (1 - c) up(x)``, rounded to uint8 (H, W, 3).

        ``x``: the optimised frame (RGB at the working size); ``s``: :attr:`start`;
        ``h``: :attr:`held`; ``c``: :attr:`trusted`. Where the flow at the output
        size is not trusted, the result enlarged.
        """
        height, width = self.moved.shape[:2]
        change = resize((result_rgb - self.start) * self.held[..., None], height, width)
        trusted = self.trusted[..., None]
        enlarged = resize(result_rgb, height, width)
        output = trusted * (self.moved + change) + (1.0 - trusted) * enlarged
        return np.clip(np.rint(output), 0, 255).astype(np.uint8)


def carry_previous(
    previous: Previous, frame: np.ndarray, work_shape: tuple[int, int], params: NeuralStyleParams
) -> CarriedOutput:
    """The previous output carried into ``frame`` (uint8 (H, W, 3), the output size).

    One DIS flow pair between the two frames at the output size gives the move and
    its forward-backward check (:func:`~diva_numba.video.flow.occlusion_mask`).
    """
    forward, backward = flow_pair(previous.frame, frame, preset=params.flow_preset)
    trusted = 1.0 - occlusion_mask(forward, backward).astype(np.float32)
    # Lanczos: moved frame after frame, the output neither blurs nor rings.
    moved = warp_image(previous.delivered.astype(np.float32), backward, interpolation="lanczos")
    softness = max(1.0, frame.shape[1] / work_shape[1])
    softened = np.maximum(trusted, cv2.GaussianBlur(trusted, (0, 0), softness))
    return CarriedOutput(
        moved=moved,
        trusted=softened,
        start=np.ascontiguousarray(resize(moved, *work_shape)),
        held=np.ascontiguousarray(resize(trusted, *work_shape)),
    )


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
