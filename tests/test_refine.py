"""WLS smoothing and the photo refinement."""

import numpy as np

from diva_numba.finishing.refine import WLSParams, refine_photo, wls_smooth


def dense_wls(image, guide, params):
    """The WLS system assembled densely, link by link, and solved directly."""
    height, width = guide.shape
    log_guide = np.log(guide + params.epsilon)
    system = np.eye(height * width)

    def link(i, j, difference):
        weight = params.smoothness / (abs(difference) ** params.edge_exponent + params.epsilon)
        system[i, i] += weight
        system[j, j] += weight
        system[i, j] -= weight
        system[j, i] -= weight

    for y in range(height):
        for x in range(width):
            if x + 1 < width:
                link(y * width + x, y * width + x + 1, log_guide[y, x + 1] - log_guide[y, x])
            if y + 1 < height:
                link(y * width + x, (y + 1) * width + x, log_guide[y + 1, x] - log_guide[y, x])
    flat = image.reshape(height * width, -1)
    return np.linalg.solve(system, flat).reshape(image.shape)


def test_wls_matches_the_dense_solution(rng):
    params = WLSParams(smoothness=float(rng.uniform(0.2, 2)), edge_exponent=1.2)
    for shape in ((9, 7), (1, 5), (6, 6, 3)):
        image = rng.random(shape)
        guide = rng.random(shape[:2])
        np.testing.assert_allclose(
            wls_smooth(image, guide, params=params), dense_wls(image, guide, params), atol=1e-5
        )


def test_wls_keeps_edges_of_the_guide_and_smooths_flat_regions(rng):
    guide = np.full((20, 20), 0.2)
    guide[:, 10:] = 0.9
    image = guide + rng.normal(0, 0.05, guide.shape)
    smoothed = wls_smooth(image, guide)
    assert smoothed[:, :10].std() < 0.3 * image[:, :10].std()
    assert smoothed[:, 10:].mean() - smoothed[:, :10].mean() > 0.6


def test_refine_puts_the_detail_of_a_under_the_colours_of_a_prime(rng):
    a = rng.integers(40, 200, (24, 32, 3)).astype(np.uint8)
    assert np.abs(refine_photo(a, a).astype(int) - a).max() <= 1
    tinted = np.clip(a.astype(int) + [30, -20, 10], 0, 255).astype(np.uint8)
    refined = refine_photo(tinted, a)
    np.testing.assert_allclose(refined.astype(int) - a, np.broadcast_to([30, -20, 10], a.shape),
                               atol=2)  # fmt: skip
