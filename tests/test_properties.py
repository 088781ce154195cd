"""Property tests: every field stays inside its target map, nothing turns NaN or Inf.

Hypothesis draws map sizes (source and target maps of different sizes), channel
counts, patch sizes, seeds, iteration counts, field layouts (random, on the
borders, at one corner, all on one pixel, far outside) and feature magnitudes
(zero, constant, tiny, huge, mixed). Random contents come from a NumPy generator
seeded with a number hypothesis drew, so a failing example replays exactly.
"""

from __future__ import annotations

import naive
import numpy as np
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from property_checks import SEEDS, SIDES, assert_field_inside, assert_finite, assert_normalized

from diva_numba.kernels.nnf_resample import pull_field, upsample_field
from diva_numba.kernels.normalize import blend, normalize_features, response_mask
from diva_numba.kernels.patchmatch import PatchMatchParams, patchmatch
from diva_numba.kernels.voting import MAX_PATCH_SIZE, vote

CHANNELS = st.integers(1, 8)
PATCH_SIZES = st.sampled_from([1, 3, 5, 7])
VOTE_PATCH_SIZES = st.sampled_from(list(range(1, MAX_PATCH_SIZE + 1, 2)))
INT32 = np.iinfo(np.int32)
#: 1e30 in float32.
HUGE = float(np.float32(1e30))

#: Per-pixel magnitudes of the "mixed" feature maps: all-zero pixels (an
#: all-black image's ReLU responses) next to ones whose squares underflow or overflow.
MIXED_MAGNITUDES = np.array([0.0, 1e-30, 1.0, 1e30])


# --------------------------------------------------------------------------- strategies


@st.composite
def feature_maps(draw, shape):
    """A finite float32 ``(C, H, W)`` map of one drawn kind."""
    kind = draw(st.sampled_from(["random", "relu", "zero", "constant", "tiny", "huge", "mixed"]))
    if kind == "zero":
        return np.zeros(shape, np.float32)
    if kind == "constant":
        value = draw(st.floats(-HUGE, HUGE, width=32, allow_subnormal=False))
        return np.full(shape, value, np.float32)
    rng = np.random.default_rng(draw(SEEDS))
    values = rng.standard_normal(shape)
    if kind == "relu":
        values = np.maximum(values, 0)
    elif kind == "tiny":
        values *= 1e-30
    elif kind == "huge":
        values *= 1e30
    elif kind == "mixed":
        values *= rng.choice(MIXED_MAGNITUDES, size=(1, *shape[1:]))
    return values.astype(np.float32)


@st.composite
def fields(draw, shape, bounds, *, outside=True):
    """An int32 ``(H, W, 2)`` field on a ``shape`` grid pointing into a ``bounds`` map.

    ``outside`` adds fields with entries anywhere in int32, which every kernel
    documents to clamp.
    """
    height, width = shape
    bound_height, bound_width = bounds
    kinds = ["random", "borders", "corner", "one_pixel"] + (["outside"] if outside else [])
    kind = draw(st.sampled_from(kinds))
    rng = np.random.default_rng(draw(SEEDS))
    ys = rng.integers(0, bound_height, shape)
    xs = rng.integers(0, bound_width, shape)
    if kind == "borders":
        # Each entry snapped to one of the four borders.
        side = rng.integers(0, 4, shape)
        ys = np.where(side == 0, 0, np.where(side == 1, bound_height - 1, ys))
        xs = np.where(side == 2, 0, np.where(side == 3, bound_width - 1, xs))
    elif kind == "corner":
        ys = np.full(shape, draw(st.sampled_from([0, bound_height - 1])))
        xs = np.full(shape, draw(st.sampled_from([0, bound_width - 1])))
    elif kind == "one_pixel":
        ys = np.full(shape, draw(st.integers(0, bound_height - 1)))
        xs = np.full(shape, draw(st.integers(0, bound_width - 1)))
    elif kind == "outside":
        # Just past the edges, and the int32 extremes.
        near_y = rng.integers(-3 * bound_height, 4 * bound_height, shape)
        near_x = rng.integers(-3 * bound_width, 4 * bound_width, shape)
        far = rng.integers(INT32.min, INT32.max, (*shape, 2), endpoint=True)
        pick_far = rng.random((*shape, 2)) < 0.3
        ys = np.where(pick_far[..., 0], far[..., 0], near_y)
        xs = np.where(pick_far[..., 1], far[..., 1], near_x)
    return np.stack([ys, xs], axis=-1).astype(np.int32)


@st.composite
def flows(draw, shape):
    """A float32 ``(H, W, 2)`` flow of ``(dx, dy)``: any value, NaN and Inf included."""
    kind = draw(st.sampled_from(["zero", "random", "huge", "non_finite", "any"]))
    if kind == "zero":
        return np.zeros((*shape, 2), np.float32)
    if kind == "any":
        return draw(arrays(np.float32, (*shape, 2), elements=st.floats(width=32)))
    rng = np.random.default_rng(draw(SEEDS))
    if kind == "non_finite":
        return rng.choice(np.array([np.nan, np.inf, -np.inf], np.float32), (*shape, 2))
    spread = 3 * max(shape) if kind == "random" else 1e38
    return (rng.uniform(-1, 1, (*shape, 2)) * spread).astype(np.float32)


@st.composite
def different_shapes(draw):
    """Source and target ``(H, W)`` of 1..20 px per side, never equal."""
    source = (draw(SIDES), draw(SIDES))
    target = (draw(SIDES), draw(SIDES))
    assume(source != target)
    return source, target


# --------------------------------------------------------------------------- PatchMatch


@st.composite
def patchmatch_cases(draw):
    (source_shape, target_shape), channels = draw(different_shapes()), draw(CHANNELS)
    maps = [draw(feature_maps((channels, *shape))) for shape in (source_shape,) * 2]
    maps += [draw(feature_maps((channels, *shape))) for shape in (target_shape,) * 2]
    return maps, draw(st.booleans())


@settings(max_examples=150, deadline=None)
@given(
    case=patchmatch_cases(),
    patch_size=PATCH_SIZES,
    iterations=st.integers(0, 3),
    search_radius=st.integers(0, 8),
    seed=SEEDS,
    propagate=st.booleans(),
    data=st.data(),
)
def test_patchmatch_fields_stay_inside_the_target_both_ways(
    case, patch_size, iterations, search_radius, seed, propagate, data
):
    """Both directions, from any starting field, with or without normalised maps."""
    (a, a_prime, b, b_prime), normalized = case
    if normalized:
        a, a_prime, b, b_prime = (normalize_features(m) for m in (a, a_prime, b, b_prime))
    source_shape, target_shape = a.shape[1:], b.shape[1:]
    params = PatchMatchParams(
        patch_size=patch_size,
        iterations=iterations,
        search_radius=search_radius,
        seed=seed,
        propagate=propagate,
    )
    for maps, shape, bounds in (
        ((a, a_prime, b, b_prime), source_shape, target_shape),
        ((b_prime, b, a_prime, a), target_shape, source_shape),
    ):
        init = data.draw(st.none() | fields(shape, bounds), label="init_field")
        refine = data.draw(st.none() | arrays(np.bool_, shape), label="refine_mask")
        field, distance = patchmatch(*maps, init_field=init, params=params, refine_mask=refine)
        assert_field_inside(field, shape, bounds)
        assert distance.shape == shape and distance.dtype == np.float32
        if normalized:
            # A mean over the patch of two dot products of vectors no longer than 1.
            assert_finite(distance)
            assert np.abs(distance).max() <= 2 + 1e-5


# --------------------------------------------------------------------------- field resampling


@st.composite
def upsample_cases(draw):
    old_shape, new_shape = draw(different_shapes())
    source_shape = (draw(SIDES), draw(SIDES))
    old_source = (draw(SIDES), draw(SIDES))
    return draw(fields(old_shape, old_source)), new_shape, source_shape


@settings(max_examples=150, deadline=None)
@given(case=upsample_cases())
@example(case=(np.zeros((1, 1, 2), np.int32), (20, 17), (1, 1)))
@example(case=(np.full((3, 2, 2), INT32.min, np.int32), (1, 1), (5, 9)))
@example(case=(np.full((3, 2, 2), INT32.max, np.int32), (20, 20), (5, 9)))
def test_upsample_field_stays_inside_the_source(case):
    field, target_shape, source_shape = case
    assert_field_inside(
        upsample_field(field, target_shape=target_shape, source_shape=source_shape),
        target_shape,
        source_shape,
    )


@st.composite
def flow_cases(draw):
    field_shape, bounds = draw(different_shapes())
    flow = draw(flows((draw(SIDES), draw(SIDES))))
    return draw(fields(field_shape, bounds)), flow, bounds


@settings(max_examples=150, deadline=None)
@given(case=flow_cases())
def test_pull_keeps_fields_inside_for_any_flow(case):
    """Any flow, NaN and Inf included: matches stay inside, ``invalid`` is 0 or 1."""
    field, flow, bounds = case
    shape = field.shape[:2]
    clamped = naive.clamp_field(field, bounds)
    moved, invalid = pull_field(field, flow, source_shape=bounds)
    assert_field_inside(moved, shape, bounds)
    assert invalid.dtype == np.uint8 and invalid.shape == shape
    assert set(np.unique(invalid)) <= {0, 1}
    if not np.isfinite(flow).any():
        # Broken vectors move nothing and mark every position invalid.
        np.testing.assert_array_equal(moved, clamped)
        assert invalid.all()
    if not flow.any():
        # Pulling along a zero flow keeps every match, clamped into the style map.
        moved, invalid = pull_field(field, flow, source_shape=bounds)
        np.testing.assert_array_equal(moved, clamped)
        assert not invalid.any()


# --------------------------------------------------------------------------- voting


@st.composite
def vote_cases(draw):
    (source_shape, target_shape), channels = draw(different_shapes()), draw(CHANNELS)
    source = draw(feature_maps((channels, *source_shape)))
    return source, draw(fields(target_shape, source_shape)), draw(VOTE_PATCH_SIZES)


@settings(max_examples=120, deadline=None)
@given(case=vote_cases())
@example(case=(np.ones((3, 1, 1), np.float32), np.zeros((1, 1, 2), np.int32), MAX_PATCH_SIZE))
@example(case=(np.ones((2, 1, 1), np.float32), np.zeros((7, 4, 2), np.int32), MAX_PATCH_SIZE))
@example(case=(np.ones((1, 3, 2), np.float32), np.full((1, 1, 2), 9, np.int32), MAX_PATCH_SIZE))
def test_vote_is_finite_and_matches_the_reference(case):
    """Any field (1 px maps, patches larger than the map, all on one pixel, outside)."""
    source, field, patch_size = case
    out = vote(source, field, patch_size=patch_size)
    assert out.dtype == np.float32 and out.shape == (source.shape[0], *field.shape[:2])
    assert_finite(out)
    # int64 so that the reference's offsets cannot overflow on int32 extremes.
    expected = naive.vote(source, field.astype(np.int64), patch_size)
    atol = 1e-5 * float(np.abs(source).max())
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=atol)


# --------------------------------------------------------------------------- per-pixel maths


@st.composite
def maps(draw):
    return draw(feature_maps((draw(CHANNELS), draw(SIDES), draw(SIDES))))


@settings(max_examples=150, deadline=None)
@given(features=maps())
@example(features=np.full((8, 2, 3), 1e19, np.float32))
@example(features=np.full((1, 1, 1), 1e-30, np.float32))
def test_normalize_is_finite_and_never_longer_than_one(features):
    normalized = normalize_features(features)
    assert normalized.dtype == np.float32 and normalized.shape == features.shape
    assert_normalized(normalized)
    zero_pixels = ~features.any(axis=0)
    assert not normalized[:, zero_pixels].any()


#: One pixel whose response overflows to inf next to an all-zero one.
OVERFLOWING_PIXEL = np.array([[[1e30, 0.0]]], np.float32)

MASK_OPTIONS = {
    "kind": st.sampled_from(["sigmoid", "step"]),
    "kappa": st.floats(0, 1e6),
    "tau": st.floats(0, 1),
}


@settings(max_examples=150, deadline=None)
@given(features=maps(), **MASK_OPTIONS)
@example(features=OVERFLOWING_PIXEL, kind="sigmoid", kappa=300.0, tau=0.05)
@example(features=OVERFLOWING_PIXEL, kind="step", kappa=300.0, tau=0.05)
def test_response_mask_is_finite_and_in_the_unit_interval(features, kind, kappa, tau):
    mask = response_mask(features, kind=kind, kappa=kappa, tau=tau)
    assert mask.dtype == np.float32 and mask.shape == features.shape[1:]
    assert_finite(mask)
    assert mask.min() >= 0 and mask.max() <= 1
    if kind == "step":
        assert set(np.unique(mask)) <= {0, 1}


@settings(max_examples=100, deadline=None)
@given(
    features=maps(),
    strength=st.sampled_from([1e3, 1e10, 1e19, 1e20, 1e30, 3e38]),
    kind=MASK_OPTIONS["kind"],
    data=st.data(),
)
def test_response_mask_marks_one_strong_pixel_even_when_its_response_overflows(
    features, strength, kind, data
):
    """One pixel far above a background of at most unit magnitude gets 1, the rest 0."""
    _, height, width = features.shape
    assume(height * width > 1)
    features = np.clip(features, -1, 1)
    y = data.draw(st.integers(0, height - 1), label="y")
    x = data.draw(st.integers(0, width - 1), label="x")
    features[0, y, x] = strength
    mask = response_mask(features, kind=kind)
    assert mask[y, x] == 1
    mask[y, x] = 0
    # The background's level is at most 8 / 1e6, far below tau = 0.05.
    assert mask.max() < 1e-6


@settings(max_examples=100, deadline=None)
@given(data=st.data(), alpha=st.floats(0, 1), **MASK_OPTIONS)
def test_blend_is_finite_and_between_its_inputs(data, alpha, kind, kappa, tau):
    shape = (data.draw(CHANNELS), data.draw(SIDES), data.draw(SIDES))
    structure = data.draw(feature_maps(shape), label="structure")
    reconstructed = data.draw(feature_maps(shape), label="reconstructed")
    mask = response_mask(structure, kind=kind, kappa=kappa, tau=tau)
    out = blend(structure, reconstructed, mask, alpha=alpha)
    assert out.dtype == np.float32 and out.shape == shape
    assert_finite(out)
    low = np.minimum(structure, reconstructed).astype(np.float64)
    high = np.maximum(structure, reconstructed).astype(np.float64)
    slack = 1e-6 * np.maximum(np.abs(low), np.abs(high))
    assert (out >= low - slack).all() and (out <= high + slack).all()
