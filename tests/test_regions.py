"""Deconvolving only what changed: boxes around new content, crops exact inside them."""

import numpy as np
import pytest
from inputs import vgg_weights

from diva_numba.models import vgg
from diva_numba.network.regions import (
    changed_boxes,
    deconvolve_boxes,
    pooling_factor,
    receptive_radius,
)
from diva_numba.network.subnetwork import SubNetwork, deconvolve
from diva_numba.optim.lbfgs import LBFGSParams

CHANNELS = {"1": 3, "2": 4, "3": 5, "4": 6, "5": 7}
DECONVOLUTIONS = [(3, 5), (2, 4), (1, 3), (0, 2)]


def input_map(rng, level, height, width):
    channels = 3 if level == 0 else CHANNELS[str(level)]
    x = rng.standard_normal((channels, height, width))
    return (np.abs(x) if level > 0 else x).astype(np.float32)


@pytest.mark.parametrize(
    ("levels", "radius", "factor"),
    [((3, 5), 18, 4), ((2, 4), 16, 4), ((1, 3), 12, 4), ((0, 2), 5, 2)],
)
def test_receptive_radius_and_pooling(levels, radius, factor):
    layers = vgg.layers_between(*levels)
    assert (receptive_radius(layers), pooling_factor(layers)) == (radius, factor)


def test_a_frame_with_nothing_new_has_no_box_and_one_mostly_new_is_solved_whole():
    layers = vgg.layers_between(1, 3)
    assert changed_boxes(np.zeros((72, 128), bool), layers) == []
    assert changed_boxes(np.ones((72, 128), bool), layers) is None


def test_a_pan_border_is_solved_in_two_strips_that_cover_it():
    """The new content of a pan is an L along two edges: two boxes, not the whole map."""
    layers = vgg.layers_between(1, 3)
    height, width = 144, 256
    new = np.zeros((height, width), bool)
    new[:, -20:] = True
    new[-6:, :] = True
    boxes = changed_boxes(new, layers)
    assert boxes is not None and len(boxes) == 2
    covered = np.zeros_like(new)
    for box in boxes:
        top, bottom, left, right = box.keep
        covered[top:bottom, left:right] = True
        solve_top, solve_bottom, solve_left, solve_right = box.solve
        assert solve_top <= top and bottom <= solve_bottom
        assert solve_left <= left and right <= solve_right
        # Crops start on the pooling grid and end on it or at the map's edge.
        assert solve_top % 4 == 0 and solve_left % 4 == 0
        assert solve_bottom % 4 == 0 or solve_bottom == height
        assert solve_right % 4 == 0 or solve_right == width
    assert covered[new].all()
    assert sum(box.solve_area for box in boxes) < 0.5 * height * width


@pytest.mark.parametrize("levels", DECONVOLUTIONS)
def test_a_crop_computes_the_full_maps_outputs_away_from_its_edges(rng, levels):
    """On the pooling grid, a crop's outputs farther than the receptive radius from its
    inner edges are exactly the full map's."""
    network = SubNetwork(vgg_weights(rng, CHANNELS), *levels)
    factor, radius = pooling_factor(network.layers), receptive_radius(network.layers)
    height, width = 6 * radius, 5 * radius + 3  # odd: the crop reaches the ceil-pooled edge
    x = input_map(rng, levels[0], height, width)
    top, left = 2 * factor, factor * (radius // factor + 1)
    full = network.forward(x)
    crop = network.forward(np.ascontiguousarray(x[:, top:, left:]))
    inner = -(-radius // factor)  # output cells the crop's padding reaches
    np.testing.assert_allclose(
        crop[:, inner:, inner:], full[:, top // factor + inner :, left // factor + inner :],
        rtol=1e-5, atol=1e-5,
    )  # fmt: skip


def test_solving_the_boxes_changes_them_alone_and_lowers_the_loss(rng):
    network = SubNetwork(vgg_weights(rng, CHANNELS), 0, 2)
    height, width = 48, 64
    truth = input_map(rng, 0, height, width)
    target = network.forward(truth)
    warm = truth.copy()
    warm[:, 30:40, 40:52] = input_map(rng, 0, 10, 12)  # new content, solved wrong
    new = np.zeros((height, width), bool)
    new[30:40, 40:52] = True
    boxes = changed_boxes(new, network.layers, tile=8)
    assert boxes is not None and len(boxes) == 1
    solution = warm.copy()
    params = LBFGSParams(max_iterations=20)
    results = deconvolve_boxes(
        lambda net, goal, start: deconvolve(net, goal, start, params=params),
        network, target, solution, boxes,
    )  # fmt: skip
    assert len(results) == 1 and results[0].loss < results[0].losses[0]
    top, bottom, left, right = boxes[0].keep
    outside = np.ones((height, width), bool)
    outside[top:bottom, left:right] = False
    np.testing.assert_array_equal(solution[:, outside], warm[:, outside])

    def loss(x):
        return float(((network.forward(x) - target) ** 2).sum())

    assert loss(solution) < 0.5 * loss(warm)
