"""Where an anchor frame keeps what the frames before it carried."""

import dataclasses

import cv2
import numpy as np
import pytest

from diva_numba.run.anchor_agreement import anchor_synthesis, look_difference, own_analogy
from diva_numba.run.anchor_frames import AnchorParams
from diva_numba.run.params import TransferParams
from diva_numba.synthesis.scales import carried_pixels
from diva_numba.synthesis.temporal_guide import TemporalGuide


def grey(lightness: float, shape=(24, 32)) -> np.ndarray:
    """A flat grey of CIE lightness ``lightness``."""
    lab = np.zeros((*shape, 3), np.float32)
    lab[..., 0] = lightness
    rgb = cv2.cvtColor(lab, cv2.COLOR_Lab2RGB)
    return np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8)


def test_two_looks_differ_by_their_colour_and_by_their_strokes():
    flat = grey(50)
    np.testing.assert_array_equal(look_difference(flat, flat), 0)
    darker = look_difference(flat, grey(40))
    np.testing.assert_allclose(darker, 10, atol=0.5)
    # Strokes of +-10 in lightness about the same mean: the same colour, another look.
    strokes = flat.copy()
    strokes[:, ::2] = grey(60)[:, ::2]
    strokes[:, 1::2] = grey(40)[:, 1::2]
    inner = look_difference(flat, strokes)[6:-6, 6:-6]
    assert 8 < inner.min() and inner.max() < 12
    with pytest.raises(ValueError, match="shape"):
        look_difference(flat, grey(50, (24, 30)))


def test_an_anchor_starts_from_what_was_carried_only_where_it_looks_as_its_own_analogy():
    own = grey(50)
    earlier = cv2.resize(own, (128, 96), interpolation=cv2.INTER_NEAREST)
    earlier[:, 64:] = cv2.resize(grey(30), (64, 96), interpolation=cv2.INTER_NEAREST)
    reliability = np.ones((96, 128), np.float32)
    field = np.zeros((96, 128, 2), np.int32)
    temporal = TemporalGuide(earlier, reliability, 1.0, field)
    synthesis = TransferParams().synthesis
    params = AnchorParams(agreement=5.0, temporal_weight=0.5)
    searched, guide = anchor_synthesis(synthesis, temporal, own, params)
    assert (searched.fine_search, searched.coarse_search) == ("everywhere", "everywhere")
    assert guide.field is field and guide.previous is earlier and guide.weight == 0.5
    assert guide.reliability is reliability  # a guide everywhere
    np.testing.assert_array_equal(guide.carry[:, :48], 1.0)  # the same look
    np.testing.assert_array_equal(guide.carry[:, 80:], 0.0)  # 20 Lab darker
    unchanged = anchor_synthesis(synthesis, temporal, own, AnchorParams(agreement=None))
    assert unchanged == (synthesis, temporal)
    _, everywhere = anchor_synthesis(synthesis, temporal, own, AnchorParams(agreement=100.0))
    np.testing.assert_array_equal(everywhere.carry, 1.0)
    same = dataclasses.replace(temporal, previous=cv2.resize(own, (128, 96)))
    _, afresh = anchor_synthesis(synthesis, same, own, AnchorParams(agreement=0.0))
    np.testing.assert_array_equal(afresh.carry, 0.0)  # 0: even the same look starts afresh
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            AnchorParams(agreement=bad)
        with pytest.raises(ValueError):
            AnchorParams(temporal_weight=bad)


def test_a_scale_starts_from_the_carried_field_where_trusted_and_carried():
    reliability = np.array([[1.0, 1.0, 0.5, 0.0]], np.float32)
    np.testing.assert_array_equal(carried_pixels(reliability), [[True, True, False, False]])
    carry = np.array([[1.0, 0.0, 1.0, 1.0]], np.float32)
    np.testing.assert_array_equal(carried_pixels(reliability, carry), [[True, False, False, False]])


def test_an_anchor_s_own_analogy_is_the_style_through_its_field():
    style = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    field = np.array([[[0, 0], [3, 4]], [[1, 2], [2, 1]]], np.int32)
    own = own_analogy(style, field)
    np.testing.assert_array_equal(own, [[style[0, 0], style[3, 4]], [style[1, 2], style[2, 1]]])
