"""Draws and checks shared by the property tests (tests/test_properties*.py)."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

SIDES = st.integers(1, 20)
SEEDS = st.integers(0, 2**32 - 1)


def assert_field_inside(field, shape, bounds):
    """``field`` is int32 ``(*shape, 2)`` with ``0 <= y < bounds[0]`` and ``0 <= x < bounds[1]``."""
    field = np.asarray(field)
    assert field.dtype == np.int32
    assert field.shape == (*shape, 2)
    assert field.min() >= 0
    assert field[..., 0].max() < bounds[0]
    assert field[..., 1].max() < bounds[1]


def assert_finite(array):
    assert np.isfinite(np.asarray(array)).all()


def assert_normalized(normalized):
    """Finite, and no pixel's channel vector longer than 1."""
    assert_finite(normalized)
    norms = np.sqrt((np.asarray(normalized, np.float64) ** 2).sum(axis=0))
    assert norms.max() <= 1 + 1e-6
