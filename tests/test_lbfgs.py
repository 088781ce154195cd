"""L-BFGS and its strong-Wolfe line search on functions with known minima."""

import math

import naive
import numpy as np
import pytest
from inputs import random_quadratic

from diva_numba.optim.lbfgs import (
    CONVERGED,
    LINE_SEARCH_FAILED,
    MAX_ITERATIONS,
    LBFGSParams,
    minimize_lbfgs,
)
from diva_numba.optim.line_search import strong_wolfe_line_search


def rosenbrock(x):
    """Extended Rosenbrock function (sum over consecutive pairs); minimum 0 at all ones."""
    a, b = x[:-1], x[1:]
    value = np.sum(100.0 * (b - a**2) ** 2 + (1.0 - a) ** 2)
    grad = np.zeros_like(x)
    grad[:-1] += -400.0 * a * (b - a**2) - 2.0 * (1.0 - a)
    grad[1:] += 200.0 * (b - a**2)
    return float(value), grad


class Recorder:
    """Wraps an objective and keeps (x, value, grad) of every evaluation."""

    def __init__(self, fun_and_grad):
        self.fun_and_grad = fun_and_grad
        self.calls = []

    def __call__(self, x):
        value, grad = self.fun_and_grad(x)
        self.calls.append((x.copy(), float(value), grad.copy()))
        return value, grad

    def accepted_points(self, result):
        """The evaluation behind each entry of ``result.losses`` (the last one with that value)."""
        points = []
        for loss in result.losses:
            matches = [call for call in self.calls if call[1] == loss]
            assert matches, f"no evaluation gave loss {loss}"
            points.append(matches[-1])
        return points


# --- line search --------------------------------------------------------------------------


def check_strong_wolfe(result, phi0, dphi0, c1, c2):
    assert result.success
    assert result.value <= phi0 + c1 * result.step * dphi0
    assert abs(result.slope) <= -c2 * dphi0


@pytest.mark.parametrize("initial_step", [1e-6, 1.0, 1e3])
def test_line_search_on_rosenbrock_satisfies_strong_wolfe(rng, initial_step):
    # Too small, fair and far too large first steps exercise extrapolation and zoom.
    for _ in range(5):
        x = rng.uniform(-2, 2, size=4)
        value, grad = rosenbrock(x)
        direction = -grad / np.linalg.norm(grad)
        calls = []

        def phi(step, x=x, direction=direction, calls=calls):
            calls.append(step)
            f, g = rosenbrock(x + step * direction)
            return f, float(g @ direction)

        dphi0 = float(grad @ direction)
        result = strong_wolfe_line_search(
            phi, value, dphi0, initial_step=initial_step, max_evaluations=30
        )
        check_strong_wolfe(result, value, dphi0, 1e-4, 0.9)
        assert result.evaluations == len(calls) <= 30
        assert result.last_evaluated == (calls[-1] == result.step)


def test_line_search_with_tight_curvature_condition(rng):
    # c2 = 0.1 demands a near-exact minimiser of phi(a) = (a - a*)^4 + (a - a*)^2.
    optimum = rng.uniform(0.5, 5.0)

    def phi(step):
        u = step - optimum
        return u**4 + u**2, 4 * u**3 + 2 * u

    phi0, dphi0 = phi(0.0)
    result = strong_wolfe_line_search(phi, phi0, dphi0, curvature=0.1, max_evaluations=30)
    check_strong_wolfe(result, phi0, dphi0, 1e-4, 0.1)


def test_line_search_uses_the_given_first_trial():
    calls = []

    def phi(step):
        calls.append(step)
        return (step - 1.0) ** 2, 2 * (step - 1.0)

    result = strong_wolfe_line_search(phi, 1.0, -2.0, initial_step=1.0, first_trial=(0.0, 0.0))
    assert result.step == 1.0 and result.success and result.last_evaluated
    assert calls == [] and result.evaluations == 1


def test_line_search_backs_off_from_nan():
    def phi(step):
        if step > 0.5:
            return math.nan, math.nan
        return (step - 0.3) ** 2, 2 * (step - 0.3)

    phi0, dphi0 = phi(0.0)
    result = strong_wolfe_line_search(phi, phi0, dphi0, initial_step=1.0)
    check_strong_wolfe(result, phi0, dphi0, 1e-4, 0.9)


def test_line_search_gives_up_within_its_budget():
    # The slope claims descent but the function only rises: no acceptable step exists.
    calls = []

    def phi(step):
        calls.append(step)
        return 1.0 + step, -1.0

    result = strong_wolfe_line_search(phi, 1.0, -1.0, max_evaluations=7)
    assert not result.success and result.step == 0.0
    assert len(calls) <= 7


def test_line_search_rejects_ascent_directions():
    with pytest.raises(ValueError, match="descent"):
        strong_wolfe_line_search(lambda step: (0.0, 0.0), 0.0, 1.0)


# --- optimiser ----------------------------------------------------------------------------


def test_minimises_a_convex_quadratic(rng):
    fun_and_grad, minimiser = random_quadratic(rng, 30)
    x0 = rng.standard_normal(30)
    start = x0.copy()
    # |g| < 1e-6 |x| and smallest curvature 1 put x within 1e-6 |x| of the minimiser.
    result = minimize_lbfgs(fun_and_grad, x0, params=LBFGSParams(gradient_tolerance=1e-12))
    assert result.reason == CONVERGED and result.converged
    error = np.linalg.norm(result.x - minimiser)
    assert error <= 1e-6 * max(np.linalg.norm(result.x), 1.0)
    np.testing.assert_array_equal(x0, start)  # x0 untouched


def test_minimises_a_quadratic_in_float32(rng):
    fun_and_grad, minimiser = random_quadratic(rng, 20, dtype=np.float32)
    x0 = rng.standard_normal(20).astype(np.float32)
    result = minimize_lbfgs(fun_and_grad, x0)
    assert result.x.dtype == np.float32
    assert result.reason in (CONVERGED, LINE_SEARCH_FAILED)  # float32 may stall at rounding
    np.testing.assert_allclose(result.x, minimiser, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("size", [2, 6])
def test_minimises_rosenbrock(rng, size):
    x0 = np.tile([-1.2, 1.0], size // 2) + 0.1 * rng.standard_normal(size)
    params = LBFGSParams(max_iterations=500, gradient_tolerance=1e-18)
    result = minimize_lbfgs(rosenbrock, x0, params=params)
    assert result.reason == CONVERGED
    np.testing.assert_allclose(result.x, np.ones(size), atol=1e-6)
    assert result.loss < 1e-12
    assert result.evaluations <= 3 * result.iterations + 1


def test_accepted_steps_satisfy_strong_wolfe(rng):
    objective = Recorder(rosenbrock)
    x0 = np.array([-1.2, 1.0]) + 0.1 * rng.standard_normal(2)
    result = minimize_lbfgs(objective, x0, params=LBFGSParams(max_iterations=200))
    points = objective.accepted_points(result)
    assert len(points) == result.iterations + 1
    assert objective.calls[0][1] == result.losses[0]
    for (x, value, grad), (x_next, value_next, grad_next) in zip(points, points[1:], strict=False):
        # Both conditions are invariant to how the step splits into length and direction.
        step = x_next - x
        slope0 = grad @ step
        assert slope0 < 0
        assert value_next <= value + 1e-4 * slope0
        assert abs(grad_next @ step) <= 0.9 * abs(slope0) + 1e-12


def test_stopping_rule_is_honoured(rng):
    objective = Recorder(rosenbrock)
    x0 = np.array([-1.2, 1.0]) + 0.1 * rng.standard_normal(2)
    tolerance = 1e-10
    params = LBFGSParams(max_iterations=500, gradient_tolerance=tolerance)
    result = minimize_lbfgs(objective, x0, params=params)

    def small(point):
        x, _, grad = point
        return grad @ grad < tolerance * max(x @ x, 1.0)

    points = objective.accepted_points(result)
    assert result.reason == CONVERGED
    assert small(points[-1])
    assert not any(small(point) for point in points[:-1])  # stopped at the first one


def test_stops_at_the_iteration_limit(rng):
    objective = Recorder(rosenbrock)
    result = minimize_lbfgs(objective, np.array([-1.2, 1.0]), params=LBFGSParams(max_iterations=5))
    assert result.reason == MAX_ITERATIONS
    assert result.iterations == 5 and len(result.losses) == 6
    assert result.evaluations == len(objective.calls)


def test_converged_start_costs_one_evaluation():
    result = minimize_lbfgs(rosenbrock, np.ones(4))
    assert result.reason == CONVERGED
    assert (result.iterations, result.evaluations) == (0, 1)


def test_wrong_gradient_fails_without_moving(rng):
    # An objective whose "gradient" points uphill: no step can decrease it enough.
    def lying(x):
        value, grad = rosenbrock(x)
        return value, -grad

    x0 = rng.uniform(-2, 2, size=2)
    result = minimize_lbfgs(lying, x0)
    assert result.reason == LINE_SEARCH_FAILED
    np.testing.assert_array_equal(result.x, x0)
    assert result.loss == rosenbrock(x0)[0]


def test_loss_may_be_a_one_element_array(rng):
    fun_and_grad, minimiser = random_quadratic(rng, 10)

    def as_array(x):
        value, grad = fun_and_grad(x)
        return np.array([value]), grad

    result = minimize_lbfgs(as_array, rng.standard_normal(10))
    assert result.converged
    np.testing.assert_allclose(result.x, minimiser, rtol=1e-3, atol=1e-3)


def test_works_on_shaped_arrays(rng):
    fun_and_grad, minimiser = random_quadratic(rng, 12)

    def shaped(x):
        assert x.shape == (3, 4)
        value, grad = fun_and_grad(x.reshape(-1))
        return value, grad.reshape(3, 4)

    result = minimize_lbfgs(shaped, rng.standard_normal((3, 4)))
    assert result.x.shape == (3, 4)
    np.testing.assert_allclose(result.x.reshape(-1), minimiser, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("pairs", [[], [1], [2, 0, 3], [3, 1, 0, 2]])
def test_two_loop_on_inner_products_is_the_vector_recursion(rng, pairs):
    """The direction from the Gram matrix is the two-loop recursion's ``-H g``."""
    from diva_numba.optim.lbfgs import _State

    history, size = 4, 15
    state = _State(np.zeros(size), history)
    steps = rng.standard_normal((history, size))
    spd = np.eye(size) + 0.3 * np.cov(rng.standard_normal((size, 3 * size)))
    changes = steps @ spd  # y = A s: positive curvature
    gradient = rng.standard_normal(size)
    basis = np.concatenate([steps, changes, gradient[None]])
    state.gram[:] = basis @ basis.T
    state.pairs = list(pairs)
    direction = np.asarray(state.direction_coefficients()) @ basis
    expected = naive.two_loop_direction(
        [steps[k] for k in pairs], [changes[k] for k in pairs], gradient
    )
    np.testing.assert_allclose(direction, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "changes",
    [
        {"history": 0},
        {"history": 9},
        {"max_iterations": -1},
        {"sufficient_decrease": 0.95},
        {"curvature": 1.0},
        {"max_line_search_evaluations": 0},
    ],
)
def test_params_are_validated(changes):
    with pytest.raises(ValueError):
        LBFGSParams(**changes)
