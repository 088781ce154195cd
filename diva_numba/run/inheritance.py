"""What a frame inherits from the one before it, moved into it (docs/DESIGN.md section 3).

The previous frame's fields ``phi_ab`` move along the backward optical flow (pixels
the flow marks occluded start from the coarser level), and each level's
deconvolution solution moves once from its anchor frame; B's latent features are
reused as they are. A state loaded from a work directory goes back to the run's
device first.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from diva_numba.gpu.device import Device, array_module, to_device
from diva_numba.image_analogy.deep_analogy import WarmStart
from diva_numba.kernels.nnf_resample import pull_field
from diva_numba.models import vgg
from diva_numba.run import anchors
from diva_numba.run.workdir import FrameState


def feature_levels(latent_b: dict) -> dict:
    """B's latent features (levels 1..4) without its pixels (level 0)."""
    return {level: value for level, value in latent_b.items() if level > 0}


def state_on_device(state: FrameState, device: Device) -> FrameState:
    """A loaded state with its fields and solutions on ``device`` (one upload each)."""
    return dataclasses.replace(
        state,
        fields_ab={lv: to_device(v, device) for lv, v in state.fields_ab.items()},
        deconv_ab={lv: to_device(v, device) for lv, v in state.deconv_ab.items()},
        output_field=None if state.output_field is None else to_device(state.output_field, device),
    )


def warm_start(state: FrameState, backward: np.ndarray, followed: dict, occluded: np.ndarray,
               plan, params, device: Device) -> WarmStart:  # fmt: skip
    """Seeds for frame t from frame t-1's state, on ``device``.

    The fields move along the backward flow (PatchMatch refines them every
    frame); each level's solution moves once from its anchor frame, along the
    flow of ``followed`` (:func:`diva_numba.run.anchors.follow`). The state's fields and
    solutions are on ``device``; the flows go up in one transfer and the
    occlusion mask in another, and every level is moved there.
    """
    warm_start = WarmStart(patchmatch_iterations=params.guided_patchmatch_iterations)
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
        warm_start.fields_ab[level] = seeded
        warm_start.fresh_ab[level] = xp.maximum(invalid, occluded_by_level[level])
    for slot, level in enumerate(levels, start=1):
        warm_start.deconv_ab[level] = anchors.move(state.deconv_ab[level], flows[slot])
    return warm_start
