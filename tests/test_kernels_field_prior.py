"""CPU twins of the field priors against the NumPy references of naive.py, and their properties."""

import naive
import numpy as np
import pytest
from inputs import feature_pairs, identity, random_field

from diva_numba.kernels import field_prior, field_smoothing

# --- match distinctiveness -------------------------------------------------------------

# (source grid, target grid, patch size, step): maps of different sizes, one-pixel and
# one-line targets (neighbours clamp back onto the match), a step larger than the target
DISTINCTIVENESS_CASES = [
    ((6, 7), (5, 8), 3, 1),
    ((5, 5), (7, 6), 5, 2),
    ((4, 6), (1, 1), 3, 1),
    ((3, 4), (1, 5), 3, 1),
    ((1, 1), (4, 3), 5, 1),
    ((5, 4), (6, 6), 3, 9),
]


@pytest.mark.parametrize("case", DISTINCTIVENESS_CASES)
def test_distinctiveness_matches_reference(rng, case):
    source_shape, target_shape, patch_size, step = case
    pairs = feature_pairs(rng, 4, source_shape, target_shape)
    field = random_field(rng, source_shape, target_shape, spill=2)
    result = field_prior.match_distinctiveness(*pairs, field, patch_size=patch_size, step=step)
    assert isinstance(result, np.ndarray) and result.dtype == np.float32
    assert result.shape == source_shape and (result >= 0).all()
    expected = naive.match_distinctiveness(*pairs, field, patch_size, step)
    np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-6)


def test_distinctiveness_is_zero_for_flat_maps(rng):
    maps = [np.full((3, 9, 8), 0.5, dtype=np.float32) for _ in range(4)]
    field = random_field(rng, (9, 8), (9, 8), spill=3)
    result = field_prior.match_distinctiveness_cpu(*maps, field, patch_size=5)
    np.testing.assert_array_equal(result, 0)


def square(size, low, high):
    """Two unit channels: (1, 0) inside rows and columns ``low..high - 1``, else (0, 1)."""
    inside = np.zeros((size, size), dtype=np.float32)
    inside[low:high, low:high] = 1
    return np.stack([inside, 1 - inside])


def test_distinctiveness_is_large_at_a_corner_and_zero_along_an_edge():
    # A = A' = B = B', the identity field: every pixel's match is its own perfect copy.
    maps = [square(16, 4, 12)] * 4
    result = field_prior.match_distinctiveness(*maps, identity((16, 16)), patch_size=3)
    # Any move of a corner's patch uncovers 2 of its 9 offsets: the distance rises 4/9.
    for corner in ((4, 4), (4, 11), (11, 4), (11, 11)):
        assert result[corner] == pytest.approx(4 / 9, rel=1e-6)
    # On a straight edge the patch slides along it unchanged (the aperture problem).
    assert result[4, 8] == 0 and result[8, 11] == 0
    assert result[8, 8] == 0 and result[0, 0] == 0  # flat inside and outside
    assert (result > 0).sum() == 4 * 4  # each corner and its three neighbours outside


def test_distinctiveness_bad_inputs_raise(rng):
    pairs = feature_pairs(rng, 2, (3, 3), (3, 3))
    field = identity((3, 3))
    with pytest.raises(ValueError, match="step"):
        field_prior.match_distinctiveness(*pairs, field, patch_size=3, step=0)
    with pytest.raises(ValueError, match="patch_size"):
        field_prior.match_distinctiveness(*pairs, field, patch_size=4)
    with pytest.raises(ValueError, match="int32"):
        field_prior.match_distinctiveness(*pairs, field.astype(np.float32), patch_size=3)


# --- the recursive filter and the field smoothing ---------------------------------------

# (values grid, guide channels, sigma_space, sigma_range, iterations)
FILTER_CASES = [
    ((7, 9), 3, 4.0, 0.3, 3),
    ((5, 6), 1, 16.0, 0.1, 1),
    ((1, 8), 2, 2.0, 1.0, 2),
    ((9, 1), 1, 3.0, 0.5, 3),
    ((1, 1), 3, 16.0, 0.1, 3),
]


@pytest.mark.parametrize("case", FILTER_CASES)
def test_recursive_filter_matches_reference(rng, case):
    shape, guide_channels, sigma_space, sigma_range, iterations = case
    values = rng.standard_normal((3, *shape)).astype(np.float32)
    guide = rng.random((guide_channels, *shape)).astype(np.float32)
    settings = {"sigma_space": sigma_space, "sigma_range": sigma_range, "iterations": iterations}
    expected = naive.recursive_filter(values, guide, **settings)
    result = field_smoothing.recursive_filter(values, guide, **settings)
    assert result is values
    np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-5)


def test_recursive_filter_keeps_a_constant(rng):
    values = np.full((2, 11, 13), 0.75, dtype=np.float32)
    guide = rng.random((3, 11, 13)).astype(np.float32)
    field_smoothing.recursive_filter_cpu(values, guide, sigma_space=5.0, sigma_range=0.2)
    np.testing.assert_allclose(values, 0.75, rtol=1e-6)


def random_positions(rng, shape, spread):
    """Float32 (*shape, 2): the identity plus uniform noise in [-spread, spread)."""
    noise = rng.uniform(-spread, spread, size=(*shape, 2))
    return (identity(shape) + noise).astype(np.float32)


@pytest.mark.parametrize("shape", [(8, 10), (1, 7), (6, 1), (12, 5)])
def test_smooth_field_matches_reference(rng, shape):
    positions = random_positions(rng, shape, 4.0)
    weights = rng.random(shape).astype(np.float32)
    weights[rng.random(shape) < 0.2] = 0
    guide = rng.random((3, *shape)).astype(np.float32)
    params = field_prior.FieldPriorParams(sigma_space=4.0, sigma_range=0.5, iterations=3)
    result, support = field_prior.smooth_field(positions, weights, guide, params=params)
    assert result.dtype == np.float32 and result.shape == (*shape, 2)
    assert support.dtype == np.float32 and support.shape == shape
    expected, expected_support = naive.smooth_field(
        positions, weights, guide, 4.0, 0.5, 3, params.min_support
    )
    np.testing.assert_allclose(support, expected_support, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-4)


def test_unusable_weights_and_positions_count_as_zero(rng):
    positions = random_positions(rng, (6, 7), 3.0)
    weights = rng.random((6, 7)).astype(np.float32)
    weights[0, 0] = weights[1, 1] = weights[2, 2] = 0
    guide = rng.random((1, 6, 7)).astype(np.float32)
    expected, expected_support = field_prior.smooth_field(positions, weights, guide)
    broken_weights, broken_positions = weights.copy(), positions.copy()
    broken_weights[0, 0], broken_weights[1, 1] = -1.0, np.nan
    broken_positions[2, 2, 1] = np.inf
    result, support = field_prior.smooth_field(broken_positions, broken_weights, guide)
    np.testing.assert_array_equal(support, expected_support)
    np.testing.assert_array_equal(result, expected)


def test_no_weight_keeps_the_positions(rng):
    positions = random_positions(rng, (5, 6), 3.0)
    guide = rng.random((2, 5, 6)).astype(np.float32)
    result, support = field_prior.smooth_field(positions, np.zeros((5, 6), np.float32), guide)
    np.testing.assert_array_equal(result, positions)
    np.testing.assert_array_equal(support, 0)


@pytest.mark.parametrize("offset", [(0.0, 0.0), (2.5, -7.0), (-30.0, 12.25)])
def test_translation_is_kept_whatever_the_weights(rng, offset):
    positions = (identity((14, 17)) + np.array(offset)).astype(np.float32)
    weights = (rng.random((14, 17)) ** 4).astype(np.float32)
    guide = rng.random((3, 14, 17)).astype(np.float32)
    result, _ = field_prior.smooth_field(positions, weights, guide)
    np.testing.assert_allclose(result, positions, rtol=0, atol=1e-4)


def test_zoom_is_kept_by_uniform_weights_away_from_the_border():
    # Normalised convolution keeps linear displacements only where the weighted kernel is
    # centred on the pixel: with uniform weights, a flat guide, a few sigmas from the border.
    shape = (48, 48)
    centre = np.array([23.5, 23.5])
    positions = (1.25 * (identity(shape) - centre) + centre + [2.0, -1.0]).astype(np.float32)
    params = field_prior.FieldPriorParams(sigma_space=2.0)
    result, _ = field_prior.smooth_field(
        positions, np.ones(shape, np.float32), np.zeros((1, *shape), np.float32), params=params
    )
    np.testing.assert_allclose(result[16:-16, 16:-16], positions[16:-16, 16:-16], atol=1e-4)


def two_halves(shape, left, right, split):
    """Float32 (*shape, 2): displacement ``left`` in columns before ``split``, else ``right``."""
    columns = np.arange(shape[1])[None, :, None] < split
    return np.broadcast_to(np.where(columns, left, right), (*shape, 2)).astype(np.float32)


def test_a_guide_edge_stops_the_smoothing(rng):
    shape = (24, 32)
    guide = np.zeros((1, *shape), np.float32)
    guide[:, :, 16:] = 1
    truth = two_halves(shape, [0.0, 3.0], [0.0, -3.0], 16)
    positions = (identity(shape) + truth + rng.normal(0, 0.5, (*shape, 2))).astype(np.float32)
    weights = rng.uniform(0.2, 1.0, shape).astype(np.float32)
    result, _ = field_prior.smooth_field(positions, weights, guide)
    displacement = result - identity(shape)
    np.testing.assert_allclose(displacement, truth, atol=0.4)
    assert displacement[:, 15, 1].min() > 2.5 and displacement[:, 16, 1].max() < -2.5
    # Without the edge the two sides mix.
    flat, _ = field_prior.smooth_field(positions, weights, np.zeros_like(guide))
    assert np.abs(flat - identity(shape))[:, 15:17, 1].max() < 1.5


def test_one_good_match_per_region_spreads_over_it(rng):
    shape = (24, 32)
    guide = np.zeros((1, *shape), np.float32)
    guide[:, :, 16:] = 1
    truth = two_halves(shape, [3.0, 1.0], [-2.0, 4.0], 16)
    positions = random_positions(rng, shape, 6.0)
    weights = np.full(shape, 1e-6, np.float32)
    for y, x in ((5, 3), (18, 28)):
        positions[y, x] = identity(shape)[y, x] + truth[y, x]
        weights[y, x] = 1.0
    result, support = field_prior.smooth_field(positions, weights, guide)
    np.testing.assert_allclose(result - identity(shape), truth, atol=0.05)
    assert support.min() > 100 * field_prior.FieldPriorParams().min_support


def test_smoothing_bad_inputs_raise():
    positions = np.zeros((4, 5, 2), np.float32)
    weights = np.ones((4, 5), np.float32)
    guide = np.zeros((3, 4, 5), np.float32)
    with pytest.raises(ValueError, match="positions"):
        field_prior.smooth_field(positions.astype(np.float64), weights, guide)
    with pytest.raises(ValueError, match="weights"):
        field_prior.smooth_field(positions, weights[:3], guide)
    with pytest.raises(ValueError, match="guide"):
        field_prior.smooth_field(positions, weights, guide[:, :3])
    with pytest.raises(TypeError, match="FieldPriorParams"):
        field_prior.smooth_field(positions, weights, guide, params={"sigma_space": 3})
    with pytest.raises(ValueError, match="sigma_range"):
        field_prior.FieldPriorParams(sigma_range=0)
    with pytest.raises(ValueError, match="iterations"):
        field_prior.FieldPriorParams(iterations=0)
    with pytest.raises(ValueError, match="min_support"):
        field_prior.FieldPriorParams(min_support=-1.0)
    with pytest.raises(ValueError, match="C-contiguous"):
        field_smoothing.recursive_filter(
            np.zeros((4, 5, 3), np.float32).transpose(2, 0, 1), guide, sigma_space=2, sigma_range=1
        )


# --- upsampling and rounding ---------------------------------------------------------

# (old grid, new grid, old matched size, new matched size): doubling, odd ratios,
# shrinking, single cells and lines
UPSAMPLE_CASES = [
    ((5, 7), (10, 14), (6, 6), (12, 12)),
    ((5, 7), (12, 9), (9, 4), (11, 16)),
    ((9, 7), (4, 3), (5, 5), (3, 2)),
    ((1, 1), (3, 5), (2, 2), (4, 4)),
    ((4, 1), (7, 2), (1, 6), (2, 11)),
]


@pytest.mark.parametrize("case", UPSAMPLE_CASES)
def test_upsample_positions_matches_reference(rng, case):
    old_shape, new_shape, old_source, new_source = case
    positions = rng.uniform(-2, max(old_source) + 2, size=(*old_shape, 2)).astype(np.float32)
    shapes = {"target_shape": new_shape, "source_shape": new_source}
    result = field_prior.upsample_positions(positions, **shapes, coarse_source_shape=old_source)
    assert isinstance(result, np.ndarray) and result.dtype == np.float32
    expected = naive.upsample_positions(positions, new_shape, new_source, old_source)
    np.testing.assert_allclose(result, expected, rtol=1e-6, atol=1e-5)


def affine_positions(shape, source_shape, matrix, offset):
    """Float64 (*shape, 2): pixel centres mapped by ``eta = matrix xi + offset`` in [0, 1]^2."""
    xi = (identity(shape) + 0.5) / np.array(shape)
    eta = xi @ np.array(matrix).T + offset
    return eta * np.array(source_shape) - 0.5


@pytest.mark.parametrize("case", UPSAMPLE_CASES[:3] + [((6, 8), (18, 20), (5, 7), (15, 14))])
def test_upsample_positions_carries_an_affine_field(case):
    old_shape, new_shape, old_source, new_source = case
    matrix, offset = [[0.8, 0.15], [-0.1, 1.2]], [0.1, -0.05]
    coarse = affine_positions(old_shape, old_source, matrix, offset).astype(np.float32)
    result = field_prior.upsample_positions(
        coarse, target_shape=new_shape, source_shape=new_source, coarse_source_shape=old_source
    )
    expected = affine_positions(new_shape, new_source, matrix, offset)
    # Exact where the sample lies inside the old grid; the clamped border is held constant.
    sample = (identity(new_shape) + 0.5) * np.array(old_shape) / np.array(new_shape) - 0.5
    inside = ((sample >= 0) & (sample <= np.array(old_shape) - 1)).all(axis=-1)
    assert inside.any()
    np.testing.assert_allclose(result[inside], expected[inside], rtol=0, atol=1e-4)


def test_round_positions_matches_reference(rng):
    positions = rng.uniform(-3, 12, size=(7, 9, 2)).astype(np.float32)
    positions[0, :4, 0] = [np.nan, np.inf, -np.inf, 0.49999997]
    positions[1, :4, 1] = [2.5, -0.5, 6.5, 1e30]
    result = field_prior.round_positions(positions, (7, 8))
    assert isinstance(result, np.ndarray) and result.dtype == np.int32
    np.testing.assert_array_equal(result, naive.round_positions(positions, (7, 8)))
    assert result[0, 3, 0] == 0 and result[1, 0, 1] == 3 and result[1, 1, 1] == 0


@pytest.mark.parametrize(
    ("level_shape", "field_shape", "source_shape", "field_source_shape"),
    [
        ((5, 7), (5, 7), (4, 6), (8, 12)),
        ((4, 6), (9, 13), (5, 5), (11, 9)),
        ((1, 1), (3, 2), (2, 2), (2, 2)),
    ],
)
def test_carry_positions_matches_reference(rng, level_shape, field_shape, source_shape,
                                           field_source_shape):  # fmt: skip
    positions = rng.uniform(-1, 9, (*level_shape, 2)).astype(np.float32)
    field = rng.integers(0, 8, (*field_shape, 2)).astype(np.int32)
    trusted = rng.random(level_shape) < 0.6
    expected = naive.carry_positions(positions, field, trusted, source_shape, field_source_shape)

    result = field_prior.carry_positions(positions, field, trusted, source_shape=source_shape,
                                         field_source_shape=field_source_shape)  # fmt: skip

    assert result is positions  # in place
    np.testing.assert_allclose(result, expected, rtol=1e-6, atol=1e-5)
    np.testing.assert_array_equal(result[~trusted], expected[~trusted].astype(np.float32))


def test_carry_positions_bad_inputs_raise():
    positions = np.zeros((3, 4, 2), np.float32)
    field = np.zeros((6, 8, 2), np.int32)
    shapes = {"source_shape": (3, 4), "field_source_shape": (6, 8)}
    with pytest.raises(ValueError, match="trusted"):
        field_prior.carry_positions(positions, field, np.ones((4, 3), bool), **shapes)
    with pytest.raises(ValueError, match="field"):
        field_prior.carry_positions(positions, field.astype(np.float32), np.ones((3, 4), bool),
                                    **shapes)  # fmt: skip


def test_upsample_and_round_bad_inputs_raise():
    positions = np.zeros((3, 3, 2), np.float32)
    shapes = {"target_shape": (6, 6), "source_shape": (6, 6), "coarse_source_shape": (3, 3)}
    with pytest.raises(ValueError, match="float32"):
        field_prior.upsample_positions(positions.astype(np.int32), **shapes)
    with pytest.raises(ValueError, match="coarse_source_shape"):
        field_prior.upsample_positions(positions, **{**shapes, "coarse_source_shape": (0, 3)})
    with pytest.raises(ValueError, match="source_shape"):
        field_prior.round_positions(positions, (3,))
