"""Limited-memory BFGS with a strong-Wolfe line search, on NumPy or GPU arrays.

See docs/DESIGN.md section 2.

The deconvolution step of the analogy minimises ``sum((CNN(R) - T)**2)`` over a
feature map ``R`` with L-BFGS (history 4, at most 100 iterations). This module is
that optimiser, written so that a GPU run stays on the GPU:

* every vector operation (the two-loop recursion, trial points, curvature pairs)
  is a kernel of :mod:`diva_numba.kernels.lbfgs_ops`, on NumPy arrays (CPU twins)
  or GPU arrays (CUDA kernels) alike;
* scalars that only feed vector updates (``s.d``, ``y.d``, ``y.s``, ``y.y``) stay
  in a float64 register on the device; the host reads that register once per
  function evaluation (loss, slope ``g.d``, ``|g|^2``, ``|x|^2`` in one transfer),
  because the line search must decide on them.

Conventions (those of liblbfgs, which the official Deep Image Analogy code uses):

* convergence: stop when ``|g|^2 < gradient_tolerance * max(|x|^2, 1)``
  (``|g| / max(|x|, 1) < 1e-4`` with the default ``1e-8``);
* initial step: ``1 / |g|`` whenever the direction is plain steepest descent (first
  iteration, or after the history was dropped), so the first trial point moves
  ``x`` by one unit; ``1`` otherwise, the natural L-BFGS step;
* line search: Nocedal & Wright's bracketing + zoom (Algorithms 3.5 and 3.6) with
  safeguarded cubic interpolation; it ends on the strong Wolfe conditions
  ``f(a) <= f(0) + c1 a f'(0)`` and ``|f'(a)| <= c2 |f'(0)|``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from diva_numba.device import to_host
from diva_numba.kernels import lbfgs_ops
from diva_numba.kernels.targets import device_empty, device_zeros, is_cuda_array

CONVERGED = "converged"
MAX_ITERATIONS = "max_iterations"
LINE_SEARCH_FAILED = "line_search_failed"


@dataclass(frozen=True)
class LBFGSParams:
    """Tuning of :func:`minimize_lbfgs`.

    Attributes
    ----------
    history : int
        Curvature pairs kept (``m``).
    max_iterations : int
        Iterations (accepted steps) at most.
    gradient_tolerance : float
        Stop when ``|g|^2 < gradient_tolerance * max(|x|^2, 1)``.
    sufficient_decrease : float
        ``c1`` of the Armijo condition.
    curvature : float
        ``c2`` of the strong Wolfe curvature condition; ``c1 < c2 < 1``.
    max_line_search_evaluations : int
        Function evaluations per line search at most.
    """

    history: int = 4
    max_iterations: int = 100
    gradient_tolerance: float = 1e-8
    sufficient_decrease: float = 1e-4
    curvature: float = 0.9
    max_line_search_evaluations: int = 20

    def __post_init__(self):
        if self.history < 1:
            raise ValueError(f"history must be >= 1, got {self.history}")
        if self.max_iterations < 0:
            raise ValueError(f"max_iterations must be >= 0, got {self.max_iterations}")
        if not 0 < self.sufficient_decrease < self.curvature < 1:
            raise ValueError(
                "need 0 < sufficient_decrease < curvature < 1, got "
                f"{self.sufficient_decrease}, {self.curvature}"
            )
        if self.max_line_search_evaluations < 1:
            raise ValueError("max_line_search_evaluations must be >= 1")


@dataclass(frozen=True)
class LBFGSResult:
    """Outcome of :func:`minimize_lbfgs`.

    Attributes
    ----------
    x : array, shape and device of ``x0``
        The best point found (the last accepted one).
    loss : float
        Objective at ``x``.
    iterations : int
        Accepted steps.
    evaluations : int
        Calls of the objective, the initial one included.
    reason : {"converged", "max_iterations", "line_search_failed"}
        Why the optimiser stopped.
    losses : tuple of float
        Objective at ``x0`` and after each accepted step.
    """

    x: object
    loss: float
    iterations: int
    evaluations: int
    reason: str
    losses: tuple[float, ...]

    @property
    def converged(self) -> bool:
        return self.reason == CONVERGED


@dataclass(frozen=True)
class LineSearchResult:
    """Outcome of :func:`strong_wolfe_line_search`.

    Attributes
    ----------
    step : float
        Accepted step; 0 when no step decreased the objective enough.
    value, slope : float
        ``phi(step)`` and ``phi'(step)``.
    evaluations : int
        Calls of ``phi`` (a ``first_trial`` counts as one).
    success : bool
        Whether ``step`` satisfies the strong Wolfe conditions. A failed search may
        still return a step with sufficient decrease (the best bracket end).
    last_evaluated : bool
        Whether ``step`` was the last step passed to ``phi``; if not, a caller that
        keeps state from ``phi`` must evaluate ``step`` again.
    """

    step: float
    value: float
    slope: float
    evaluations: int
    success: bool
    last_evaluated: bool


@dataclass
class _Point:
    step: float
    value: float
    slope: float


def _cubic_minimiser(a: _Point, b: _Point) -> float:
    """Minimiser of the cubic matching values and slopes at ``a`` and ``b`` (NaN if none)."""
    if a.step == b.step:
        return math.nan
    d1 = a.slope + b.slope - 3.0 * (a.value - b.value) / (a.step - b.step)
    radicand = d1 * d1 - a.slope * b.slope
    if not radicand >= 0.0:  # also catches NaN
        return math.nan
    d2 = math.copysign(math.sqrt(radicand), b.step - a.step)
    denominator = b.slope - a.slope + 2.0 * d2
    if denominator == 0.0:
        return math.nan
    return b.step - (b.step - a.step) * (b.slope + d2 - d1) / denominator


def _interpolate(lo: _Point, hi: _Point) -> float:
    """Next trial inside the bracket: cubic, kept off its ends, else bisection."""
    left, right = min(lo.step, hi.step), max(lo.step, hi.step)
    margin = 0.1 * (right - left)
    trial = _cubic_minimiser(lo, hi)
    if math.isfinite(trial) and left + margin <= trial <= right - margin:
        return trial
    return 0.5 * (left + right)


def _extrapolate(previous: _Point, current: _Point) -> float:
    """Next trial beyond ``current`` while no bracket is known: cubic, clamped to 2x-5x."""
    width = current.step - previous.step
    low, high = current.step + width, current.step + 4.0 * width
    trial = _cubic_minimiser(previous, current)
    if math.isfinite(trial):
        return min(max(trial, low), high)
    return high


def strong_wolfe_line_search(
    phi: Callable[[float], tuple[float, float]],
    phi0: float,
    dphi0: float,
    *,
    initial_step: float = 1.0,
    sufficient_decrease: float = 1e-4,
    curvature: float = 0.9,
    max_evaluations: int = 20,
    first_trial: tuple[float, float] | None = None,
) -> LineSearchResult:
    """Find a step satisfying the strong Wolfe conditions along a descent direction.

    Nocedal & Wright, *Numerical Optimization*, Algorithms 3.5 (bracketing) and 3.6
    (zoom), with safeguarded cubic interpolation. A NaN or infinite value counts as
    a failed sufficient-decrease test, so the search backs off from it.

    Parameters
    ----------
    phi : callable ``step -> (value, slope)``
        The objective along the direction and its derivative with respect to the step.
    phi0, dphi0 : float
        ``phi(0)`` and ``phi'(0)``; ``dphi0`` must be negative.
    initial_step : float
        First trial step.
    sufficient_decrease, curvature : float
        ``c1`` and ``c2`` of the strong Wolfe conditions.
    max_evaluations : int
        Calls of ``phi`` at most.
    first_trial : (value, slope), optional
        ``phi(initial_step)`` when the caller already evaluated it.

    Returns
    -------
    LineSearchResult
    """
    if not dphi0 < 0:
        raise ValueError(f"not a descent direction: phi'(0) = {dphi0}")
    evaluations = 0
    last_step = math.nan

    def probe(step: float) -> _Point:
        nonlocal evaluations, last_step
        evaluations += 1
        last_step = step
        value, slope = phi(step)
        return _Point(step, float(value), float(slope))

    def decreases_enough(point: _Point) -> bool:
        return point.value <= phi0 + sufficient_decrease * point.step * dphi0

    def flat_enough(point: _Point) -> bool:
        return abs(point.slope) <= -curvature * dphi0

    def finish(point: _Point, success: bool) -> LineSearchResult:
        return LineSearchResult(
            point.step, point.value, point.slope, evaluations, success, point.step == last_step
        )

    def zoom(lo: _Point, hi: _Point) -> LineSearchResult:
        # Invariants: lo has sufficient decrease and the lowest value seen; a point
        # satisfying the strong Wolfe conditions lies between lo and hi.
        while evaluations < max_evaluations:
            if abs(hi.step - lo.step) <= 1e-12 * max(abs(lo.step), abs(hi.step)):
                break
            point = probe(_interpolate(lo, hi))
            if not decreases_enough(point) or point.value >= lo.value:
                hi = point
                continue
            if flat_enough(point):
                return finish(point, True)
            if point.slope * (hi.step - lo.step) >= 0:
                hi = lo
            lo = point
        return finish(lo, False)

    previous = _Point(0.0, phi0, dphi0)
    if first_trial is None:
        current = probe(initial_step)
    else:
        evaluations = 1
        last_step = initial_step
        current = _Point(initial_step, float(first_trial[0]), float(first_trial[1]))
    while True:
        if not decreases_enough(current) or (previous.step > 0 and current.value >= previous.value):
            return zoom(previous, current)
        if flat_enough(current):
            return finish(current, True)
        if current.slope >= 0:
            return zoom(current, previous)
        if evaluations >= max_evaluations:
            return finish(current, False)
        previous, current = current, probe(_extrapolate(previous, current))


class _Register:
    """Slots of the float64 scalar register shared with the vector kernels."""

    ZERO = 0  # always 0.0: lets add_scaled express a plain ratio
    LOSS = 1
    TRIAL_SLOPE = 2  # g(x + a d) . d
    TRIAL_GRAD_SQUARED = 3
    TRIAL_X_SQUARED = 4
    SLOPE0 = 5  # g(x) . d
    SECOND_LOOP = 6  # y_k . d in the second loop
    FIRST_PAIR = 7  # then per pair k: y.s, y.y, s.d of the first loop

    @classmethod
    def size(cls, history: int) -> int:
        return cls.FIRST_PAIR + 3 * history

    @classmethod
    def pair(cls, k: int) -> tuple[int, int, int]:
        """Slots ``(y.s, y.y, s.d)`` of history pair ``k``."""
        base = cls.FIRST_PAIR + 3 * k
        return base, base + 1, base + 2


class _State:
    """Buffers of one minimisation: point, gradient, direction, trial point, pairs."""

    def __init__(self, x0, history: int):
        self.shape = x0.shape
        size = x0.size
        on_gpu = is_cuda_array(x0)

        def vector():
            if on_gpu:
                return device_empty((size,), x0.dtype, like=x0)
            return np.empty(size, dtype=x0.dtype)

        self.x, self.trial, self.gradient, self.direction = (vector() for _ in range(4))
        self.steps = [vector() for _ in range(history)]
        self.gradient_changes = [vector() for _ in range(history)]
        register_size = _Register.size(history)
        if on_gpu:
            self.scalars = device_zeros((register_size,), np.float64, like=x0)
        else:
            self.scalars = np.zeros(register_size, dtype=np.float64)
        self.pairs: list[int] = []  # pair slots, oldest first
        self.history = history


def _steepest_descent(state: _State) -> None:
    lbfgs_ops.combine(state.direction, state.gradient, state.gradient, alpha=-1.0, beta=0.0)


def _two_loop_direction(state: _State) -> None:
    """``direction = -H g`` by the two-loop recursion, all scalars on the device."""
    scalars, direction, R = state.scalars, state.direction, _Register
    _steepest_descent(state)
    for k in reversed(state.pairs):
        ys, _, sd = R.pair(k)
        lbfgs_ops.dot(state.steps[k], direction, scalars, sd)
        lbfgs_ops.add_scaled(
            direction, state.gradient_changes[k], scalars, plus=R.ZERO, minus=sd, over=ys
        )
    if state.pairs:
        ys, yy, _ = R.pair(state.pairs[-1])
        lbfgs_ops.scale(direction, scalars, numerator=ys, denominator=yy)
    for k in state.pairs:
        ys, _, sd = R.pair(k)
        lbfgs_ops.dot(state.gradient_changes[k], direction, scalars, R.SECOND_LOOP)
        lbfgs_ops.add_scaled(
            direction, state.steps[k], scalars, plus=sd, minus=R.SECOND_LOOP, over=ys
        )


def _accept(state: _State, trial_grad, *, curvature_estimate: float) -> None:
    """Take the trial point: record the pair (s, y), then make it the current point.

    ``curvature_estimate`` is ``y.s`` computed on the host from the line search's
    slopes; a pair without positive curvature would break the BFGS update and is
    not kept.
    """
    if len(state.pairs) == state.history:
        k = state.pairs.pop(0)
    else:
        k = min(set(range(state.history)) - set(state.pairs))
    step, change = state.steps[k], state.gradient_changes[k]
    lbfgs_ops.combine(step, state.trial, state.x, alpha=1.0, beta=-1.0)
    lbfgs_ops.combine(change, trial_grad, state.gradient, alpha=1.0, beta=-1.0)
    ys, yy, _ = _Register.pair(k)
    lbfgs_ops.dot(change, step, state.scalars, ys)
    lbfgs_ops.dot(change, change, state.scalars, yy)
    if curvature_estimate > 0:
        state.pairs.append(k)
    state.x, state.trial = state.trial, state.x
    lbfgs_ops.combine(state.gradient, trial_grad, trial_grad, alpha=1.0, beta=0.0)


def minimize_lbfgs(
    fun_and_grad: Callable,
    x0,
    *,
    params: LBFGSParams = LBFGSParams(),  # noqa: B008 (frozen, so sharing it is safe)
) -> LBFGSResult:
    """Minimise a smooth function with L-BFGS and a strong-Wolfe line search.

    Parameters
    ----------
    fun_and_grad : callable ``x -> (loss, grad)``
        ``x`` has the shape, dtype and device of ``x0``; ``grad`` likewise. ``loss`` is
        a float or a one-element float array on ``x``'s device (read together with
        the optimiser's own scalars, in one transfer). The optimiser copies what it
        keeps before calling again, so ``grad`` and ``loss`` may be buffers that the
        next call overwrites; ``x`` must not be kept or modified.
    x0 : float32 or float64 array (NumPy, or a GPU array), C-contiguous
        Starting point; not modified.
    params : LBFGSParams

    Returns
    -------
    LBFGSResult
    """
    state = _State(x0, params.history)
    R = _Register
    scalars = state.scalars
    evaluations = 0
    fetched = np.zeros(R.size(params.history))
    latest_grad = None

    def evaluate(point) -> None:
        """Objective, slope, |g|^2 and |x|^2 at ``point``; the one host sync per call."""
        nonlocal evaluations, fetched, latest_grad
        evaluations += 1
        loss, grad = fun_and_grad(point.reshape(state.shape))
        latest_grad = grad.reshape(-1)
        lbfgs_ops.copy_scalar(loss, scalars, R.LOSS)
        lbfgs_ops.dot(latest_grad, state.direction, scalars, R.TRIAL_SLOPE)
        lbfgs_ops.dot(latest_grad, latest_grad, scalars, R.TRIAL_GRAD_SQUARED)
        lbfgs_ops.dot(point, point, scalars, R.TRIAL_X_SQUARED)
        fetched = to_host(scalars)

    def phi(step: float) -> tuple[float, float]:
        lbfgs_ops.combine(state.trial, state.x, state.direction, alpha=1.0, beta=step)
        evaluate(state.trial)
        return float(fetched[R.LOSS]), float(fetched[R.TRIAL_SLOPE])

    def converged() -> bool:
        x_squared = float(fetched[R.TRIAL_X_SQUARED])
        return fetched[R.TRIAL_GRAD_SQUARED] < params.gradient_tolerance * max(x_squared, 1.0)

    def result(reason: str, iterations: int) -> LBFGSResult:
        return LBFGSResult(
            state.x.reshape(state.shape), losses[-1], iterations, evaluations, reason, tuple(losses)
        )

    flat_x0 = x0.reshape(-1)
    lbfgs_ops.combine(state.x, flat_x0, flat_x0, alpha=1.0, beta=0.0)
    lbfgs_ops.combine(state.direction, flat_x0, flat_x0, alpha=0.0, beta=0.0)
    evaluate(state.x)
    lbfgs_ops.combine(state.gradient, latest_grad, latest_grad, alpha=1.0, beta=0.0)
    losses = [float(fetched[R.LOSS])]
    gradient_squared = float(fetched[R.TRIAL_GRAD_SQUARED])
    if converged():
        return result(CONVERGED, 0)

    iterations = 0
    while iterations < params.max_iterations:
        if state.pairs:
            _two_loop_direction(state)
            initial_step = 1.0
        else:
            _steepest_descent(state)
            initial_step = 1.0 / math.sqrt(gradient_squared)
        lbfgs_ops.dot(state.gradient, state.direction, scalars, R.SLOPE0)
        # The first trial is evaluated before the line search starts: its transfer
        # also brings g.d, so checking the direction costs no extra sync.
        first_trial = phi(initial_step)
        slope0 = float(fetched[R.SLOPE0])
        if not slope0 < 0:
            if state.pairs:  # rounding broke the quasi-Newton direction: start afresh
                state.pairs.clear()
                continue
            return result(LINE_SEARCH_FAILED, iterations)
        search = strong_wolfe_line_search(
            phi,
            losses[-1],
            slope0,
            initial_step=initial_step,
            sufficient_decrease=params.sufficient_decrease,
            curvature=params.curvature,
            max_evaluations=params.max_line_search_evaluations,
            first_trial=first_trial,
        )
        if search.step <= 0:
            return result(LINE_SEARCH_FAILED, iterations)
        if not search.last_evaluated:
            phi(search.step)
        iterations += 1
        _accept(state, latest_grad, curvature_estimate=search.step * (search.slope - slope0))
        losses.append(search.value)
        gradient_squared = float(fetched[R.TRIAL_GRAD_SQUARED])
        if converged():
            return result(CONVERGED, iterations)
    return result(MAX_ITERATIONS, iterations)
