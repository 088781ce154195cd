"""The frame loop of a video run: frame 0 a full analogy, later frames seeded from the last.

Every later frame inherits from the one before it (docs/DESIGN.md section 3):

* the fields ``phi_ab`` of every level, moved along the backward optical flow;
  pixels the flow marks occluded start from the coarser level instead;
* fewer PatchMatch rounds, and A''s deconvolutions warm-started from the
  previous solutions, moved the same way;
* B's latent features (the style image with the clip's look), which change
  slowly, are reused, and the style image's VGG features are computed once;
* the full-resolution synthesis (:mod:`diva_numba.synthesis`) takes the
  previous output, moved along the flow, as a guide of its patch distance
  where the flow is reliable (``temporal_weight``). Every output pixel is
  copied from the style image: earlier outputs are never resampled into the
  frame, so nothing blurs or drifts with time.

The deep analogy works on the frames at the working size; the synthesis
brings its field to the output size (the clip's own by default).

What a frame inherits stays on the run's device from frame to frame (fields,
deconvolution solutions, B's latent features) and is moved there: the flow and
the occlusion mask go up once per frame, the fields through
:func:`~diva_numba.kernels.nnf_resample.pull_field`, the solutions by a gather at
the positions it gives, the mask by array-module code. State is saved in the
:class:`~diva_numba.workdir.WorkDirectory` after every frame, so a run continues
where it stopped: one device->host copy of it, then the files are written in
the background while the next frame is computed.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from diva_numba import anchors
from diva_numba.chunks import colour_signature
from diva_numba.deep_analogy import AnalogyModel, FrameGuide, analogy
from diva_numba.device import Device, array_module, download_together, to_device
from diva_numba.flow import flow_pair, occlusion_mask, warp_image
from diva_numba.imageio import resize, save_image
from diva_numba.kernels.nnf_resample import pull_field
from diva_numba.models import vgg
from diva_numba.profile import Profile
from diva_numba.progress import FrameKind
from diva_numba.synthesis import ExemplarCache, TemporalGuide, synthesize
from diva_numba.video import read_frames
from diva_numba.workdir import BackgroundWriter, FrameState, WorkDirectory


@dataclass
class FrameReport:
    """What the frame loop tells its caller after each frame.

    Attributes
    ----------
    index : int
        The frame's index in the clip.
    done, total : int
        Frames of the run finished so far (this one included), and in all.
    seconds : float
        Time this frame took.
    input_frame, output_frame : uint8 array (H, W, 3)
        The frame and its stylised output, at the output size.
    profile : Profile
        Time per stage and level of this frame's analogy.
    kind : {"full", "seeded", "keyframes"}
        How the frame was made: a full analogy, seeded from the previous frame,
        or from the keyframes alone (:data:`~diva_numba.progress.FrameKind`).
    """

    index: int
    done: int
    total: int
    seconds: float
    input_frame: np.ndarray
    output_frame: np.ndarray
    profile: object
    kind: FrameKind = "full"


#: ``on_stage(index, kind, stage, level)``: a stage of frame ``index`` starts.
StageCallback = Callable[[int, FrameKind, str, "int | None"], None]


def stylise_frames(
    model: AnalogyModel,
    plan,
    clip_path: Path,
    work: WorkDirectory,
    params,
    *,
    on_frame: Callable[[FrameReport], None] | None = None,
    on_stage: StageCallback | None = None,
    finish=None,
) -> None:
    """Stylise every frame of the plan not yet in ``work``, saving state after each.

    Parameters
    ----------
    model : AnalogyModel
    plan : TransferPlan
        Frame range, working size and the style image at its working size.
    clip_path : Path
    work : WorkDirectory
        Holds the finished frames; frames already done are skipped (resume).
    params : TransferParams
    on_frame : callable, optional
        Called after every finished frame (progress bars, previews).
    on_stage : callable, optional
        ``on_stage(index, kind, stage, level)`` as every stage of a frame's
        analogy starts (:mod:`diva_numba.progress`).
    finish : FinishSpec, optional
        Keyframes, mask and colour (:mod:`diva_numba.finishing`). With
        keyframes the deep analogy runs only on frames with content no
        keyframe shows; its state then carries over from the last frame it
        ran on.
    """
    done = work.finished_frames(plan.start, plan.end)
    first_todo = plan.start + done
    if first_todo >= plan.end:
        return
    device = model.device
    state = _state_on_device(work.load_state(), device) if done else None
    latent_b = work.load_latent_b() if done else None
    if latent_b is not None:
        # Level 0, B's pixels, guides the synthesis on the host.
        latent_b = {lv: v if lv == 0 else to_device(v, device) for lv, v in latent_b.items()}
    features_bp = model.features(plan.style)
    guided = dataclasses.replace(
        params.analogy,
        lbfgs_iterations=params.guided_lbfgs_iterations,
        lbfgs_min_decrease=params.guided_lbfgs_min_decrease,
    )
    if on_stage is not None and finish is not None and finish.keys:
        on_stage(first_todo, "prepare", "carrying the keyframes along the optical flow", None)
    finisher = (
        None if finish is None or finish.is_plain else finish.open(clip_path, plan, work.path)
    )
    exemplar_cache = ExemplarCache()
    # A seeded frame's matches come from the photo flow between frames; the appearance
    # alignment's noise, different from frame to frame, would make them wander: it runs
    # on a shot's first frame only (docs/DESIGN.md section 10).
    seeded_synthesis = dataclasses.replace(
        params.synthesis, alignment=dataclasses.replace(params.synthesis.alignment, rounds=0)
    )
    with BackgroundWriter() as writer:
        for index, frame in _output_frames(clip_path, plan, first_todo):
            writer.check()
            started = time.perf_counter()
            work_frame = resize(frame, *plan.work_shape)
            # A new shot is a new start: a full analogy, B's latent features made afresh.
            cut = state is not None and starts_shot(
                state.input_frame, work_frame, params.cut_threshold
            )
            refresh_b = (
                latent_b is None
                or params.independent
                or cut
                or (params.refresh_b_every and (index - plan.start) % params.refresh_b_every == 0)
            )
            profile, kind = None, "keyframes"
            if finisher is not None and not finisher.needs_analogy(index):
                finished = finisher(index, frame, None)
                # The analogy's state stays that of the last frame it ran on.
                state = (
                    FrameState(index, work_frame, finished, {}, {})
                    if state is None
                    else dataclasses.replace(state, index=index)
                )
                writer.submit(_frame_writer(work, state, None, finished))
            else:
                temporal, solutions, state_anchors = None, None, {}
                synthesis = params.synthesis
                analogy_frame = (
                    work_frame if finisher is None else finisher.analogy_input(index, work_frame)
                )
                if state is None or not state.fields_ab or params.independent or cut:
                    kind = "full"
                    result = analogy(
                        model, analogy_frame, plan.style, params=params.analogy,
                        features_bp=features_bp, profile=_profile(device, on_stage, index, kind),
                    )  # fmt: skip
                else:
                    forward, backward = flow_pair(
                        state.input_frame, work_frame, preset=params.flow_preset
                    )
                    occluded = occlusion_mask(forward, backward)
                    followed = {
                        lv: anchors.follow(state.anchor(lv), backward, occluded)
                        for lv in state.deconv_ab
                    }
                    guide = _guide(state, backward, followed, occluded, plan, params, device)
                    if not refresh_b:
                        guide.latent_b = _feature_levels(latent_b)
                    guide.solve_levels, guide.solve_boxes = anchors.plan_solves(followed, params)
                    kind = "seeded"
                    result = analogy(
                        model, analogy_frame, plan.style, params=guided, features_bp=features_bp,
                        guide=guide, profile=_profile(device, on_stage, index, kind),
                    )  # fmt: skip
                    # The guide is made at the output size: part of the full-resolution stage.
                    with result.profile.stage("synthesis"):
                        temporal = _temporal_guide(
                            state, backward, occluded, params, plan.style_full.shape[:2]
                        )
                    solutions, state_anchors = anchors.settle(
                        followed, guide, state.deconv_ab, result.deconvolutions
                    )
                    synthesis = seeded_synthesis
                if refresh_b:
                    latent_b = {**result.latent_b, 0: result.b}
                with result.profile.stage("synthesis"):
                    synthesized = synthesize(
                        frame, plan.style_full, result.level_fields[1][0], latent_b[0],
                        exemplar_work_shape=plan.style.shape[:2], device=device,
                        params=synthesis, temporal=temporal, cache=exemplar_cache,
                    )  # fmt: skip
                output = synthesized.image
                profile = result.profile
                state = FrameState(
                    index=index,
                    input_frame=work_frame,
                    output_frame=output,
                    fields_ab={lv: fields[0] for lv, fields in result.level_fields.items()},
                    deconv_ab=dict(result.deconvolutions) if solutions is None else solutions,
                    anchor_flows={lv: flow for lv, (flow, _) in state_anchors.items()},
                    anchor_new={lv: new for lv, (_, new) in state_anchors.items()},
                    output_field=synthesized.field,
                )
                finished = output if finisher is None else finisher(index, frame, output)
                writer.submit(_frame_writer(work, state, latent_b if refresh_b else None, finished))
            if on_frame is not None:
                seconds = time.perf_counter() - started
                total = plan.end - plan.start
                on_frame(FrameReport(index, index + 1 - plan.start, total, seconds, frame,
                                     finished, profile, kind))  # fmt: skip


def _profile(device: Device, on_stage: StageCallback | None, index: int, kind: str) -> Profile:
    """A frame's profile, reporting its stages to ``on_stage``."""
    report = None if on_stage is None else functools.partial(on_stage, index, kind)
    return Profile(device, on_stage=report)


def starts_shot(previous: np.ndarray, frame: np.ndarray, threshold: float) -> bool:
    """True when ``frame`` is not a continuation of ``previous`` (a shot cut).

    The colour histograms of the two frames (:func:`~diva_numba.chunks.colour_signature`)
    differ by at least ``threshold`` in total variation; within a shot, even a fast
    pan stays under 0.1, cuts between shots measure 0.9 and more (docs/DESIGN.md
    section 3).
    """
    distance = 0.5 * float(np.abs(colour_signature(frame) - colour_signature(previous)).sum())
    return distance >= threshold


def _feature_levels(latent_b: dict) -> dict:
    """B's latent features (levels 1..4) without its pixels (level 0)."""
    return {level: value for level, value in latent_b.items() if level > 0}


def _state_on_device(state: FrameState, device: Device) -> FrameState:
    """A loaded state with its fields and solutions on ``device`` (one upload each)."""
    return dataclasses.replace(
        state,
        fields_ab={lv: to_device(v, device) for lv, v in state.fields_ab.items()},
        deconv_ab={lv: to_device(v, device) for lv, v in state.deconv_ab.items()},
        output_field=None if state.output_field is None else to_device(state.output_field, device),
    )


def _frame_writer(work: WorkDirectory, state: FrameState, latent_b: dict | None, output):
    """Host copies of a frame's results (one transfer), and the job that writes them.

    The files are written in this order, each atomically: the frame, B's latent
    features when refreshed, the state. The state names the last finished frame,
    so whenever a run stops, every frame it names is on disk with what the next
    frame needs.
    """
    arrays = {("field", lv): v for lv, v in state.fields_ab.items()}
    if state.output_field is not None:
        arrays["output_field"] = state.output_field
    arrays.update({("deconv", lv): v for lv, v in state.deconv_ab.items()})
    arrays.update({("latent", lv): v for lv, v in (latent_b or {}).items()})
    host = download_together(arrays)
    host_state = dataclasses.replace(
        state,
        fields_ab={lv: host["field", lv] for lv in state.fields_ab},
        deconv_ab={lv: host["deconv", lv] for lv in state.deconv_ab},
        output_field=host.get("output_field"),
    )
    host_latent_b = None if latent_b is None else {lv: host["latent", lv] for lv in latent_b}

    def write() -> None:
        save_image(work.frame_path(state.index), output)
        if host_latent_b is not None:
            work.save_latent_b(host_latent_b)
        work.save_state(host_state)

    return write


def _output_frames(clip_path: Path, plan, first: int) -> Iterator:
    for index, frame in read_frames(clip_path, start=first, end=plan.end):
        yield index, resize(frame, *plan.output_shape)


def _guide(state: FrameState, backward: np.ndarray, followed: dict, occluded: np.ndarray, plan,
           params, device: Device) -> FrameGuide:  # fmt: skip
    """Seeds for frame t from frame t-1's state, on ``device``.

    The fields move along the backward flow (PatchMatch refines them every
    frame); each level's solution moves once from its anchor frame, along the
    flow of ``followed`` (:func:`diva_numba.anchors.follow`). The state's fields and
    solutions are on ``device``; the flows go up in one transfer and the
    occlusion mask in another, and every level is moved there.
    """
    guide = FrameGuide(patchmatch_iterations=params.guided_patchmatch_iterations)
    style_shape = plan.style.shape[:2]
    levels = list(followed)
    flows = to_device(np.stack([backward] + [followed[lv][0] for lv in levels]), device)
    occluded_by_level = anchors.pooled_masks(
        to_device(occluded, device), max(state.fields_ab, default=1)
    )
    xp = array_module(flows)
    for level, previous in state.fields_ab.items():
        seeded, invalid = pull_field(
            previous, flows[0], source_shape=vgg.level_shape(*style_shape, level)
        )
        guide.fields_ab[level] = seeded
        guide.fresh_ab[level] = xp.maximum(invalid, occluded_by_level[level])
    for slot, level in enumerate(levels, start=1):
        guide.deconv_ab[level] = anchors.move(state.deconv_ab[level], flows[slot])
    return guide


def _temporal_guide(
    state: FrameState, backward: np.ndarray, occluded: np.ndarray, params, exemplar_shape
) -> TemporalGuide | None:
    """Guide (c) of the synthesis: the previous output and its field moved into this frame.

    The flow and the occlusion mask come from the working size: a DIS flow at
    the output size costs far more and moves the guide by less than a pixel.
    The previous output's field (into the exemplar at its own size) moves with
    its content (:func:`~diva_numba.kernels.nnf_resample.pull_field`, on the
    field's device) and seeds the synthesis where the flow is trusted.
    """
    if params.temporal_weight == 0:
        return None
    previous_output = state.output_frame
    height, width = previous_output.shape[:2]
    scale = np.array([width / backward.shape[1], height / backward.shape[0]], np.float32)
    flow = cv2.resize(backward, (width, height), interpolation=cv2.INTER_LINEAR) * scale
    reliable = 1.0 - occluded.astype(np.float32)
    reliability = cv2.resize(reliable, (width, height), interpolation=cv2.INTER_LINEAR)
    field = None
    if state.output_field is not None:
        field, _ = pull_field(state.output_field, flow, source_shape=exemplar_shape)
    return TemporalGuide(
        warp_image(previous_output, flow), reliability, params.temporal_weight, field
    )
