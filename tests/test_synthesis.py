"""The full-resolution synthesis: scale schedule, exact copies, guides, the real model's fields."""

import dataclasses

import cv2
import numpy as np
import pytest
from skimage import data

from diva_numba import resolve_device
from diva_numba.bench.truth import deformed_pair, field_error, identity_error
from diva_numba.images import resize
from diva_numba.kernels.nnf_resample import upsample_field
from diva_numba.synthesis.alignment import AlignmentParams
from diva_numba.synthesis.pyramid import SynthesisParams, TemporalGuide, scale_sizes, synthesize
from diva_numba.video.texture import mean_gradient

CPU = resolve_device("cpu")


def textured(rng, height, width):
    """A random colour texture, distinctive at every pixel."""
    noise = rng.random((height // 2 + 2, width // 2 + 2, 3)).astype(np.float32)
    image = cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC)
    return np.clip(image * 255, 0, 255).astype(np.uint8)


def identity(shape):
    ys, xs = np.indices(shape)
    return np.stack([ys, xs], axis=-1).astype(np.int32)


@pytest.mark.parametrize(
    ("work", "output"),
    [
        ((108, 192), (180, 320)),
        ((144, 256), (1080, 1920)),
        ((90, 160), (90, 160)),
        ((200, 300), (100, 150)),
    ],  # fmt: skip
)
def test_scales_climb_in_steps_of_at_most_two(work, output):
    sizes = scale_sizes(work, output)
    assert sizes[0] == work and sizes[-1] == output
    for small, large in zip(sizes, sizes[1:], strict=False):
        assert max(large[0] / small[0], large[1] / small[1]) <= 2.0 + 1e-9
    assert len(sizes) == (1 if work == output else max(2, len(sizes)))


def test_an_exact_match_is_copied_pixel_for_pixel(rng):
    """A' of B' = A, seeded with the identity: every output pixel is B''s own."""
    image = textured(rng, 48, 80)
    work = resize(image, 24, 40)
    result = synthesize(image, image, identity((24, 40)), work, exemplar_work_shape=(24, 40),
                        device=CPU)  # fmt: skip
    np.testing.assert_array_equal(result.field, identity((48, 80)))
    np.testing.assert_array_equal(result.image, image)


def test_a_shifted_exemplar_is_matched_to_the_pixel(rng):
    """B' is A moved by (3, 5) px; a working-size field 1-2 px off becomes nearly exact."""
    big = textured(rng, 72, 112)
    a, bp = big[:64, :96], big[3:67, 5:101]
    ys, xs = np.indices((64, 96))
    truth = np.stack([ys - 3, xs - 5], axis=-1)
    coarse = np.clip(np.stack([(ys[::2, ::2] - 3) // 2 + 1, (xs[::2, ::2] - 5) // 2], -1), 0, None)
    result = synthesize(a, bp, coarse.astype(np.int32), resize(bp, 32, 48),
                        exemplar_work_shape=(32, 48), device=CPU)  # fmt: skip
    inside = (ys >= 6) & (ys < 58) & (xs >= 8) & (xs < 88)
    error = np.abs(result.field - truth).max(axis=-1)[inside]
    assert (error == 0).mean() > 0.8 and (error <= 1).mean() > 0.97
    # Where a pixel and its neighbours match exactly, the vote copies B''s pixel unchanged.
    copied = (result.image == a).all(axis=-1)[inside]
    assert copied.mean() > 0.3


def test_every_output_pixel_is_the_exemplars_pixel_its_field_names(rng):
    """No averaging of the painting's pixels into each other (the default last vote).

    A and B' are unrelated textures, so neighbouring matches disagree everywhere:
    a patch vote would average the pixels they point to into a wash.
    """
    a, bp = textured(rng, 48, 80), textured(rng, 48, 80)
    start = identity((24, 40))[::-1].copy()  # any working field
    result = synthesize(a, bp, start, resize(bp, 24, 40), exemplar_work_shape=(24, 40),
                        device=CPU)  # fmt: skip
    ys, xs = result.field[..., 0], result.field[..., 1]
    np.testing.assert_array_equal(result.image, bp[ys, xs])
    averaged = synthesize(a, bp, start, resize(bp, 24, 40), exemplar_work_shape=(24, 40),
                          device=CPU, params=SynthesisParams(vote_patch_size=None))  # fmt: skip
    assert mean_gradient(result.image) > 1.2 * mean_gradient(averaged.image)


def test_the_temporal_guide_steers_ambiguous_pixels(rng):
    """Where structure cannot decide (a flat frame), the previous output does."""
    exemplar = textured(rng, 40, 64)
    flat = np.full((40, 64, 3), 128, np.uint8)
    previous = np.ascontiguousarray(exemplar[:, ::-1])  # a unique arrangement of B''s pixels
    guide = TemporalGuide(previous, np.ones((40, 64), np.float32), weight=4.0)
    # The patch vote: this is about where the search goes, and the mean of a pixel's
    # patches forgives the odd pixel the search leaves (the pixel vote: 0.56, not 0.5).
    params = SynthesisParams(iterations=6, search_radius=32, jumps=(8, 4, 2, 1), prior_weight=0,
                             vote_patch_size=None)  # fmt: skip
    guided = synthesize(flat, exemplar, identity((40, 64)), None, exemplar_work_shape=(40, 64),
                        device=CPU, params=params, temporal=guide)  # fmt: skip
    plain = synthesize(flat, exemplar, identity((40, 64)), None, exemplar_work_shape=(40, 64),
                       device=CPU, params=params)  # fmt: skip

    def distance(image):
        return np.abs(image.astype(int) - previous.astype(int)).mean()

    assert distance(guided.image) < 0.5 * distance(plain.image)


@pytest.mark.parametrize("coarse_search", ["unreliable", "everywhere"])
def test_a_video_frame_keeps_the_matches_its_flow_vouches_for(rng, coarse_search):
    """The previous field, carried along a trusted flow, stands; only the rest is searched."""
    exemplar = textured(rng, 96, 128)
    frame = textured(rng, 96, 128)
    previous_field = np.clip(identity((96, 128)) + rng.integers(-2, 3, (96, 128, 2)), 0, 95)
    previous_field = np.minimum(previous_field, [95, 127]).astype(np.int32)
    reliability = np.ones((96, 128), np.float32)
    reliability[40:60, 50:80] = 0
    guide = TemporalGuide(frame, reliability, weight=1.0, field=previous_field)
    params = SynthesisParams(coarse_search=coarse_search)

    result = synthesize(frame, exemplar, identity((24, 32)), resize(exemplar, 24, 32),
                        exemplar_work_shape=(24, 32), device=CPU, params=params,
                        temporal=guide)  # fmt: skip

    assert len(result.scales) == 3
    vouched = np.ones((96, 128), bool)
    vouched[40 - 3 : 60 + 3, 50 - 3 : 80 + 3] = False  # the occlusion grown by a patch
    np.testing.assert_array_equal(result.field[vouched], previous_field[vouched])
    assert (result.field[40:60, 50:80] != previous_field[40:60, 50:80]).any(axis=-1).mean() > 0.5


def test_a_carried_match_moves_by_its_fraction_of_a_pixel(rng):
    """Where the last scale keeps a carried match, the output samples the style image at
    the match plus the fraction of a pixel the move rounded off; elsewhere it copies."""
    ramp = np.repeat((4 * np.arange(48, dtype=np.uint8))[None, :, None], 3, axis=2)
    exemplar = np.ascontiguousarray(np.repeat(ramp, 24, axis=0))
    field = identity((24, 48)).astype(np.int32)
    offsets = np.zeros((24, 48, 2), np.float32)
    offsets[..., 1] = 0.5
    reliability = np.ones((24, 48), np.float32)
    reliability[:, :8] = 0  # not trusted: copied whatever the offset
    guide = TemporalGuide(exemplar, reliability, weight=1.0, field=field, offsets=offsets)

    def made(temporal):
        return synthesize(exemplar, exemplar, field, None, exemplar_work_shape=(24, 48),
                          device=CPU, params=SynthesisParams(iterations=0),
                          temporal=temporal)  # fmt: skip

    moved = made(guide)
    # Bicubic on a ramp is exact: half a pixel on is 2 levels up.
    np.testing.assert_array_equal(moved.image[:, 8:-2, 0], exemplar[:, 8:-2, 0] + 2)
    np.testing.assert_array_equal(moved.image[:, :8], exemplar[:, :8])
    np.testing.assert_array_equal(moved.field, field)  # the state keeps whole pixels
    np.testing.assert_array_equal(made(dataclasses.replace(guide, offsets=None)).image, exemplar)


def test_parameters_are_checked():
    with pytest.raises(ValueError):
        SynthesisParams(stroke_weight=-1)
    with pytest.raises(ValueError):
        SynthesisParams(max_step=1.0)
    with pytest.raises(ValueError, match="coarse_search"):
        SynthesisParams(coarse_search="sometimes")


# -- the real model ----------------------------------------------------------------------


def painted_copy_fields(model_path, photo, work):
    """The fields at ``photo``'s size against a painted, deformed copy: nearest, unaligned, default.

    Returns the pair and the field errors (median px, share within 3 px) of the
    identity, the working-size field upsampled nearest, the synthesis without
    the appearance alignment and the default synthesis.
    """
    from diva_numba import AnalogyModel, AnalogyParams, analogy

    pair = deformed_pair(photo)
    a, bp = resize(pair.a, *work), resize(pair.bp, *work)
    result = analogy(AnalogyModel(model_path, CPU), a, bp, params=AnalogyParams(lbfgs_iterations=3))
    nearest = upsample_field(result.nnf_ab, target_shape=photo.shape[:2],
                             source_shape=photo.shape[:2])  # fmt: skip
    options = {"exemplar_work_shape": work, "device": CPU}
    unaligned = synthesize(pair.a, pair.bp, result.nnf_ab, result.b, **options,
                           params=SynthesisParams(alignment=AlignmentParams(rounds=0)))  # fmt: skip
    synthesis = synthesize(pair.a, pair.bp, result.nnf_ab, result.b, **options)
    assert synthesis.image.shape == pair.a.shape
    errors = {
        "identity": identity_error(pair),
        "nearest": field_error(nearest, pair),
        "unaligned": field_error(unaligned.field, pair),
        "synthesis": field_error(synthesis.field, pair),
    }
    print("; ".join(f"{name} {m:.2f} px {share:.0%}" for name, (m, share) in errors.items()))
    return errors


@pytest.mark.model
@pytest.mark.slow
def test_fields_at_full_resolution_on_a_painted_deformed_copy(model_path):
    """A photo against a painted, smoothly deformed copy: the field at the photo's own size.

    Measured (docs/DESIGN.md section 10), 225 x 150 photo, working size 112:
    identity 6.96 px median (12% within 3 px); the working-size field upsampled
    nearest 4.96 px (25%); the synthesis without the appearance alignment 4.82
    px (27%), with it 2.80 px (55%). At this size the flow has less texture to
    go by than at the photo's own 451 x 300 (next test).
    """
    photo = cv2.resize(data.chelsea(), (225, 150), interpolation=cv2.INTER_AREA)
    errors = painted_copy_fields(model_path, photo, (75, 112))
    median, share = errors["synthesis"]
    assert median <= 3.0 and share >= 0.5
    assert median < 0.7 * errors["unaligned"][0] and median < 0.5 * errors["identity"][0]


@pytest.mark.model
@pytest.mark.slow
def test_the_aim_of_two_pixels_is_met_at_the_photo_size(model_path):
    """The aim of issue 11: at 451 x 300 from a 224 px working size, median <= 2 px, >= 70% <= 3 px.

    Measured: identity 9.50 px (6%), nearest 5.48 px (25%), without the
    alignment 5.16 px (27%), with it 1.72 px (73%).
    """
    errors = painted_copy_fields(model_path, data.chelsea(), (149, 224))
    median, share = errors["synthesis"]
    assert median <= 2.0 and share >= 0.70
