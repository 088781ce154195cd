"""CPU twins of NNF upsampling and flow seeding against exact (rational) references: naive.py."""

import naive
import numpy as np
import pytest
from inputs import identity, random_field, random_flow

from diva_numba.kernels import nnf_resample

# (old field grid, new field grid, new source shape); old sources are drawn from it
UPSAMPLE_CASES = [
    ((5, 7), (10, 14), (12, 9)),
    ((5, 7), (12, 9), (11, 16)),
    ((9, 7), (4, 3), (5, 5)),
    ((1, 1), (3, 5), (2, 2)),
    ((4, 1), (7, 2), (1, 6)),
    ((28, 29), (56, 57), (57, 56)),
]


@pytest.mark.parametrize("case", UPSAMPLE_CASES)
def test_upsample_matches_reference(rng, case):
    old_shape, new_shape, source_shape = case
    old_source = (max(1, source_shape[0] // 2), max(1, source_shape[1] // 2))
    field = random_field(rng, old_shape, old_source)
    result = nnf_resample.upsample_field(field, target_shape=new_shape, source_shape=source_shape)
    assert isinstance(result, np.ndarray) and result.dtype == np.int32
    np.testing.assert_array_equal(result, naive.upsample_field(field, new_shape, source_shape))


def test_upsample_matches_reference_with_matches_outside(rng):
    field = rng.integers(-6, 12, size=(6, 5, 2)).astype(np.int32)
    result = nnf_resample.upsample_field_cpu(field, target_shape=(11, 9), source_shape=(8, 7))
    np.testing.assert_array_equal(result, naive.upsample_field(field, (11, 9), (8, 7)))
    assert result[..., 0].min() >= 0 and result[..., 0].max() <= 7
    assert result[..., 1].min() >= 0 and result[..., 1].max() <= 6


@pytest.mark.parametrize("shapes", [((4, 6), (8, 12)), ((5, 3), (13, 7)), ((7, 7), (7, 7))])
def test_identity_upsamples_to_identity(shapes):
    old_shape, new_shape = shapes
    result = nnf_resample.upsample_field_cpu(
        identity(old_shape), target_shape=new_shape, source_shape=new_shape
    )
    np.testing.assert_array_equal(result, identity(new_shape))


def test_constant_translation_is_scaled():
    field = identity((6, 8)) + np.array([2, -3], dtype=np.int32)
    result = nnf_resample.upsample_field_cpu(field, target_shape=(12, 16), source_shape=(40, 40))
    np.testing.assert_array_equal(result[:, 6:], (identity((12, 16)) + [4, -6])[:, 6:])


# (field grid, flow grid): same resolution, flow finer, flow coarser, odd ratios, 1-pixel
FLOW_CASES = [((9, 7), (9, 7)), ((7, 9), (14, 18)), ((8, 10), (4, 5)), ((5, 6), (9, 13)),
              ((1, 6), (2, 12)), ((6, 1), (6, 1)), ((1, 1), (3, 3))]  # fmt: skip


@pytest.mark.parametrize("case", FLOW_CASES)
def test_pull_matches_reference(rng, case):
    field_shape, flow_shape = case
    source_shape = (int(rng.integers(1, 12)), int(rng.integers(1, 12)))
    field = random_field(rng, field_shape, (source_shape[0] + 2, source_shape[1] + 2))
    flow = random_flow(rng, flow_shape, spread=3.0)
    result, invalid = nnf_resample.pull_field(field, flow, source_shape=source_shape)
    assert result.dtype == np.int32 and invalid.dtype == np.uint8
    expected, expected_invalid = naive.pull_field(field, flow, source_shape)
    np.testing.assert_array_equal(result, expected)
    np.testing.assert_array_equal(invalid, expected_invalid)


def test_zero_flow_keeps_the_fields(rng):
    field = random_field(rng, (6, 5), (7, 8))
    flow = np.zeros((12, 10, 2), dtype=np.float32)
    pulled, invalid = nnf_resample.pull_field_cpu(field, flow, source_shape=(7, 8))
    np.testing.assert_array_equal(pulled, field)
    assert not invalid.any()


def test_pull_follows_a_translation_at_half_resolution(rng):
    # The content moved 2 field pixels right (4 pixels of the flow, which has twice the
    # field's resolution): pixel x now shows what x - 2 showed; the left two columns are new.
    field = random_field(rng, (5, 8), (9, 9))
    flow = np.zeros((10, 16, 2), dtype=np.float32)
    flow[..., 0] = -4.0
    pulled, invalid = nnf_resample.pull_field_cpu(field, flow, source_shape=(9, 9))
    np.testing.assert_array_equal(pulled[:, 2:], field[:, :-2])
    np.testing.assert_array_equal(invalid[:, :2], 1)
    np.testing.assert_array_equal(invalid[:, 2:], 0)
    np.testing.assert_array_equal(pulled[:, :2], field[:, :1].repeat(2, axis=1))


def test_non_finite_flow_marks_invalid_without_moving(rng):
    field = random_field(rng, (4, 5), (6, 6))
    flow = np.zeros((4, 5, 2), dtype=np.float32)
    flow[1, 2, 0] = np.nan
    flow[3, 0, 1] = np.inf
    flow[0, 0, 1] = 1e30
    pulled, invalid = nnf_resample.pull_field_cpu(field, flow, source_shape=(6, 6))
    np.testing.assert_array_equal(pulled[[1, 3], [2, 0]], field[[1, 3], [2, 0]])
    np.testing.assert_array_equal(pulled[0, 0], field[3, 0])
    assert invalid.sum() == 3 and invalid[1, 2] and invalid[3, 0] and invalid[0, 0]


def test_flow_in_float64_is_accepted_on_the_host(rng):
    field = random_field(rng, (4, 5), (6, 6))
    flow = random_flow(rng, (4, 5), 2.0)
    expected = nnf_resample.pull_field_cpu(field, flow, source_shape=(6, 6))
    result = nnf_resample.pull_field_cpu(field, flow.astype(np.float64), source_shape=(6, 6))
    np.testing.assert_array_equal(result[0], expected[0])


def test_bad_inputs_raise():
    field = np.zeros((3, 3, 2), dtype=np.int32)
    with pytest.raises(ValueError, match="int32"):
        nnf_resample.upsample_field(field[..., :1], target_shape=(6, 6), source_shape=(6, 6))
    with pytest.raises(ValueError, match="target_shape"):
        nnf_resample.upsample_field(field, target_shape=(0, 6), source_shape=(6, 6))
    with pytest.raises(ValueError, match="flow"):
        nnf_resample.pull_field(field, np.zeros((3, 3), np.float32), source_shape=(3, 3))
    with pytest.raises(ValueError, match="source_shape"):
        nnf_resample.pull_field(field, np.zeros((3, 3, 2), np.float32), source_shape=(3,))


def test_traffic_bytes():
    assert nnf_resample.traffic_bytes(
        "upsample_field", field_shape=(28, 28, 2), out_shape=(56, 56)
    ) == 8 * (28 * 28 + 56 * 56)
    assert (
        nnf_resample.traffic_bytes("pull_field", field_shape=(10, 10), flow_shape=(20, 20, 2))
        == 8 * 400 + 17 * 100
    )
