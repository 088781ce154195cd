"""Property tests of the whole analogy and of the photo refinement.

Hypothesis draws the images (black, white, one colour, noise; 32..48 px a side) and
the analogy's iteration counts, mask and seed; every map and field the analogy makes
on the way is checked as it is made: fields inside their target map, nothing NaN or
Inf. The kernels alone: tests/test_properties.py.
"""

from __future__ import annotations

import functools
from collections import Counter
from contextlib import ExitStack, contextmanager
from unittest import mock

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from property_checks import SEEDS, SIDES, assert_field_inside, assert_finite, assert_normalized

from diva_numba.finishing.refine import refine_photo, wls_smooth
from diva_numba.gpu.device import resolve_device
from diva_numba.image_analogy import deep_analogy as analogy_module
from diva_numba.image_analogy.deep_analogy import AnalogyModel, AnalogyParams, analogy
from diva_numba.models import vgg

# --------------------------------------------------------------------------- pipeline


def _checking(name, check, counts):
    """``analogy_module.<name>`` that also runs ``check(result, *args, **kwargs)`` and counts."""
    kernel = getattr(analogy_module, name)

    @functools.wraps(kernel)
    def wrapper(*args, **kwargs):
        result = kernel(*args, **kwargs)
        check(result, *args, **kwargs)
        counts[name] += 1
        return result

    return wrapper


def _check_normalized(result, features, **_):
    assert_finite(features)
    assert_normalized(result)


def _check_patchmatch(result, a, a_prime, b, b_prime, **_):
    field, distance = result
    assert_field_inside(field, a.shape[1:], b.shape[1:])
    assert_finite(distance)


def _check_upsampled(result, field, *, target_shape, source_shape):
    assert_field_inside(result, target_shape, source_shape)


def _check_vote(result, source, field, **_):
    assert_field_inside(field, field.shape[:2], source.shape[1:])
    assert_finite(result)


def _check_mask(result, features, **_):
    assert_finite(result)
    assert result.min() >= 0 and result.max() <= 1


def _check_blend(result, feat_a, reconstructed, mask, **_):
    for array in (feat_a, reconstructed, result):
        assert_finite(array)


def _check_deconvolution(result, network, target, initial, **_):
    assert_finite(initial)
    assert_finite(result.x)
    assert np.isfinite(result.losses).all()


#: What analogy() calls per image pair, and the checks of their results.
PIPELINE_CHECKS = {
    "normalize_features": (_check_normalized, 4 * 5),
    "patchmatch": (_check_patchmatch, 2 * 5),
    "vote": (_check_vote, 2 * 2 * 4 + 2),
    "deconvolve": (_check_deconvolution, 2 * 4),
    "response_mask": (_check_mask, 2 * 4),
    "blend": (_check_blend, 2 * 4),
    "upsample_field": (_check_upsampled, 2 * 2 * 4),
}


@contextmanager
def checked_pipeline():
    """Check every map and field analogy() makes; yields the calls counted per kernel."""
    counts = Counter()
    with ExitStack() as stack:
        for name, (check, _) in PIPELINE_CHECKS.items():
            checking = _checking(name, check, counts)
            stack.enter_context(mock.patch.object(analogy_module, name, checking))
        yield counts
    assert counts == {name: calls for name, (_, calls) in PIPELINE_CHECKS.items()}


def check_analogy(model, image_a, image_bp, params):
    """Run analogy() with every intermediate checked; check its features and result."""
    for image in (image_a, image_bp):
        for features in model.features(image).values():
            assert_finite(features)
    with checked_pipeline():
        result = analogy(model, image_a, image_bp, params=params)
    shape_a, shape_bp = image_a.shape[:2], image_bp.shape[:2]
    for image, shape in ((result.a_prime, shape_a), (result.b, shape_bp)):
        assert image.dtype == np.uint8 and image.shape == (*shape, 3)
    assert_field_inside(result.nnf_ab, shape_a, shape_bp)
    assert_field_inside(result.nnf_ba, shape_bp, shape_a)
    for level, (nnf_ab, nnf_ba) in result.level_fields.items():
        level_a, level_bp = vgg.level_shape(*shape_a, level), vgg.level_shape(*shape_bp, level)
        assert_field_inside(nnf_ab, level_a, level_bp)
        assert_field_inside(nnf_ba, level_bp, level_a)
    for solution in result.deconvolutions.values():
        assert_finite(solution)
    for latent in result.latent_b.values():
        assert_finite(latent)
    return result


@st.composite
def images(draw):
    """An RGB uint8 image of 32..48 px per side: black, white, one colour or noise."""
    shape = (draw(st.integers(32, 48)), draw(st.integers(32, 48)), 3)
    kind = draw(st.sampled_from(["black", "white", "colour", "random"]))
    if kind == "random":
        return np.random.default_rng(draw(SEEDS)).integers(0, 256, shape, dtype=np.uint8)
    colour = {"black": [0] * 3, "white": [255] * 3}.get(kind)
    if colour is None:
        colour = draw(st.lists(st.integers(0, 255), min_size=3, max_size=3))
    return np.broadcast_to(np.array(colour, np.uint8), shape).copy()


def is_flat(image):
    return (image == image[0, 0]).all()


def assert_flat_colour(image, colour):
    assert np.abs(image.astype(int) - colour.astype(int)).max() <= 1


@pytest.fixture(scope="module")
def tiny_analogy_model(tiny_model):
    return AnalogyModel(tiny_model, resolve_device("cpu"))


@settings(max_examples=30, deadline=None)
@given(
    image_a=images(),
    image_bp=images(),
    lbfgs_iterations=st.integers(0, 2),
    patchmatch_iterations=st.integers(0, 2),
    mask=st.sampled_from(["sigmoid", "step"]),
    seed=SEEDS,
)
def test_analogy_is_finite_and_its_fields_stay_inside(
    tiny_analogy_model, image_a, image_bp, lbfgs_iterations, patchmatch_iterations, mask, seed
):
    params = AnalogyParams(
        lbfgs_iterations=lbfgs_iterations,
        patchmatch_iterations=patchmatch_iterations,
        mask=mask,
        seed=seed,
    )
    result = check_analogy(tiny_analogy_model, image_a, image_bp, params)
    # The pixels are votes of the other image's pixels: a flat image gives its colour.
    if is_flat(image_bp):
        assert_flat_colour(result.a_prime, image_bp[0, 0])
    if is_flat(image_a):
        assert_flat_colour(result.b, image_a[0, 0])


@pytest.mark.model
def test_real_model_on_black_and_white_stays_finite(model_path):
    """The real weights: ReLU of all-black input, zero vectors, flat response maps."""
    model = AnalogyModel(model_path, resolve_device("cpu"))
    black = np.zeros((48, 48, 3), np.uint8)
    white = np.full((48, 48, 3), 255, np.uint8)
    params = AnalogyParams(lbfgs_iterations=2, patchmatch_iterations=2)
    result = check_analogy(model, black, white, params)
    assert (result.a_prime == 255).all()
    assert (result.b == 0).all()


# --------------------------------------------------------------------------- photo refinement


@st.composite
def refine_cases(draw):
    shape = (draw(SIDES), draw(SIDES), 3)
    colour = np.array(draw(st.lists(st.integers(0, 255), min_size=3, max_size=3)), np.uint8)
    a = np.broadcast_to(colour, shape).copy()
    a_prime = draw(images().map(lambda image: image[: shape[0], : shape[1]].copy()))
    return a_prime, a


@settings(max_examples=40, deadline=None)
@given(case=refine_cases())
@example(case=(np.zeros((5, 7, 3), np.uint8), np.zeros((5, 7, 3), np.uint8)))
@example(case=(np.full((1, 1, 3), 255, np.uint8), np.zeros((1, 1, 3), np.uint8)))
def test_refine_photo_on_a_flat_structure_image(case):
    """A flat guide (log of 0 for black) gives finite weights; a flat A' comes back as is."""
    a_prime, a = case
    guide = a.astype(np.float32)[..., 0] / 255
    assert_finite(wls_smooth(a_prime.astype(np.float32) / 255, guide))
    refined = refine_photo(a_prime, a)
    assert refined.dtype == np.uint8 and refined.shape == a.shape
    if is_flat(a_prime):
        assert_flat_colour(refined, a_prime[0, 0])
