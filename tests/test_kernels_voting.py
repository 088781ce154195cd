"""CPU twin of patch-average voting against a slow NumPy reference."""

import numpy as np
import pytest

from diva_numba.kernels import voting


def reference_vote(source, field, patch_size):
    channels, source_height, source_width = source.shape
    height, width = field.shape[:2]
    half = patch_size // 2
    out = np.empty((channels, height, width), dtype=np.float64)
    for y in range(height):
        for x in range(width):
            received = []
            for oy in range(-half, half + 1):
                for ox in range(-half, half + 1):
                    qy, qx = y + oy, x + ox
                    if not (0 <= qy < height and 0 <= qx < width):
                        continue
                    sy, sx = field[qy, qx, 0] - oy, field[qy, qx, 1] - ox
                    if 0 <= sy < source_height and 0 <= sx < source_width:
                        received.append(source[:, sy, sx])
            if not received:
                sy = min(max(field[y, x, 0], 0), source_height - 1)
                sx = min(max(field[y, x, 1], 0), source_width - 1)
                received.append(source[:, sy, sx])
            out[:, y, x] = np.mean(np.array(received, dtype=np.float64), axis=0)
    return out


def random_field(rng, target_shape, source_shape, *, at_borders=False):
    """Random matches; ``at_borders`` draws only first/last rows and columns."""
    height, width = target_shape
    source_height, source_width = source_shape
    if at_borders:
        ys = rng.choice([0, source_height - 1], size=(height, width))
        xs = rng.choice([0, source_width - 1], size=(height, width))
    else:
        ys = rng.integers(0, source_height, size=(height, width))
        xs = rng.integers(0, source_width, size=(height, width))
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
    field = random_field(rng, (height, width), (source_height, source_width), at_borders=at_borders)
    result = voting.vote(source, field, patch_size=patch_size)
    assert isinstance(result, np.ndarray) and result.dtype == np.float32
    assert result.shape == (channels, height, width)
    np.testing.assert_allclose(
        result, reference_vote(source, field, patch_size), rtol=1e-5, atol=1e-6
    )


def test_patch_size_one_is_a_plain_gather(rng):
    source = rng.standard_normal((3, 6, 5)).astype(np.float32)
    field = random_field(rng, (4, 7), (6, 5))
    expected = source[:, field[..., 0], field[..., 1]]
    np.testing.assert_array_equal(voting.vote_cpu(source, field, patch_size=1), expected)


@pytest.mark.parametrize("patch_size", [3, 5])
def test_identity_field_reproduces_the_source(rng, patch_size):
    source = rng.standard_normal((3, 7, 8)).astype(np.float32)
    ys, xs = np.mgrid[0:7, 0:8]
    field = np.stack([ys, xs], axis=-1).astype(np.int32)
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
    np.testing.assert_allclose(result, reference_vote(source, field, 3), rtol=1e-6)


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
