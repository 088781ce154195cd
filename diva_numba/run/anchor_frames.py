"""Anchor frames: the deep analogy on a few frames of a shot, the others carried from them.

A video analogy drifts and washes the painting out when every frame inherits
from the one before it: each step rounds the carried field by up to a pixel
and its errors add up. As artists' tools do (EbSynth; Jamriska et al.,
*Stylizing Video by Example*, 2019), the deep analogy runs only on *anchor
frames*, and every other frame is made from its anchor as a painted keyframe
is (docs/DESIGN.md section 3):

* an anchor is a shot's first frame, a frame of which the last anchor reliably
  covers less than ``min_coverage``, or the frame ``max_spacing`` frames after
  the last anchor (:func:`needs_anchor`). It runs the seeded analogy warm-started
  from the previous anchor's state carried to it along the flow between the two
  (its fields, deconvolution solutions and output field), and its synthesis is
  guided by the previous anchor's output;
* every other frame carries its anchor's output *field* (into the style image)
  along a flow re-anchored on the anchor's own frame
  (:func:`diva_numba.finishing.keyframes.propagate`: the flow chained from the
  previous frame's, then refined by DIS directly against the anchor), never
  chained from frame to frame, and the synthesis copies the style image's
  pixels through it where the flow is reliable; it searches the style image,
  guided by the analogy's latent image, only where the anchor does not cover.
  Output pixels are always the style image's, never a resampled earlier output.

An anchor's state is the run's state for ``--resume``
(:meth:`diva_numba.run.workdir.WorkDirectory.save_anchor`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import cv2
import numpy as np

from diva_numba.finishing.keyframes import KeyframeParams, Propagation, propagate, step_flows
from diva_numba.gpu.device import array_module, to_device, to_host
from diva_numba.kernels.nnf_resample import pull_field
from diva_numba.models import vgg
from diva_numba.run.workdir import FrameState
from diva_numba.synthesis.pyramid import is_fine_scale
from diva_numba.synthesis.temporal_guide import TemporalGuide
from diva_numba.video.flow import occlusion_mask, refine_flow, warp_image


@dataclass(frozen=True)
class AnchorParams:
    """When a video analogy makes an anchor frame.

    Attributes
    ----------
    enabled : bool
        Run the deep analogy on anchor frames only and carry the others from
        them (the default); False seeds every frame from the one before. Seeded
        from frame to frame, a field moved by whole pixels drifts under motion
        that is not whole pixels a frame: on a pan by 0.7 x 2.3 px a frame over
        a photo whose frame 0 is the style, the mean Lab distance to the
        painting moved along the motion climbs 2.5 / 4.8 / 5.9 by third of 24
        frames; carried from the anchor it stays at 0.25 / 0.33 / 0.40 (all
        from a 192 px working size). The flicker was about seeding's (warping
        error: the bundled example 2.43 against 2.47 seeded, the input's 2.19;
        Big Buck Bunny 1.30 against 1.28, the input's 0.92; BENCHMARKS.md
        "Sub-pixel anchors at every size", before anchors took their own analogy
        where it differs from what was carried: :attr:`agreement`). Anchors need the
        run's temporal guide (``TransferParams.temporal_weight > 0``) and stand
        aside where painted keyframes are given.
    min_coverage : float
        A frame becomes an anchor when less than this share of its pixels is
        reliably covered (reliability at least ``covered_from``) by the last
        anchor.
    covered_from : float
        Reliability (flow consistency times colour agreement,
        :func:`diva_numba.finishing.keyframes.reliability`) from which a pixel
        counts as covered.
    max_spacing : int
        At most this many frames from one anchor to the next, however well the
        last one covers.
    hold : float or None
        None (the default) takes the anchor's match wherever it covers, and the
        synthesis samples the style image at it plus the fraction of a pixel its move
        rounded off (:func:`landing_offsets`; at any output size with
        ``refine_at_output``), so that the output moves with the content, not by whole
        pixels. A number makes a carried pixel keep the previous frame's match, moved
        one frame on, while that lies within half a pixel plus ``hold`` (per axis,
        output pixels) of where the anchor's lands, and copy whole pixels: an earlier
        answer to the same jitter, kept for comparison (measured while anchors after a
        shot's first still rounded their content to whole pixels: the bundled example's
        warping error 2.81 with 0.25, 2.81 with None, 2.97 with neither; a pan over a
        photo of fur, 0.7 x 2.3 px a frame: 5.64 with 0.25, 3.50 with None, the painting
        itself 3.30; BENCHMARKS.md "Anchors by default").
    refine_at_output : bool
        Refine the flow to the anchor at the output size
        (:func:`~diva_numba.video.flow.refine_flow`), so that carried matches
        move by their fractions of a pixel at any output size. The flow from
        the working size is not precise to a fraction of an output pixel:
        without the refinement an output three or more times the working size
        copies whole pixels (Big Buck Bunny at 1280 from 192: warping error 1.56
        without, 1.30 with), and a smaller one takes its fractions from the
        working-size flow (a whole-pixel pan at 200 x 120 from 96: up to 1.00
        Lab from the ideal without, 0.06 with). It costs 0.65 s a carried frame
        at 1080p on 2 CPU cores.
    agreement : float or None
        An anchor frame's synthesis starts from the earlier outputs' matches
        where they look as the anchor's own analogy does, within this many CIE
        Lab units (:func:`~diva_numba.run.anchor_agreement.look_difference` at
        the working size), and from its own analogy's elsewhere; it searches
        every pixel, the earlier outputs a guide of weight
        :attr:`temporal_weight` (:func:`~diva_numba.run.anchor_agreement.anchor_synthesis`).
        None starts from the earlier outputs' matches and keeps them wherever
        the flow is trusted, as on carried frames: a mistake of an early frame (a
        dark frame's analogy copying dark strokes onto a body that later comes
        into the light) is then carried to the end of the shot. 0 starts every
        anchor from its own analogy: where the earlier frames were right, that is
        a little further off (an oil pan whose frame 0 is its own painting: the
        last third 1.13 Lab from the ideal, 1.54 times the first's), and every
        anchor jumps (Big Buck Bunny 0-122: the pairs into an anchor 4.15 on
        average, up to 7.8 times the input's). With 5: the pan 0.80 (1.10 times),
        Big Buck Bunny's body clean, its anchors' pairs 2.38 (up to 3.7 times),
        the warping error 1.24 against 1.45 (the input's 1.08; BENCHMARKS.md "An
        anchor starts from what agrees with its own analogy").
    temporal_weight : float
        Weight of the earlier outputs as an anchor frame's guide (with an
        ``agreement``): larger jumps less at the anchor and mends less; 0 leaves
        them out, and the anchor starts from its own analogy everywhere.
    lbfgs_iterations : int
        L-BFGS iterations of each deconvolution an anchor frame solves (at least
        the seeded frames' ``guided_lbfgs_iterations``; none where those are 0),
        run to the end: anchors
        are few, and every frame carried from one copies its result. The example
        with an anchor every 8 frames: texture retention 0.949 with the CPU's 2,
        0.958 with 20 (its last quarter 0.911 -> 0.925), for 1 s more an anchor;
        re-solving every level as well 0.961, for 34 s more an anchor.
    """

    enabled: bool = True
    min_coverage: float = 0.85
    covered_from: float = 0.5
    max_spacing: int = 24
    hold: float | None = None
    refine_at_output: bool = True
    agreement: float | None = 5.0
    temporal_weight: float = 4.0
    lbfgs_iterations: int = 20

    def __post_init__(self):
        if not 0.0 <= self.min_coverage <= 1.0 or not 0.0 <= self.covered_from <= 1.0:
            raise ValueError("min_coverage and covered_from must be in [0, 1]")
        if self.max_spacing < 1:
            raise ValueError("max_spacing must be at least 1")
        if self.hold is not None and self.hold < 0:
            raise ValueError("hold must be at least 0, or None")
        if self.lbfgs_iterations < 0:
            raise ValueError("lbfgs_iterations must be at least 0")
        if self.agreement is not None and not 0.0 <= self.agreement < math.inf:
            raise ValueError("agreement must be a finite number >= 0, or None")
        if not 0.0 <= self.temporal_weight < math.inf:
            raise ValueError("temporal_weight must be a finite number >= 0")


def anchor_analogy(seeded, params):
    """An anchor frame's analogy parameters: the seeded frames' ``seeded``
    (:class:`~diva_numba.image_analogy.params.AnalogyParams`), with
    :attr:`AnchorParams.lbfgs_iterations` run to the end."""
    if seeded.lbfgs_iterations == 0:  # later frames asked not to deconvolve: nor do anchors
        return seeded
    iterations = max(seeded.lbfgs_iterations, params.anchors.lbfgs_iterations)
    return dataclasses.replace(seeded, lbfgs_iterations=iterations, lbfgs_min_decrease=0.0)


def covered_share(reliability: np.ndarray, params: AnchorParams) -> float:
    """Share of a frame's pixels its anchor covers reliably."""
    return float(np.mean(reliability >= params.covered_from))


def needs_anchor(index: int, anchor: int, coverage: float, params: AnchorParams) -> bool:
    """Whether frame ``index``, covered ``coverage`` by anchor frame ``anchor``, is an anchor.

    Shot starts are anchors too; the frame loop makes them cold starts.
    """
    return index - anchor >= params.max_spacing or coverage < params.min_coverage


def carry_anchor(anchor: FrameState, previous: FrameState, work_frame: np.ndarray, step,
                 params: KeyframeParams) -> Propagation:  # fmt: skip
    """The anchor frame carried into ``work_frame``, the frame after ``previous``.

    The flow to the anchor starts from the previous frame's, composed with the
    ``step`` between the two frames (flows to the previous frame and from it:
    :func:`~diva_numba.finishing.keyframes.step_flows`), and is refined directly
    against the anchor's frame, as a keyframe's propagation is.
    """
    if previous.index == anchor.index or previous.anchor_frame_flows is None:
        zero = np.zeros((*work_frame.shape[:2], 2), np.float32)
        before = Propagation(anchor.index, zero, zero, None)
    else:
        before = Propagation(anchor.index, *previous.anchor_frame_flows, None)
    return propagate(anchor.input_frame, anchor.index, work_frame, step, before, params)


def carried_work_field(anchor: FrameState, to_anchor: np.ndarray, style_work_shape, device):
    """The anchor's working-size field ``phi_ab`` moved into the frame (on ``device``).

    It starts the synthesis' working scale; where the anchor covers, the
    anchor's output field replaces it at every scale.
    """
    field, _ = pull_field(
        anchor.fields_ab[1],
        to_device(to_anchor, device),
        source_shape=vgg.level_shape(*style_work_shape, 1),
    )
    return field


def moved_guide(output: np.ndarray, output_field, flow: np.ndarray, reliability: np.ndarray,
                weight: float, exemplar_shape: tuple[int, int], *, with_offsets: bool = False,
                field_offsets=None, exemplar_step=None) -> TemporalGuide:  # fmt: skip
    """Guide (c) of the synthesis: an earlier output and its field moved into a frame.

    Parameters
    ----------
    output : uint8 array (H, W, 3)
        The earlier frame's output, at the output size.
    output_field : int32 array (H, W, 2) or None
        Its synthesis field into the exemplar at ``exemplar_shape`` (host or
        device); None carries no field.
    flow : float32 array (h, w, 2)
        ``(dx, dy)`` from the frame to the earlier one, at the working size
        (brought to the output size here) or at the output size.
    reliability : float32 array (h, w)
        In [0, 1], at the working size.
    weight : float
    exemplar_shape : (int, int)
    with_offsets : bool
        Also give the fractions of a pixel the field's move rounds off
        (:func:`landing_offsets`, :attr:`TemporalGuide.offsets`).
    field_offsets : float32 array (H, W, 2), optional
        The fractions of a pixel the earlier output was sampled off its field
        (:attr:`~diva_numba.synthesis.pyramid.Synthesis.offsets`); with
        ``with_offsets`` they move with their matches and add to the move's,
        whole pixels going into the field, so that a frame carried from an
        anchor that was itself sampled off whole pixels lands where the content
        does.
    exemplar_step : (float, float), optional
        Exemplar pixels per output pixel along a match, ``(y, x)``
        (:func:`exemplar_step`); the exemplar's size over the output's if not
        given.

    A working-size flow and the reliability are brought to the output size
    bilinearly. Where the flow is trusted the moved field seeds every scale of
    the synthesis (:mod:`diva_numba.synthesis.temporal_guide`).
    """
    height, width = output.shape[:2]
    moved = flow if flow.shape[:2] == (height, width) else output_flow(flow, (height, width))
    trusted = cv2.resize(reliability, (width, height), interpolation=cv2.INTER_LINEAR)
    field = None
    if output_field is not None:
        field, _ = pull_field(output_field, moved, source_shape=exemplar_shape)
    if exemplar_step is None:
        exemplar_step = (exemplar_shape[0] / height, exemplar_shape[1] / width)
    offsets = None
    if with_offsets:
        landings = _landings(moved)  # made once: the fractions and the anchor's both use it
        offsets = _fractions(landings, exemplar_step)
        if field is not None and field_offsets is not None:
            field, offsets = _whole_pixels_in_field(
                field, offsets + _gathered(field_offsets, landings), exemplar_shape
            )
    return TemporalGuide(warp_image(output, moved, interpolation="cubic"), trusted, weight, field,
                         offsets)  # fmt: skip


def output_flow(flow: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A working-size flow ``(dx, dy)`` at the output size ``(H, W)``: bilinear, scaled."""
    height, width = shape
    scale = np.array([width / flow.shape[1], height / flow.shape[0]], np.float32)
    return cv2.resize(flow, (width, height), interpolation=cv2.INTER_LINEAR) * scale


def exemplar_step(exemplar_shapes, work_shape, output_shape) -> tuple[float, float]:
    """Exemplar pixels per output pixel along a match, ``(y, x)``.

    ``exemplar_shapes`` is the exemplar's ``(full, working)`` size: the working
    field, made between the frame and the exemplar at their working sizes, is
    brought up to the output and to the full exemplar, so one output pixel is
    ``(full / working) * (working frame / output)`` exemplar pixels on each axis,
    whatever the two images' aspect ratios.
    """
    full, working = exemplar_shapes
    return tuple(f / w * v / o for f, w, v, o in zip(full, working, work_shape, output_shape,
                                                     strict=True))  # fmt: skip


def landing_offsets(moved: np.ndarray, step: tuple[float, float]) -> np.ndarray:
    """Where each pixel's flow lands, from the pixel :func:`pull_field` rounds it to.

    ``moved`` is an output-size flow ``(dx, dy)``; the result, float32 ``(H, W, 2)``
    in ``(y, x)`` order and in exemplar pixels (``step`` of them per output pixel,
    :func:`exemplar_step`), is the fraction of a pixel a field moved along it loses
    (within half a pixel).
    """
    return _fractions(_landings(moved), step)


def _landings(moved: np.ndarray):
    """Where each pixel lands along ``moved``, ``(rows, columns)`` in float64, as
    :func:`pull_field` computes them (a non-finite vector keeps the pixel in place)."""
    height, width = moved.shape[:2]
    flow = np.where(np.isfinite(moved).all(axis=-1, keepdims=True), moved, 0).astype(np.float64)
    rows = flow[..., 1] + np.arange(height, dtype=np.float64)[:, None]
    columns = flow[..., 0] + np.arange(width, dtype=np.float64)
    return rows, columns


def _fractions(landings, step) -> np.ndarray:
    """float32 (H, W, 2): the fractions of a pixel the :func:`_landings` lose to rounding,
    ``(y, x)``, in exemplar pixels (``step`` per output pixel)."""
    rows, columns = landings
    offsets = np.stack([rows - np.floor(rows + 0.5), columns - np.floor(columns + 0.5)], -1)
    return (offsets * np.asarray(step)).astype(np.float32)


def _gathered(offsets: np.ndarray, landings) -> np.ndarray:
    """``offsets`` (H, W, 2) taken at the pixels the :func:`_landings` round to (clamped)."""
    height, width = offsets.shape[:2]
    rows, columns = (np.floor(v + 0.5) for v in landings)
    rows = np.clip(rows, 0, height - 1).astype(np.intp)
    columns = np.clip(columns, 0, width - 1).astype(np.intp)
    return offsets[rows, columns]


def _whole_pixels_in_field(field, offsets: np.ndarray, exemplar_shape):
    """``field`` and ``offsets`` with the offsets' whole pixels moved into the field, so
    that every offset is within half a pixel; a match clamped into the exemplar keeps
    what the clamp did not move."""
    whole = np.floor(offsets + np.float32(0.5)).astype(np.int32)
    if not whole.any():
        return field, offsets
    xp = array_module(field)
    moved = xp.clip(field + xp.asarray(whole), 0, xp.asarray(np.array(exemplar_shape) - 1))
    moved = moved.astype(xp.int32)
    applied = to_host(moved - field).astype(np.float32)
    return moved, (offsets - applied).astype(np.float32)


def joined(anchor: TemporalGuide, previous: TemporalGuide | None, device, *,
           band=None) -> TemporalGuide:  # fmt: skip
    """One guide: the anchor's output where it covers the frame, the previous frame's elsewhere.

    Where the anchor covers (its reliability at least 1/2 at the output size) the
    anchor's output and field, moved along the flow re-anchored on it, guide and
    seed the synthesis: nothing drifts there. Elsewhere (content the anchor
    does not show: disocclusions, new content) the previous frame's output,
    moved one frame along the step flow, keeps the synthesis from searching
    afresh, and flickering, on every frame. Without a previous guide (or either
    field) the anchor's stands alone. The fields go to ``device``.

    The anchor's ``offsets`` (the fractions of a pixel its matches landed off, with the
    anchor's own: :func:`moved_guide`) go with its matches (0 elsewhere): the synthesis
    samples the style image at each kept match plus its offset. With ``band``
    (``(y, x)``, exemplar pixels), which needs them, a covered pixel the previous frame's
    guide trusts keeps the previous frame's match where that is within ``band`` of the
    anchor's match plus its offset (:attr:`AnchorParams.hold`).
    """
    if previous is None or previous.field is None or anchor.field is None:
        return anchor
    offsets = anchor.offsets
    own = anchor.reliability >= 0.5
    own_map = to_device(own, device)
    xp = array_module(own_map)
    anchor_field = to_device(anchor.field, device)
    previous_field = to_device(previous.field, device)
    if band is not None:
        apart = (previous_field - anchor_field).astype(xp.float32)
        apart -= to_device(offsets, device)
        apart = xp.abs(apart, out=apart)
        near = (apart[..., 0] <= band[0]) & (apart[..., 1] <= band[1])
        held = near & to_device(previous.reliability >= 0.5, device)
        own_map &= ~held
        own = to_host(own_map)
    field = xp.where(own_map[..., None], anchor_field, previous_field)
    return TemporalGuide(
        np.where(own[..., None], anchor.previous, previous.previous),
        np.where(own, anchor.reliability, previous.reliability).astype(np.float32),
        anchor.weight,
        field,
        None if offsets is None else np.where(own[..., None], offsets, np.float32(0)),
    )


def step_guide(state: FrameState, backward: np.ndarray, occluded: np.ndarray, params,
               exemplar_shape) -> TemporalGuide | None:  # fmt: skip
    """Guide (c) of the synthesis: the previous output and its field moved one frame on.

    ``backward`` is the flow from this frame to the previous one, ``occluded``
    its untrusted pixels (uint8), both at the working size; None when
    ``params.temporal_weight`` is 0.
    """
    if params.temporal_weight == 0:
        return None
    return moved_guide(
        state.output_frame, state.output_field, backward, 1.0 - occluded.astype(np.float32),
        params.temporal_weight, exemplar_shape,
    )  # fmt: skip


def refines_at_output(output_shape, work_shape, params) -> bool:
    """Whether frames carried from an anchor refine the flow to it at the output size
    (not when the working size is the output's: that flow is made there)."""
    return params.anchors.refine_at_output and tuple(output_shape) != tuple(work_shape)


def grey_for_refinement(frame: np.ndarray, work_frame: np.ndarray, params) -> np.ndarray | None:
    """An anchor's ``FrameState.input_grey``: ``frame`` (output size) in grey where frames
    carried from it refine their flow to it at the output size, else None."""
    if not refines_at_output(frame.shape[:2], work_frame.shape[:2], params):
        return None
    return cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)


def follow_anchor(anchor: FrameState, previous: FrameState, frame: np.ndarray,
                  work_frame: np.ndarray, params, plan, device, profile):  # fmt: skip
    """The anchor carried into the frame after ``previous``, and the frame's synthesis guide.

    ``frame`` is the frame at the output size, ``work_frame`` at the working size;
    ``plan`` (:class:`~diva_numba.run.planning.TransferPlan`) gives the exemplar's sizes.

    Returns
    -------
    carried : Propagation
        The flows to and from the anchor and their reliability (working size).
    covered : float32 array (h, w)
        1 where the anchor covers the frame (reliability at least
        ``params.anchors.covered_from``), else 0.
    temporal : TemporalGuide
        :func:`joined` of the anchor's output moved in and the previous frame's.
    """
    with profile.stage("flow"):
        backward, forward = step_flows(work_frame, previous.input_frame, params.flow_preset)
        carried = carry_anchor(anchor, previous, work_frame, (backward, forward), params.keyframes)
        covered = (carried.reliability >= params.anchors.covered_from).astype(np.float32)
    with profile.stage("synthesis"):
        shape, work_shape = anchor.output_frame.shape[:2], work_frame.shape[:2]
        exemplar_shape = plan.style_full.shape[:2]
        step = exemplar_step((exemplar_shape, plan.style.shape[:2]), work_shape, shape)
        band, hold = None, params.anchors.hold
        if hold is not None:
            band = (0.5 + hold) * np.asarray(step)
        # The synthesis samples the fractions of a pixel only where the flow is precise
        # to them: at a coarse last scale, or refined at the output size.
        to_anchor = carried.to_key
        precise = not is_fine_scale(shape, work_shape, params.synthesis.fine_from)
        if anchor.input_grey is not None and refines_at_output(shape, work_shape, params):
            to_anchor = refine_flow(frame, anchor.input_grey, output_flow(to_anchor, shape))
            precise = True
        temporal = joined(
            moved_guide(anchor.output_frame, anchor.output_field, to_anchor, covered,
                        params.temporal_weight, exemplar_shape,
                        with_offsets=band is not None or precise,
                        field_offsets=anchor.output_offsets, exemplar_step=step),
            step_guide(previous, backward, occlusion_mask(forward, backward), params,
                       exemplar_shape),
            device, band=band,
        )  # fmt: skip
    if not precise and temporal.offsets is not None:
        temporal = dataclasses.replace(temporal, offsets=None)  # the hold's only
    return carried, covered, temporal


__all__ = [
    "follow_anchor",
    "step_guide",
    "joined",
    "landing_offsets",
    "exemplar_step",
    "anchor_analogy",
    "output_flow",
    "refines_at_output",
    "grey_for_refinement",
    "AnchorParams",
    "carried_work_field",
    "carry_anchor",
    "covered_share",
    "moved_guide",
    "needs_anchor",
]
