"""CPU twin of patch-average voting against the slow NumPy reference of naive.py."""

import naive
import numpy as np
import pytest
from inputs import identity, random_field

from diva_numba.kernels import voting


def border_field(rng, target_shape, source_shape):
    """Random matches on the first/last rows and columns of the source only."""
    ys = rng.choice([0, source_shape[0] - 1], size=target_shape)
    xs = rng.choice([0, source_shape[1] - 1], size=target_shape)
    return np.stack([ys, xs], axis=-1).astype(np.int32)


# (channels, source height, source width, target height, target width)
CASES = [
    (4, 9, 7, 9, 7),
    (3, 11, 6, 7, 13),
    (2, 1, 1, 3, 4),
    (5, 8, 1, 1, 6),
    (1, 1, 9, 5, 1),
    (6, 5, 5, 1, 1),
]


@pytest.mark.parametrize("patch_size", [3, 5])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("at_borders", [False, True])
def test_vote_matches_reference(rng, case, patch_size, at_borders):
    channels, source_height, source_width, height, width = case
    source = rng.standard_normal((channels, source_height, source_width)).astype(np.float32)
    make_field = border_field if at_borders else random_field
    field = make_field(rng, (height, width), (source_height, source_width))
    result = voting.vote(source, field, patch_size=patch_size)
    assert isinstance(result, np.ndarray) and result.dtype == np.float32
    assert result.shape == (channels, height, width)
    np.testing.assert_allclose(result, naive.vote(source, field, patch_size), rtol=1e-5, atol=1e-6)


def test_patch_size_one_is_a_plain_gather(rng):
    source = rng.standard_normal((3, 6, 5)).astype(np.float32)
    field = random_field(rng, (4, 7), (6, 5))
    expected = source[:, field[..., 0], field[..., 1]]
    np.testing.assert_array_equal(voting.vote_cpu(source, field, patch_size=1), expected)


@pytest.mark.parametrize("patch_size", [3, 5])
def test_identity_field_reproduces_the_source(rng, patch_size):
    source = rng.standard_normal((3, 7, 8)).astype(np.float32)
    field = identity((7, 8))
    np.testing.assert_allclose(
        voting.vote_cpu(source, field, patch_size=patch_size), source, rtol=1e-6, atol=1e-6
    )


def test_field_outside_the_source_falls_back_to_the_clamped_match(rng):
    source = rng.standard_normal((2, 4, 5)).astype(np.float32)
    field = np.full((3, 3, 2), -7, dtype=np.int32)
    field[1, 1] = (9, 2)  # far below the source: every vote misses
    result = voting.vote_cpu(source, field, patch_size=3)
    assert np.isfinite(result).all()
    np.testing.assert_array_equal(result[:, 1, 1], source[:, 3, 2])
    np.testing.assert_array_equal(result[:, 0, 0], source[:, 0, 0])
    np.testing.assert_allclose(result, naive.vote(source, field, 3), rtol=1e-6)


def test_bad_inputs_raise(rng):
    source = np.zeros((2, 4, 5), dtype=np.float32)
    field = np.zeros((3, 3, 2), dtype=np.int32)
    with pytest.raises(ValueError, match="patch_size"):
        voting.vote(source, field, patch_size=4)
    with pytest.raises(ValueError, match="patch_size"):
        voting.vote(source, field, patch_size=7)
    with pytest.raises(ValueError, match="int32"):
        voting.vote(source, field.astype(np.int64), patch_size=3)
    with pytest.raises(ValueError, match="float32"):
        voting.vote(source.astype(np.float64), field, patch_size=3)


def test_traffic_bytes():
    assert voting.traffic_bytes(source_shape=(3, 10, 20), field_shape=(5, 6, 2)) == (
        4 * 3 * 200 + 8 * 30 + 4 * 3 * 30
    )
