"""The frame loop of a video run: frame 0 a full analogy, later frames seeded from the last.

Every later frame inherits from the one before it (docs/DESIGN.md section 3):

* the fields ``phi_ab`` of every level, moved along the backward optical flow;
  pixels the flow marks occluded start from the coarser level instead;
* fewer PatchMatch rounds, and A''s deconvolutions warm-started from the
  previous solutions, moved the same way;
* B's latent features (the style image with the clip's look), which change
  slowly, are reused, and the style image's VGG features are computed once;
* the full-resolution synthesis (:mod:`diva_numba.synthesis.pyramid`) takes the
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
:class:`~diva_numba.run.workdir.WorkDirectory` after every frame, so a run continues
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

import numpy as np

from diva_numba.finishing.finisher import Finisher
from diva_numba.gpu.device import download_together, to_device
from diva_numba.gpu.timing import Profile
from diva_numba.image_analogy.deep_analogy import AnalogyModel, WarmStart, analogy
from diva_numba.images import resize, save_image
from diva_numba.run import anchor_frames, anchors, inheritance
from diva_numba.run.anchor_agreement import anchor_synthesis, own_analogy
from diva_numba.run.anchor_frames import (
    carried_work_field,
    covered_share,
    needs_anchor,
    step_guide,
)
from diva_numba.run.background_writer import BackgroundWriter
from diva_numba.run.params import TransferParams
from diva_numba.run.planning import TransferPlan
from diva_numba.run.progress import FrameKind, FrameReport, StageCallback
from diva_numba.run.spec import RunSpec
from diva_numba.run.workdir import FrameState, WorkDirectory
from diva_numba.synthesis.pyramid import ExemplarCache, synthesize
from diva_numba.video import read_frames
from diva_numba.video.flow import flow_pair, occlusion_mask
from diva_numba.video.shots import shot_distance


def stylise_frames(
    model: AnalogyModel,
    spec: RunSpec,
    plan: TransferPlan,
    work: WorkDirectory,
    *,
    on_frame: Callable[[FrameReport], None] | None = None,
    on_stage: StageCallback | None = None,
) -> None:
    """Stylise every frame of the plan not yet in ``work``, saving state after each.

    Parameters
    ----------
    model : AnalogyModel
    spec : RunSpec
        The run: its clip, parameters, keyframes, mask and colour (with
        keyframes the deep analogy runs only on frames with content no
        keyframe shows; its state then carries over from the last frame it
        ran on).
    plan : TransferPlan
        Frame range, working size and the style image at its working size
        (a chunk's own range on a scale-out worker).
    work : WorkDirectory
        Holds the finished frames; frames already done are skipped (resume).
    on_frame : callable, optional
        Called after every finished frame (progress bars, previews).
    on_stage : callable, optional
        ``on_stage(index, kind, stage, level)`` as every stage of a frame's
        analogy starts (:mod:`diva_numba.run.progress`).
    """
    done = work.finished_frames(plan.start, plan.end)
    if plan.start + done >= plan.end:
        return
    if on_stage is not None and spec.keys:
        on_stage(plan.start + done, "prepare", "carrying the keyframes along the optical flow",
                 None)  # fmt: skip
    finisher = spec.finisher(plan, work.path)
    loop = FrameLoop(model, spec.params, plan, finisher,
                     style_photo=spec.style_photo(finisher, plan), on_stage=on_stage)  # fmt: skip
    if done:
        loop.resume(work)
    with BackgroundWriter() as writer:
        for index, frame in _output_frames(spec.clip, plan, plan.start + done):
            writer.check()
            started = time.perf_counter()
            outcome = loop.frame(index, frame)
            writer.submit(_frame_writer(work, outcome))
            if on_frame is not None:
                seconds = time.perf_counter() - started
                on_frame(FrameReport(index, index + 1 - plan.start, plan.end - plan.start,
                                     seconds, frame, outcome.output, outcome.profile,
                                     outcome.kind))  # fmt: skip


@dataclass
class FrameOutcome:
    """What one frame leaves: its state for the next, its output, what to save.

    Attributes
    ----------
    state : FrameState
        What the next frame inherits (on the run's device).
    output : uint8 array (H, W, 3)
        The finished frame at the output size.
    profile : Profile or None
        Time per stage of its analogy (None when keyframes covered it).
    latent_b : dict or None
        B's latent features when this frame made them afresh (saved with it).
    kind : {"full", "seeded", "anchor", "carried", "keyframes"}
        How it was made.
    anchor : bool
        The frame is an anchor frame (its whole state is saved for the frames
        carried from it).
    """

    state: FrameState
    output: np.ndarray
    profile: Profile | None = None
    latent_b: dict | None = None
    kind: FrameKind = "keyframes"
    anchor: bool = False


class FrameLoop:
    """The frames of one run, by kind: covered by keyframes, a cold start, seeded, an anchor
    frame or carried from one.

    Holds what is fixed for the run (model, parameters, plan, finishing, the
    style image's features) and what one frame hands the next (its
    :class:`FrameState` and B's latent features). :meth:`frame` tells the
    kinds apart; :meth:`covered`, :meth:`cold_start`, :meth:`seeded` (an anchor
    frame too) and :meth:`carried` each make one kind and return its
    :class:`FrameOutcome`.

    Parameters
    ----------
    model : AnalogyModel
    params : TransferParams
    plan : TransferPlan
    finisher : Finisher or None
    style_photo : uint8 array (H, W, 3), optional
        The photograph the style image paints (the clip's frame under
        ``--style-frame``), at the style's working size: the analogy's B, never
        reconstructed (:attr:`TransferParams.style_frame_as_b`).
    on_stage : callable, optional
        Told as each stage of a frame's analogy starts (:data:`StageCallback`).
    """

    def __init__(
        self,
        model: AnalogyModel,
        params: TransferParams,
        plan: TransferPlan,
        finisher: Finisher | None = None,
        *,
        style_photo: np.ndarray | None = None,
        on_stage: StageCallback | None = None,
    ):
        self.model = model
        self.on_stage = on_stage
        self.device = model.device
        self.params = params
        self.plan = plan
        self.finisher = finisher
        self.features_bp = model.features(plan.style)
        self.seeded_analogy = dataclasses.replace(
            params.analogy,
            lbfgs_iterations=params.guided_lbfgs_iterations,
            lbfgs_min_decrease=params.guided_lbfgs_min_decrease,
        )
        self.anchor_analogy = anchor_frames.anchor_analogy(self.seeded_analogy, params)
        # A seeded frame's matches come from the photo flow between frames; the appearance
        # alignment's noise, different from frame to frame, would make them wander: it runs
        # on a shot's first frame only (docs/DESIGN.md section 10).
        self.seeded_synthesis = dataclasses.replace(
            params.synthesis, alignment=dataclasses.replace(params.synthesis.alignment, rounds=0)
        )
        self.exemplar_cache = ExemplarCache()
        self.state: FrameState | None = None
        self.latent_b: dict | None = None
        # B known, not reconstructed: the painted frame's own features, level 5 included.
        self.known_b: dict | None = None
        if style_photo is not None:
            features = model.features(style_photo)
            self.known_b = {0: style_photo, **{lv: features[lv] for lv in (1, 2, 3, 4, 5)}}
            self.latent_b = self.known_b
        # Anchor frames (docs/DESIGN.md section 3) carry frames along the temporal guide;
        # painted keyframes, where given, do that job instead.
        self.anchoring = (
            params.anchors.enabled
            and not params.independent
            and params.temporal_weight > 0
            and (finisher is None or finisher.keys is None)
        )
        self.anchor: FrameState | None = None

    def resume(self, work: WorkDirectory) -> None:
        """Continue from the last finished frame's state in ``work``."""
        self.state = inheritance.state_on_device(work.load_state(), self.device)
        if self.anchoring and self.state.anchor_frame >= 0:
            self.anchor = (
                self.state
                if self.state.anchor_frame == self.state.index
                else inheritance.state_on_device(
                    work.load_anchor(self.state.anchor_frame), self.device
                )
            )
        latent_b = None if self.known_b is not None else work.load_latent_b()
        if latent_b is not None:
            # Level 0, B's pixels, guides the synthesis on the host.
            self.latent_b = {
                lv: v if lv == 0 else to_device(v, self.device) for lv, v in latent_b.items()
            }

    def frame(self, index: int, frame: np.ndarray) -> FrameOutcome:
        """Frame ``index`` (uint8, output size) made by its kind; the loop moves on to it."""
        params, state = self.params, self.state
        work_frame = resize(frame, *self.plan.work_shape)
        # A new shot is a new start: a full analogy, B's latent features made afresh.
        cut = state is not None and params.cuts.is_cut(shot_distance(state.input_frame, work_frame))
        refresh_b = self.known_b is None and (
            self.latent_b is None
            or params.independent
            or cut
            or (params.refresh_b_every and (index - self.plan.start) % params.refresh_b_every == 0)
        )
        anchored = self.anchoring and self.anchor is not None
        if self.finisher is not None and not self.finisher.needs_analogy(index):
            outcome = self.covered(index, frame, work_frame)
        elif state is None or params.independent or cut or not (anchored or state.fields_ab):
            outcome = self.cold_start(index, frame, work_frame)
        elif anchored:
            outcome = self.from_anchor(index, frame, work_frame, refresh_b=bool(refresh_b))
        else:
            outcome = self.seeded(index, frame, work_frame, refresh_b=bool(refresh_b))
        if self.anchoring and outcome.profile is not None and outcome.state.fields_ab:
            outcome.state.anchor_frame = index
            outcome.state.input_grey = anchor_frames.grey_for_refinement(frame, work_frame, params)
            outcome.anchor = True
            self.anchor = outcome.state
        self.state = outcome.state
        return outcome

    def from_anchor(
        self, index: int, frame: np.ndarray, work_frame: np.ndarray, *, refresh_b: bool
    ) -> FrameOutcome:
        """A frame of an analogy with anchor frames: a new anchor, or carried from the last.

        Either way its synthesis is guided by the anchor's output where the anchor
        covers it and by the previous frame's elsewhere
        (:func:`~diva_numba.run.anchor_frames.follow_anchor`).
        """
        params = self.params
        profile = self._profile(index, "carried")
        carried, covered, temporal = anchor_frames.follow_anchor(
            self.anchor, self.state, frame, work_frame, params, self.plan, self.device, profile,
        )  # fmt: skip
        if needs_anchor(index, self.anchor.index, covered_share(covered, params.anchors),
                        params.anchors):  # fmt: skip
            flows = (carried.from_key, carried.to_key)
            return self.seeded(index, frame, work_frame, refresh_b=refresh_b, base=self.anchor,
                               flows=flows, temporal=temporal)  # fmt: skip
        return self.carried(index, frame, work_frame, carried, temporal, profile)

    def carried(self, index: int, frame: np.ndarray, work_frame: np.ndarray, carried, temporal,
                profile: Profile) -> FrameOutcome:  # fmt: skip
        """A frame carried from its anchor: the anchor's output field moved along the flow to the
        anchor's frame, the style image searched only where no earlier output vouches."""
        anchor = self.anchor
        with profile.stage("synthesis"):
            work_field = carried_work_field(
                anchor, carried.to_key, self.plan.style.shape[:2], self.device
            )
            synthesized = synthesize(
                frame, self.plan.style_full, work_field, self.latent_b[0],
                exemplar_work_shape=self.plan.style.shape[:2], device=self.device,
                params=self.seeded_synthesis, temporal=temporal, cache=self.exemplar_cache,
            )  # fmt: skip
        state = FrameState(
            index, work_frame, synthesized.image, {}, {}, output_field=synthesized.field,
            anchor_frame=anchor.index, anchor_frame_flows=(carried.to_key, carried.from_key),
        )  # fmt: skip
        output = synthesized.image
        finished = output if self.finisher is None else self.finisher(index, frame, output)
        return FrameOutcome(state, finished, profile, kind="carried")

    def covered(self, index: int, frame: np.ndarray, work_frame: np.ndarray) -> FrameOutcome:
        """A frame the keyframes cover: no analogy; its state stays the last analogy's."""
        finished = self.finisher(index, frame, None)
        state = (
            FrameState(index, work_frame, finished, {}, {})
            if self.state is None
            else dataclasses.replace(self.state, index=index)
        )
        return FrameOutcome(state, finished)

    def cold_start(self, index: int, frame: np.ndarray, work_frame: np.ndarray) -> FrameOutcome:
        """A full image analogy (frame 0, a new shot, ``independent``); B made afresh."""
        known = self.known_b
        result = analogy(
            self.model, self._analogy_input(index, work_frame), self.plan.style,
            params=self.params.analogy, features_bp=self.features_bp,
            warm_start=None if known is None else WarmStart(
                latent_b=inheritance.feature_levels(known)
            ),
            profile=self._profile(index, "full"),
        )  # fmt: skip
        if known is None:
            self.latent_b = {**result.latent_b, 0: result.b}
        return self._synthesised(
            index, frame, work_frame, result, self.params.synthesis, refreshed=known is None,
            kind="full",
        )  # fmt: skip

    def seeded(
        self, index: int, frame: np.ndarray, work_frame: np.ndarray, *, refresh_b: bool,
        base: FrameState | None = None, flows: tuple | None = None, temporal=None,
    ) -> FrameOutcome:  # fmt: skip
        """A frame seeded along the optical flow (section 3) from the previous one, or from
        ``base`` (an anchor frame) along ``flows`` (from it, to it) with the synthesis'
        guide ``temporal``."""
        state, params = base or self.state, self.params
        kind = "seeded" if base is None else "anchor"
        forward, backward = flows or flow_pair(
            state.input_frame, work_frame, preset=params.flow_preset
        )
        occluded = occlusion_mask(forward, backward)
        followed = {
            lv: anchors.follow(state.anchor(lv), backward, occluded) for lv in state.deconv_ab
        }
        warm_start = inheritance.warm_start(state, backward, followed, occluded, self.plan,
                                            params, self.device)  # fmt: skip
        if not refresh_b:
            warm_start.latent_b = inheritance.feature_levels(self.latent_b)
        warm_start.solve_levels, warm_start.solve_boxes = anchors.plan_solves(followed, params)
        result = analogy(
            self.model, self._analogy_input(index, work_frame), self.plan.style,
            params=self.seeded_analogy if base is None else self.anchor_analogy,
            features_bp=self.features_bp, warm_start=warm_start,
            profile=self._profile(index, kind),
        )  # fmt: skip
        if temporal is None:
            # The guide is made at the output size: part of the full-resolution stage.
            with result.profile.stage("synthesis"):
                temporal = step_guide(
                    state, backward, occluded, params, self.plan.style_full.shape[:2]
                )
        solutions, state_anchors = anchors.settle(
            followed, warm_start, state.deconv_ab, result.deconvolutions
        )
        if refresh_b:
            self.latent_b = {**result.latent_b, 0: result.b}
        synthesis = self.seeded_synthesis
        if base is not None and params.anchors.agreement is not None:
            with result.profile.stage("synthesis"):
                own = own_analogy(self.plan.style, result.level_fields[1][0])
                synthesis, temporal = anchor_synthesis(synthesis, temporal, own, params.anchors)
        return self._synthesised(
            index, frame, work_frame, result, synthesis, refreshed=refresh_b,
            temporal=temporal, solutions=solutions, state_anchors=state_anchors, kind=kind,
        )  # fmt: skip

    def _profile(self, index: int, kind: FrameKind) -> Profile:
        """A frame's profile, reporting its stages to ``on_stage``."""
        report = None if self.on_stage is None else functools.partial(self.on_stage, index, kind)
        return Profile(self.device, on_stage=report)

    def _analogy_input(self, index: int, work_frame: np.ndarray) -> np.ndarray:
        if self.finisher is None:
            return work_frame
        return self.finisher.analogy_input(index, work_frame)

    def _synthesised(
        self, index, frame, work_frame, result, synthesis, *, refreshed: bool, kind: FrameKind,
        temporal=None, solutions=None, state_anchors=None,
    ) -> FrameOutcome:  # fmt: skip
        """The output at full resolution from the analogy's ``result``, and the new state."""
        with result.profile.stage("synthesis"):
            synthesized = synthesize(
                frame, self.plan.style_full, result.level_fields[1][0], self.latent_b[0],
                exemplar_work_shape=self.plan.style.shape[:2], device=self.device,
                params=synthesis, temporal=temporal, cache=self.exemplar_cache,
            )  # fmt: skip
        state_anchors = state_anchors or {}
        state = FrameState(
            index=index,
            input_frame=work_frame,
            output_frame=synthesized.image,
            fields_ab={lv: fields[0] for lv, fields in result.level_fields.items()},
            deconv_ab=dict(result.deconvolutions) if solutions is None else solutions,
            anchor_flows={lv: flow for lv, (flow, _) in state_anchors.items()},
            anchor_new={lv: new for lv, (_, new) in state_anchors.items()},
            output_field=synthesized.field,
            output_offsets=synthesized.offsets,
        )
        output = synthesized.image
        finished = output if self.finisher is None else self.finisher(index, frame, output)
        return FrameOutcome(
            state, finished, result.profile, self.latent_b if refreshed else None, kind
        )


def _frame_writer(work: WorkDirectory, outcome: FrameOutcome):
    """Host copies of a frame's results (one transfer), and the job that writes them.

    The files are written in this order, each atomically: the frame, B's latent
    features when refreshed, an anchor frame's state, the state (then the older
    anchors go). The state names the last finished frame,
    so whenever a run stops, every frame it names is on disk with what the next
    frame needs.
    """
    state, latent_b, output = outcome.state, outcome.latent_b, outcome.output
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
        if outcome.anchor:
            work.save_anchor(host_state)
        work.save_state(host_state)
        if outcome.anchor:
            work.drop_anchors_but(state.index)

    return write


def _output_frames(clip_path: Path, plan, first: int) -> Iterator:
    for index, frame in read_frames(clip_path, start=first, end=plan.end):
        yield index, resize(frame, *plan.output_shape)
