"""The budget of seeded frames: small decreases stop, still frames skip, cuts restart."""

import dataclasses
from fractions import Fraction

import cv2
import numpy as np
import pytest
from clips import pan_frames, write_clip
from inputs import random_quadratic
from skimage import data

import diva_numba.run.frame_loop as frame_loop
from diva_numba import AnalogyParams, TransferParams, transfer_video
from diva_numba.network.subnetwork import SubNetwork
from diva_numba.optim.lbfgs import SMALL_DECREASE, LBFGSParams, minimize_lbfgs
from diva_numba.run import anchors
from diva_numba.run.anchor_frames import AnchorParams
from diva_numba.video.shots import shot_distance

PARAMS = TransferParams.for_device(
    "cpu", work_size=64,
    analogy=AnalogyParams.for_device("cpu", lbfgs_iterations=3, patchmatch_iterations=2),
    guided_lbfgs_iterations=3, guided_patchmatch_iterations=1,
    # The budget of frames seeded from the one before, which anchor frames would carry.
    anchors=AnchorParams(enabled=False),
)  # fmt: skip


def test_lbfgs_stops_once_an_iteration_gains_little(rng):
    fun_and_grad, _ = random_quadratic(rng, 40)
    x0 = rng.standard_normal(40).astype(np.float64)
    full = minimize_lbfgs(fun_and_grad, x0, params=LBFGSParams(max_iterations=30))
    early = minimize_lbfgs(
        fun_and_grad, x0, params=LBFGSParams(max_iterations=30, min_relative_decrease=0.05)
    )
    assert early.reason == SMALL_DECREASE and early.iterations < full.iterations
    gains = -np.diff(early.losses)
    assert gains[-1] < 0.05 * early.losses[0] <= gains[:-1].min()
    with pytest.raises(ValueError):
        LBFGSParams(min_relative_decrease=1.0)


def test_shot_cuts_are_told_from_motion():
    pan = pan_frames(6, width=96, height=64, step=(6, 3))
    other = cv2.resize(data.coffee(), (96, 64), interpolation=cv2.INTER_AREA)
    assert not any(
        PARAMS.cuts.is_cut(shot_distance(a, b)) for a, b in zip(pan, pan[1:], strict=False)
    )
    assert PARAMS.cuts.is_cut(shot_distance(pan[-1], other))


def run_counting(tmp_path, frames, tiny_model, monkeypatch, params=PARAMS, solved_levels=None):
    """Run a clip; per frame the L-BFGS evaluations and whether it was seeded.

    ``solved_levels`` (the last list given) collects, per frame, the levels whose
    objective was evaluated.
    """
    tmp_path.mkdir(exist_ok=True)
    write_clip(tmp_path / "clip.mp4", np.stack(frames), fps=Fraction(24), crf=4)
    cv2.imwrite(str(tmp_path / "style.png"), cv2.applyColorMap(frames[0][:, :, 1], 2))
    evaluations, seeded = [], []
    solved_levels = [] if solved_levels is None else solved_levels
    real_loss, real_analogy = SubNetwork.loss_and_gradient, frame_loop.analogy

    def loss_and_gradient(self, x, target, **options):
        evaluations[-1] += 1
        solved_levels[-1].add(self.end_level)
        return real_loss(self, x, target, **options)

    def analogy(*args, warm_start=None, **kwargs):
        evaluations.append(0)
        solved_levels.append(set())
        seeded.append(warm_start is not None)
        return real_analogy(*args, warm_start=warm_start, **kwargs)

    monkeypatch.setattr(SubNetwork, "loss_and_gradient", loss_and_gradient)
    monkeypatch.setattr(frame_loop, "analogy", analogy)
    transfer_video(tmp_path / "style.png", tmp_path / "clip.mp4", tmp_path / "out.mp4", params,
                   device="cpu", model=tiny_model)  # fmt: skip
    return evaluations, seeded


def test_a_still_frame_costs_no_deconvolution(tmp_path, tiny_model, monkeypatch):
    still = pan_frames(1, width=64, height=48)[0]
    evaluations, seeded = run_counting(tmp_path, [still] * 3, tiny_model, monkeypatch)
    assert seeded == [False, True, True]
    assert evaluations[0] > 0 and evaluations[1:] == [0, 0]


def test_a_cut_starts_a_full_analogy(tmp_path, tiny_model, monkeypatch):
    pan = list(pan_frames(3, width=64, height=48))
    other = cv2.resize(data.coffee(), (64, 48), interpolation=cv2.INTER_AREA)
    evaluations, seeded = run_counting(tmp_path, [*pan, other, other], tiny_model, monkeypatch)
    assert seeded == [False, True, True, False, True]
    # The cut frame deconvolves both latent images afresh, as frame 0 does.
    assert evaluations[3] >= evaluations[0] - 2 and evaluations[3] > evaluations[1]


def test_only_frames_with_new_content_deconvolve(tmp_path, tiny_model, monkeypatch):
    """A slow pan shows little new: its frames keep the moved solutions; asked to, they solve."""
    pan = list(pan_frames(3, width=64, height=48, step=(1, 0)))
    evaluations, _ = run_counting(tmp_path / "a", pan, tiny_model, monkeypatch)
    assert evaluations[1:] == [0, 0]
    eager = dataclasses.replace(PARAMS, new_content_share=0.0)
    evaluations, _ = run_counting(tmp_path / "b", pan, tiny_model, monkeypatch, eager)
    assert min(evaluations[1:]) > 0


def test_new_content_piles_up_until_the_solutions_are_solved_again(
    tmp_path, tiny_model, monkeypatch
):
    """A slow pan shows a row more each frame (6-7 % occluded, under the threshold): the
    share new to the anchor grows until it crosses ``new_content_share``; that frame
    deconvolves and becomes the anchor."""
    pan = list(pan_frames(9, width=64, height=48, step=(1, 0)))
    params = dataclasses.replace(PARAMS, new_content_share=0.1)
    levels = []
    evaluations, _ = run_counting(tmp_path, pan, tiny_model, monkeypatch, params, levels)
    solved = [index for index, count in enumerate(evaluations) if count > 0]
    assert solved[0] == 0 and len(solved) >= 2, evaluations
    # Not every frame: the anchor's new share restarts from nothing after each solve.
    assert all(later - earlier >= 2 for earlier, later in zip(solved, solved[1:], strict=False)), (
        evaluations
    )
    # Levels 5 and 4 wait for most of the frame to be new (deep_content_share).
    assert levels[0] == {2, 3, 4, 5} and set().union(*levels[1:]) == {2, 3}


def test_solutions_move_once_from_their_anchor():
    """A sub-cell motion moved frame by frame rounds away; composed, it adds up."""
    height, width = 16, 24
    solution = np.arange(height * width, dtype=np.float32).reshape(1, height, width)
    step = np.zeros((height, width, 2), np.float32)
    step[..., 0] = -0.4  # content moves right by 0.4 px a frame
    still = np.zeros((height, width), np.uint8)
    anchor, stepwise = None, solution
    for _ in range(5):
        anchor = anchors.follow(anchor, step, still)
        stepwise = anchors.move(stepwise, step)
    flow, new = anchor
    np.testing.assert_allclose(flow[..., 0], -2.0, atol=1e-5)
    np.testing.assert_array_equal(stepwise, solution)  # round(0.4) = 0, five times over
    np.testing.assert_array_equal(anchors.move(solution, flow)[0, :, 2:], solution[0, :, :-2])
    # The left columns came into the picture since the anchor.
    assert new[:, :2].all() and not new[:, 3:].any()


def test_a_map_solved_in_boxes_carries_the_rest_without_rounding_error():
    """Re-anchored every frame with a box solved, a 0.4 px a frame pan still adds up outside
    the box: the rounding error of each move becomes the next anchor's flow."""
    height, width = 16, 24
    solution = np.arange(height * width, dtype=np.float32).reshape(1, height, width)
    step = np.zeros((height, width, 2), np.float32)
    step[..., 0] = -0.4
    still = np.zeros((height, width), np.uint8)
    anchor, current = None, solution
    for _ in range(5):
        flow, _ = anchors.follow(anchor, step, still)
        current = anchors.move(current, flow)
        anchor = anchors.reanchor(flow, (height, width), [(0, 4, 0, 4)])  # a box solved
        assert not anchor[1].any()
    # Outside the box and the columns come in: the content moved 2 px in all.
    np.testing.assert_array_equal(current[0, 4:, 2:], solution[0, 4:, :-2])
