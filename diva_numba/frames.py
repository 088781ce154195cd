"""The frame loop of a video run: frame 0 a full analogy, later frames seeded from the last.

Every later frame inherits from the one before it (docs/DESIGN.md section 3):

* the fields ``phi_ab`` of every level, moved along the backward optical flow;
  pixels the flow marks occluded start from the coarser level instead;
* fewer PatchMatch rounds, and A''s deconvolutions warm-started from the
  previous solutions, moved the same way;
* B's latent features (the style image with the clip's look), which change
  slowly, are reused, and the style image's VGG features are computed once;
* at the pixels, the output is pulled towards the previous output warped into
  this frame wherever the flow is reliable (``temporal_weight``).

State is saved in the :class:`~diva_numba.workdir.WorkDirectory` after every
frame, so a run continues where it stopped.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diva_numba.deep_analogy import AnalogyModel, FrameGuide, analogy
from diva_numba.device import to_device, to_host
from diva_numba.flow import flow_pair, occlusion_mask, warp_image
from diva_numba.imageio import resize, save_image
from diva_numba.kernels.nnf_resample import pull_field
from diva_numba.models import vgg
from diva_numba.video import read_frames
from diva_numba.workdir import FrameState, WorkDirectory


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
        The frame at the working size and its stylised output.
    profile : Profile
        Time per stage and level of this frame's analogy.
    """

    index: int
    done: int
    total: int
    seconds: float
    input_frame: np.ndarray
    output_frame: np.ndarray
    profile: object


def stylise_frames(
    model: AnalogyModel,
    plan,
    clip_path: Path,
    work: WorkDirectory,
    params,
    *,
    on_frame: Callable[[FrameReport], None] | None = None,
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
                FrameReport(
                    index,
                    index + 1 - plan.start,
                    plan.end - plan.start,
                    time.perf_counter() - started,
                    frame,
                    output,
                    result.profile,
                )
            )


def _working_frames(clip_path: Path, plan, first: int) -> Iterator:
    for index, frame in read_frames(clip_path, start=first, end=plan.end):
        yield index, resize(frame, plan.height, plan.width)


def _guide(
    state: FrameState, backward: np.ndarray, occluded: np.ndarray, plan, params
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
