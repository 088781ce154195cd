"""Strong-Wolfe line search along a descent direction, for :mod:`diva_numba.optim.lbfgs`.

See docs/DESIGN.md section 2.

Nocedal & Wright's bracketing + zoom (*Numerical Optimization*, Algorithms 3.5 and
3.6) with safeguarded cubic interpolation; it ends on the strong Wolfe conditions
``f(a) <= f(0) + c1 a f'(0)`` and ``|f'(a)| <= c2 |f'(0)|``. It works on scalars
only: the caller's ``phi(step)`` evaluates the objective along the direction (on
whatever device the vectors live) and returns its value and slope.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass


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
