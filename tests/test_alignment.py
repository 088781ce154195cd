"""The appearance alignment: colour models, the flow, which positions are kept, its scale."""

import cv2
import numpy as np
import pytest

from diva_numba import resolve_device
from diva_numba.synthesis import alignment
from diva_numba.synthesis.alignment import (
    AlignmentParams,
    align_positions,
    aligned_positions,
    alignment_scale,
    lightness_curve,
    local_affine,
)
from diva_numba.synthesis.pyramid import SynthesisParams, scale_sizes, synthesize

CPU = resolve_device("cpu")


def textured(rng, height, width, cell=8):
    """A random colour texture with structure at every scale down to ``cell`` px."""
    noise = rng.random((height // cell + 2, width // cell + 2, 3)).astype(np.float32)
    image = cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC)
    return np.clip(image * 255, 0, 255).astype(np.uint8)


def warped_copy(image, displacement):
    """``B'(q) = look(A)(q + v(q))``, another tone curve and palette; and ``v``'s inverse map."""
    height, width = image.shape[:2]
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    dy, dx = displacement(ys, xs)
    look = 255 * (image.astype(np.float32) / 255) ** 1.8
    look = np.clip(look[..., ::-1] * 0.8 + 30, 0, 255).astype(np.uint8)
    bp = cv2.remap(look, xs + dx, ys + dy, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    qy, qx = ys.copy(), xs.copy()
    for _ in range(30):  # q + v(q) = p, v smooth and small
        dy, dx = displacement(qy, qx)
        qy, qx = ys - dy, xs - dx
    return bp, np.stack([qy, qx], axis=-1)


def test_the_lightness_curve_recovers_a_monotone_map(rng):
    source = rng.uniform(0, 255, (60, 80)).astype(np.float32)
    target = 255 * (source / 255) ** 2 + rng.normal(0, 2, source.shape).astype(np.float32)
    mapped = lightness_curve(source, target)
    assert mapped.dtype == np.float32 and mapped.shape == source.shape
    assert np.median(np.abs(mapped - 255 * (source / 255) ** 2)) < 3


def test_the_lightness_curve_of_a_flat_image_is_the_median():
    source = np.full((8, 8), 40, np.float32)
    target = np.arange(64, dtype=np.float32).reshape(8, 8)
    np.testing.assert_array_equal(lightness_curve(source, target), np.median(target))


def test_the_local_model_reproduces_an_affine_map(rng):
    source = (rng.random((40, 50)) * 200).astype(np.float32)
    np.testing.assert_allclose(local_affine(source, 0.5 * source + 40, 4), 0.5 * source + 40,
                               rtol=0, atol=1.5)  # fmt: skip


def test_the_flow_corrects_a_biased_field_across_a_change_of_look(rng):
    """A smooth deformation, another tone curve and palette; the start 4 px off everywhere."""
    image = textured(rng, 96, 128)

    def displacement(qy, qx):
        return 3 + 2 * np.sin(2 * np.pi * qx / 128), -2 + 2 * np.cos(2 * np.pi * qy / 96)

    bp, truth = warped_copy(image, displacement)
    start = (truth + np.float32([4.0, -3.0])).astype(np.float32)
    params = AlignmentParams()
    result = align_positions(image, bp, start, rounds=params.rounds,
                             smoothness=params.smoothness, window=params.window,
                             spread=params.spread)  # fmt: skip
    assert result.dtype == np.float32 and result.shape == start.shape
    inner = (slice(8, -8), slice(8, -8))
    error = np.hypot(*(result - truth).transpose(2, 0, 1))[inner]
    assert np.median(error) < 1.0 and (error < 2).mean() > 0.9


def test_a_differently_sized_exemplar_is_aligned_in_its_own_coordinates(rng):
    """B' at 1.5x A's size: positions come back in B''s pixels."""
    image = textured(rng, 96, 128)
    bp, truth = warped_copy(image, lambda qy, qx: (2 + 0 * qy, 3 + 0 * qx))
    big = cv2.resize(bp, (192, 144), interpolation=cv2.INTER_CUBIC)
    truth_big = (truth + 0.5) * 1.5 - 0.5
    result = align_positions(image, big, truth_big + np.float32(3), rounds=2,
                             smoothness=60.0, window=16)  # fmt: skip
    error = np.hypot(*(result - truth_big).transpose(2, 0, 1))[8:-8, 8:-8]
    assert np.median(error) < 0.75


def test_only_shifts_between_min_shift_and_reach_inside_the_exemplar_are_kept(monkeypatch):
    """Per pixel: below ``min_shift`` and beyond ``reach`` (working px) the match stays."""
    shape = (4, 6)
    positions = np.stack(np.indices(shape), axis=-1).astype(np.float32) + 10
    shifts = np.zeros(shape, np.float32)
    shifts[0] = [0.5, 1.9, 2.1, 8.0, 16.0, 16.1]  # in scale px, two scale px per working px
    shifts[1, :] = 12.0
    flow = positions + np.stack([shifts, 0 * shifts], axis=-1)
    flow[1, 0] = [-2.0, 10.0]  # outside B': would be clamped into it
    monkeypatch.setattr(alignment, "align_positions", lambda *args, **kwargs: flow)
    exemplar = np.zeros((40, 40, 3), np.uint8)
    result, accepted = aligned_positions(np.zeros((*shape, 3), np.uint8), exemplar, positions,
                                         work_scale=2.0, params=AlignmentParams())  # fmt: skip
    np.testing.assert_array_equal(accepted[0], [False, False, True, True, True, False])
    assert not accepted[1, 0] and accepted[1, 1:].all() and not accepted[2:].any()
    np.testing.assert_array_equal(result[accepted], flow[accepted])
    np.testing.assert_array_equal(result[~accepted], positions[~accepted])


def test_the_alignment_runs_at_the_largest_scale_below_fine_from():
    params = AlignmentParams()
    sizes = scale_sizes((144, 256), (1080, 1920))
    assert alignment_scale(sizes, sizes, fine_from=3.0, params=params) == 1
    sizes = scale_sizes((75, 112), (150, 225))
    assert alignment_scale(sizes, sizes, fine_from=3.0, params=params) == len(sizes) - 1
    assert alignment_scale(sizes, sizes, fine_from=3.0, params=AlignmentParams(rounds=0)) is None
    tiny = [(12, 20), (15, 40)]
    assert alignment_scale(tiny, tiny, fine_from=3.0, params=params) is None


def test_tiny_images_synthesise_without_the_alignment(rng):
    """Scales under 16 px a side are left alone (OpenCV's DIS crashes on some)."""
    image = textured(rng, 12, 40)
    field = np.stack(np.indices((6, 20)), axis=-1).astype(np.int32)
    result = synthesize(image, image, field, image[::2, ::2], exemplar_work_shape=(6, 20),
                        device=CPU)  # fmt: skip
    assert result.image.shape == image.shape


@pytest.mark.parametrize(
    "changes",
    [{"rounds": -1}, {"window": 0}, {"smoothness": 0.0}, {"spread": -1.0},
     {"min_shift": 3.0, "reach": 2.0}],
)  # fmt: skip
def test_parameters_are_checked(changes):
    with pytest.raises(ValueError):
        AlignmentParams(**changes)
    with pytest.raises(ValueError):
        SynthesisParams(alignment=AlignmentParams(**changes))
