"""The gradient-domain solver against a sparse direct solve, and its blend's promises."""

import time

import numpy as np
import pytest
import scipy.sparse as sparse
import scipy.sparse.linalg as sparse_linalg

from diva_numba.finishing.poisson import (
    PoissonParams,
    blend,
    divergence,
    gradients,
    solve_anchored,
    solve_screened,
)


def negative_laplacian(height: int, width: int):
    """The 5-point -Laplacian with reflecting borders, as a sparse matrix."""

    def second_difference(n):
        diagonal = np.full(n, 2.0)
        diagonal[[0, -1]] = 1.0
        return sparse.diags([diagonal, -np.ones(n - 1), -np.ones(n - 1)], [0, 1, -1])

    return sparse.kron(sparse.eye(height), second_difference(width)) + sparse.kron(
        second_difference(height), sparse.eye(width)
    )


def screened_poisson(anchor, gx, gy, screening):
    """The image closest to ``anchor`` whose gradients are closest to ``(gx, gy)``.

    Minimises ``|u - anchor|^2 + screening * |grad u - g|^2`` with the module's own
    pieces, as the blend composes them.
    """
    return solve_screened(anchor - screening * divergence(gx, gy), screening)


def sparse_solve(rhs, anchoring, screening):
    height, width, channels = rhs.shape
    matrix = (sparse.diags(anchoring.ravel().astype(np.float64))
              + screening * negative_laplacian(height, width)).tocsc()  # fmt: skip
    return np.stack([sparse_linalg.spsolve(matrix, rhs[..., c].ravel().astype(np.float64))
                     .reshape(height, width) for c in range(channels)], axis=-1)  # fmt: skip


def test_divergence_of_gradients_is_the_reflecting_laplacian(rng):
    u = rng.standard_normal((9, 13)).astype(np.float64)
    lap = divergence(*gradients(u))
    np.testing.assert_allclose(-lap.ravel(), negative_laplacian(9, 13) @ u.ravel(), atol=1e-12)


@pytest.mark.parametrize("screening", [0.5, 9.0, 400.0])
def test_dct_solve_matches_a_sparse_direct_solve(rng, screening):
    rhs = rng.standard_normal((23, 31, 3)).astype(np.float32)
    got = solve_screened(rhs, screening)
    assert got.dtype == np.float32 and got.shape == rhs.shape
    want = sparse_solve(rhs, np.ones(rhs.shape[:2]), screening)
    np.testing.assert_allclose(got, want, atol=2e-5 * np.abs(want).max())


def test_anchored_solve_matches_a_sparse_direct_solve(rng):
    rhs = rng.standard_normal((20, 30, 3)).astype(np.float32)
    anchoring = rng.uniform(0.04, 1.0, (20, 30)).astype(np.float32)
    exact = PoissonParams(tolerance=1e-6, iterations=200)
    got = solve_anchored(rhs, anchoring, 9.0, exact)
    want = sparse_solve(rhs, anchoring, 9.0)
    np.testing.assert_allclose(got, want, atol=1e-4 * np.abs(want).max())
    # The default stops at 1% of the residual: within a few % of the answer.
    rough = solve_anchored(rhs, anchoring, 9.0)
    assert np.abs(rough - want).max() < 0.05 * np.abs(want).max()


def test_an_image_with_its_own_gradients_is_its_own_solution(rng):
    image = rng.uniform(0, 255, (30, 40, 3)).astype(np.float32)
    np.testing.assert_allclose(screened_poisson(image, *gradients(image), 25.0), image, atol=1e-3)


def test_blend_is_the_average_where_weights_do_not_change(rng):
    a, b = (rng.uniform(0, 255, (24, 32, 3)).astype(np.float32) for _ in range(2))
    constant = np.full((24, 32), 0.25, np.float32)
    np.testing.assert_array_equal(blend([a, b], [constant, 1 - constant]),
                                  0.25 * a + 0.75 * b)  # fmt: skip
    np.testing.assert_array_equal(blend([a], [np.ones((24, 32), np.float32)]), a)


def test_blend_turns_a_step_into_a_smooth_ramp_and_keeps_the_far_colours():
    height, width = 40, 400
    a = np.full((height, width, 3), 50.0, np.float32)
    b = np.full((height, width, 3), 150.0, np.float32)
    weight = np.zeros((height, width), np.float32)
    weight[:, width // 2 :] = 1.0
    params = PoissonParams(spread=0.02)  # L = 8 px
    out = blend([a, b], [1 - weight, weight], params)[height // 2, :, 0]
    assert np.all(np.diff(out) >= -1e-3)  # monotone: no ringing
    assert np.abs(np.diff(out)).max() < 100 / (2 * 8) * 1.2  # the step, spread over ~2L
    assert abs(out[0] - 50) < 0.5 and abs(out[-1] - 150) < 0.5
    # The solve runs on the seams' box grown by the margin: the same as the whole frame.
    whole = blend([a, b], [1 - weight, weight], PoissonParams(spread=0.02, margin=100))
    np.testing.assert_allclose(out, whole[height // 2, :, 0], atol=0.3)


def test_blend_holds_the_firmly_anchored_side():
    height, width = 20, 300
    a = np.full((height, width, 3), 50.0, np.float32)
    b = np.full((height, width, 3), 150.0, np.float32)
    weight = np.zeros((height, width), np.float32)
    weight[:, 150:] = 1.0
    anchoring = np.where(weight > 0, 0.04, 1.0).astype(np.float32)
    params = PoissonParams(spread=0.02, tolerance=1e-4, iterations=50)
    held = blend([a, b], [1 - weight, weight], params, anchoring)[10, :, 0]
    free = blend([a, b], [1 - weight, weight], params)[10, :, 0]
    # The step is taken up mostly on the loosely held side (b's).
    assert abs(held[149] - 50) < 0.5 * abs(free[149] - 50)
    assert abs(held[150] - 150) > abs(free[150] - 150)


def test_blend_is_fast_at_1080p(rng):
    """About 0.2-0.5 s on two cores; the bound only catches a lost fast path."""
    height, width = 1080, 1920
    a = rng.uniform(0, 255, (height, width, 3)).astype(np.float32)
    b = rng.uniform(0, 255, (height, width, 3)).astype(np.float32)
    weight = np.zeros((height, width), np.float32)
    weight[200:900, 700:1500] = 1.0
    blend([a, b], [1 - weight, weight])  # FFT plans
    start = time.perf_counter()
    blend([a, b], [1 - weight, weight])
    seconds = time.perf_counter() - start
    start = time.perf_counter()
    _ = (1 - weight)[..., None] * a + weight[..., None] * b
    average = time.perf_counter() - start
    print(f"1920x1080 blend {seconds:.3f} s, plain average {average:.3f} s")
    assert seconds < 4.0
