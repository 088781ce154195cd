"""Limited-memory BFGS with a strong-Wolfe line search, on NumPy or GPU arrays.

See docs/DESIGN.md section 2.

The deconvolution step of the analogy minimises ``sum((CNN(R) - T)**2)`` over a
feature map ``R`` with L-BFGS (history 4, at most 100 iterations). This module is
that optimiser, written so that a GPU run stays on the GPU:

* every vector operation is a kernel (:mod:`diva_numba.kernels.lbfgs_ops` for the
  iteration, :mod:`~diva_numba.kernels.vector_ops` for copies and steps, the
  reduction scratch of :mod:`~diva_numba.kernels.reductions`), on NumPy arrays (CPU
  twins) or GPU arrays (CUDA kernels) alike, and an iteration that needs one
  evaluation makes two of them besides the objective's own: after the evaluation,
  one pass computes the line search's scalars (loss, slope ``g.d``, ``|g|^2``,
  ``|x|^2``) together with every inner product the next direction needs; at the
  start of the next iteration, one pass stores the new curvature pair, forms the
  direction and the first trial point;
* the two-loop recursion runs on those inner products, in float64 on the host
  (the vector-free form of Chen et al. 2014: the direction is a linear combination
  of the stored vectors, ``2 m + 1`` coefficients that travel as launch arguments);
  it is the same recursion as with vectors, in another order of rounding;
* the scalars are written into a float64 register on the vectors' device, which
  the host reads once per function evaluation (one transfer): the line search must
  decide on them, and they carry the next direction's inner products at no extra
  synchronisation.

Conventions (those of liblbfgs, which the official Deep Image Analogy code uses):

* convergence: stop when ``|g|^2 < gradient_tolerance * max(|x|^2, 1)``
  (``|g| / max(|x|, 1) < 1e-4`` with the default ``1e-8``);
* initial step: ``1 / |g|`` whenever the direction is plain steepest descent (first
  iteration, or after the history was dropped), so the first trial point moves
  ``x`` by one unit; ``1`` otherwise, the natural L-BFGS step;
* line search: Nocedal & Wright's bracketing + zoom (Algorithms 3.5 and 3.6) with
  safeguarded cubic interpolation; it ends on the strong Wolfe conditions
  ``f(a) <= f(0) + c1 a f'(0)`` and ``|f'(a)| <= c2 |f'(0)|``
  (:mod:`diva_numba.optim.line_search`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from diva_numba.gpu.device import to_host
from diva_numba.kernels import lbfgs_ops, vector_ops
from diva_numba.kernels.reductions import ReductionWork
from diva_numba.kernels.targets import device_empty, device_zeros, is_cuda_array, kernel_array
from diva_numba.optim.line_search import strong_wolfe_line_search

CONVERGED = "converged"
MAX_ITERATIONS = "max_iterations"
LINE_SEARCH_FAILED = "line_search_failed"
SMALL_DECREASE = "small_decrease"


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
    min_relative_decrease : float
        Stop once an iteration lowers the loss by less than this share of the
        starting loss (0: never). A warm start that is already close then
        costs one iteration, and a frame's budget follows what changed.
    """

    history: int = 4
    max_iterations: int = 100
    gradient_tolerance: float = 1e-8
    sufficient_decrease: float = 1e-4
    curvature: float = 0.9
    max_line_search_evaluations: int = 20
    min_relative_decrease: float = 0.0

    def __post_init__(self):
        if not 1 <= self.history <= lbfgs_ops.MAX_HISTORY:
            raise ValueError(f"history must be 1..{lbfgs_ops.MAX_HISTORY}, got {self.history}")
        if self.max_iterations < 0:
            raise ValueError(f"max_iterations must be >= 0, got {self.max_iterations}")
        if not 0 < self.sufficient_decrease < self.curvature < 1:
            raise ValueError(
                "need 0 < sufficient_decrease < curvature < 1, got "
                f"{self.sufficient_decrease}, {self.curvature}"
            )
        if self.max_line_search_evaluations < 1:
            raise ValueError("max_line_search_evaluations must be >= 1")
        if not 0 <= self.min_relative_decrease < 1:
            raise ValueError("min_relative_decrease must be in [0, 1)")


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
    reason : {"converged", "max_iterations", "line_search_failed", "small_decrease"}
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


class _Register:
    """Slots of the float64 scalar register the vector kernels write."""

    LOSS = 0
    SLOPE0 = 1  # g(x) . d, from lbfgs_step
    TRIAL = 2  # then lbfgs_ops.trial_sum_count(history) sums, from trial_scalars
    # Offsets in the trial block (lbfgs_ops.trial_scalars documents the order).
    SLOPE, GRAD_SQUARED, X_SQUARED, SS, SY, YY, SG, YG = range(8)
    ROWS = lbfgs_ops.TRIAL_FIXED_SUMS  # where the per-stored-vector sums start

    @classmethod
    def size(cls, history: int) -> int:
        return cls.TRIAL + lbfgs_ops.trial_sum_count(history)


class _Rows:
    """Rows of the state array: two points, the gradient, the direction, the pairs."""

    POINTS = (0, 1)  # the current point and the trial point, swapped on acceptance
    GRADIENT = 2
    DIRECTION = 3
    FIRST_HISTORY = 4  # steps s_0 .. s_{m-1}, then gradient changes y_0 .. y_{m-1}

    @classmethod
    def count(cls, history: int) -> int:
        return cls.FIRST_HISTORY + 2 * history


class _State:
    """One minimisation: the state rows, the register, and the host's bookkeeping.

    ``gram`` holds the inner products among the stored vectors and the gradient
    (indices ``k`` for ``s_k``, ``m + k`` for ``y_k``, ``2 m`` for ``g``), filled from
    the register as pairs are accepted.
    """

    def __init__(self, x0, history: int):
        self.shape = x0.shape
        self.history = history
        size = x0.size
        on_gpu = is_cuda_array(x0)
        rows_shape = (_Rows.count(history), size)
        register_size = _Register.size(history)
        if on_gpu:
            # Zeros: rows not written yet are read (multiplied by zero) without harm.
            self.rows = device_zeros(rows_shape, x0.dtype, like=x0)
            self.scalars = device_zeros((register_size,), np.float64, like=x0)
            self.work = ReductionWork(x0, lbfgs_ops.trial_sum_count(history))
        else:
            self.rows = np.zeros(rows_shape, dtype=x0.dtype)
            self.scalars = np.zeros(register_size, dtype=np.float64)
            self.work = None
        self.kernel_rows = kernel_array(self.rows)
        self.kernel_scalars = kernel_array(self.scalars)
        # Per row: a view shaped like x0 (what the objective is called with) and the
        # flat view kernels are launched with, each cut once.
        self.points = [self.rows[row].reshape(self.shape) for row in range(rows_shape[0])]
        self.kernel_row = [kernel_array(self.rows[row]) for row in range(rows_shape[0])]
        self.current, self.trial = _Rows.POINTS
        self.pairs: list[int] = []  # pair slots, oldest first
        self.gram = np.zeros((2 * history + 1, 2 * history + 1))
        # What lbfgs_step must do to the rows first (the pair slot when accepting).
        self.step_mode = lbfgs_ops.STEP_TAKE_GRADIENT
        self.step_slot = 0
        self._wrapped: dict[int, tuple[object, object]] = {}
        # The rows every kernel call names the same way, and the pairs they hold.
        self.fixed_rows = {
            "gradient_row": _Rows.GRADIENT,
            "direction": _Rows.DIRECTION,
            "first_history": _Rows.FIRST_HISTORY,
            "history": history,
        }

    def wrapped(self, array):
        """``kernel_array(array)``, remembered for arrays the objective hands back again.

        An objective usually returns the same buffers at every call (the network's
        workspace), so each is wrapped once; a few are remembered, not every one.
        """
        key = id(array)
        if key not in self._wrapped or self._wrapped[key][0] is not array:
            if len(self._wrapped) >= 4:
                self._wrapped.clear()
            self._wrapped[key] = (array, kernel_array(array))
        return self._wrapped[key][1]

    def accept(self, fetched) -> None:
        """Make the evaluated trial point the current one; record its pair ``(s, y)``.

        The vectors are written by the next :func:`lbfgs_ops.lbfgs_step`; their inner
        products, computed by the evaluation's :func:`lbfgs_ops.trial_scalars`, go into
        :attr:`gram` now. A pair without positive curvature ``y.s`` would break the
        BFGS update and is not kept.
        """
        m, R = self.history, _Register
        if len(self.pairs) == m:
            k = self.pairs.pop(0)
        else:
            k = min(set(range(m)) - set(self.pairs))
        trial = fetched[R.TRIAL :]
        step, change, gradient = k, m + k, 2 * m
        gram = self.gram
        for row in range(2 * m):
            if row in (step, change):
                continue
            base = R.ROWS + lbfgs_ops.TRIAL_SUMS_PER_ROW * row
            gram[step, row] = gram[row, step] = trial[base]
            gram[change, row] = gram[row, change] = trial[base + 1]
            gram[gradient, row] = gram[row, gradient] = trial[base + 2]
        gram[step, step] = trial[R.SS]
        gram[step, change] = gram[change, step] = trial[R.SY]
        gram[change, change] = trial[R.YY]
        gram[gradient, step] = gram[step, gradient] = trial[R.SG]
        gram[gradient, change] = gram[change, gradient] = trial[R.YG]
        gram[gradient, gradient] = trial[R.GRAD_SQUARED]
        if trial[R.SY] > 0:
            self.pairs.append(k)
        self.current, self.trial = self.trial, self.current
        self.step_mode, self.step_slot = lbfgs_ops.STEP_ACCEPT, k

    def direction_coefficients(self) -> tuple[float, ...]:
        """``d = -H g`` as coefficients of the stored vectors and ``g``: the two-loop recursion.

        The recursion of Nocedal and Wright's Algorithm 7.4 (initial Hessian
        ``y.s / y.y`` of the newest pair), with every inner product taken from
        :attr:`gram`; without pairs, steepest descent ``d = -g``.
        """
        m, gram = self.history, self.gram
        delta = np.zeros(2 * m + 1)
        delta[2 * m] = -1.0
        first = {}
        for k in reversed(self.pairs):
            first[k] = gram[k] @ delta
            delta[m + k] -= first[k] / gram[k, m + k]
        if self.pairs:
            newest = self.pairs[-1]
            delta *= gram[newest, m + newest] / gram[m + newest, m + newest]
        for k in self.pairs:
            delta[k] += (first[k] - gram[m + k] @ delta) / gram[k, m + k]
        return tuple(float(value) for value in delta)


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
    run = _Minimization(fun_and_grad, x0, params)
    state = run.state
    run.start()
    if run.converged():
        return run.result(CONVERGED, 0)
    iterations = 0
    while iterations < params.max_iterations:
        initial_step = 1.0 if state.pairs else 1.0 / math.sqrt(run.gradient_squared)
        first_trial, slope0 = run.first_trial(initial_step)
        if not slope0 < 0:
            if state.pairs:  # rounding broke the quasi-Newton direction: start afresh
                state.pairs.clear()
                continue
            return run.result(LINE_SEARCH_FAILED, iterations)
        search = strong_wolfe_line_search(
            run.phi,
            run.losses[-1],
            slope0,
            initial_step=initial_step,
            sufficient_decrease=params.sufficient_decrease,
            curvature=params.curvature,
            max_evaluations=params.max_line_search_evaluations,
            first_trial=first_trial,
        )
        if search.step <= 0:
            return run.result(LINE_SEARCH_FAILED, iterations)
        if not search.last_evaluated:
            run.phi(search.step)
        iterations += 1
        fetched = run.fetched
        state.accept(fetched)
        run.losses.append(search.value)
        run.gradient_squared = float(fetched[_Register.TRIAL + _Register.GRAD_SQUARED])
        if run.converged():
            return run.result(CONVERGED, iterations)
        losses = run.losses
        if losses[-2] - losses[-1] < params.min_relative_decrease * losses[0]:
            return run.result(SMALL_DECREASE, iterations)
    return run.result(MAX_ITERATIONS, iterations)


class _Minimization:
    """One call of :func:`minimize_lbfgs`: the objective, the state and what the host read.

    ``fetched`` is the register as the last evaluation brought it to the host.
    """

    def __init__(self, fun_and_grad: Callable, x0, params: LBFGSParams):
        self.fun_and_grad = fun_and_grad
        self.x0 = x0
        self.params = params
        self.state = _State(x0, params.history)
        self.evaluations = 0
        self.fetched = np.zeros(_Register.size(params.history))
        self.latest_grad = None
        self.losses: list[float] = []
        self.gradient_squared = 0.0

    def start(self) -> None:
        """The current point is ``x0``; its loss and gradient evaluated."""
        state = self.state
        flat_x0 = kernel_array(self.x0.reshape(-1))
        vector_ops.combine(state.kernel_row[state.current], flat_x0, flat_x0, alpha=1.0, beta=0.0)
        self.evaluate(state.current)
        self.losses = [float(self.fetched[_Register.LOSS])]
        self.gradient_squared = float(self.fetched[_Register.TRIAL + _Register.GRAD_SQUARED])
        state.gram[-1, -1] = self.gradient_squared

    def evaluate(self, row: int) -> None:
        """Objective at ``rows[row]`` and the register's scalars; the one host sync per call."""
        state, R = self.state, _Register
        self.evaluations += 1
        loss, grad = self.fun_and_grad(state.points[row])
        self.latest_grad = state.wrapped(grad).reshape(-1)
        lbfgs_ops.trial_scalars(
            state.kernel_rows,
            self.latest_grad,
            state.wrapped(loss) if is_cuda_array(loss) else loss,
            state.kernel_scalars,
            current=state.current,
            trial=row,
            **state.fixed_rows,
            loss_slot=R.LOSS,
            first_slot=R.TRIAL,
            work=state.work,
        )
        self.fetched = to_host(state.scalars)

    def first_trial(self, initial_step: float) -> tuple[tuple[float, float], float]:
        """Start an iteration; ``((loss, slope) at the first trial point, g.d)``.

        Stores the accepted pair, forms d, writes the first trial point and g.d in
        one pass, then evaluates the first trial before the line search starts:
        its transfer also brings g.d, so checking the direction costs no extra sync.
        """
        state, R = self.state, _Register
        lbfgs_ops.lbfgs_step(
            state.kernel_rows,
            self.latest_grad,
            state.direction_coefficients(),
            state.kernel_scalars,
            mode=state.step_mode,
            slot=state.step_slot,
            current=state.current,
            previous=state.trial,
            out=state.trial,
            **state.fixed_rows,
            step=initial_step,
            slope_slot=R.SLOPE0,
            work=state.work,
        )
        state.step_mode = lbfgs_ops.STEP_PLAIN
        self.evaluate(state.trial)
        fetched = self.fetched
        first = float(fetched[R.LOSS]), float(fetched[R.TRIAL + R.SLOPE])
        return first, float(fetched[R.SLOPE0])

    def phi(self, step: float) -> tuple[float, float]:
        """Loss and slope along the direction at ``step`` (the line search's function)."""
        state, R = self.state, _Register
        vector_ops.combine(
            state.kernel_row[state.trial],
            state.kernel_row[state.current],
            state.kernel_row[_Rows.DIRECTION],
            alpha=1.0,
            beta=step,
        )
        self.evaluate(state.trial)
        return float(self.fetched[R.LOSS]), float(self.fetched[R.TRIAL + R.SLOPE])

    def converged(self) -> bool:
        R = _Register
        x_squared = float(self.fetched[R.TRIAL + R.X_SQUARED])
        gradient_squared = self.fetched[R.TRIAL + R.GRAD_SQUARED]
        return gradient_squared < self.params.gradient_tolerance * max(x_squared, 1.0)

    def result(self, reason: str, iterations: int) -> LBFGSResult:
        # A fresh array: the state (all its rows) is not kept alive by the result.
        x0, state = self.x0, self.state
        if is_cuda_array(x0):
            x = device_empty((x0.size,), x0.dtype, like=x0)
        else:
            x = np.empty(x0.size, dtype=x0.dtype)
        row = state.kernel_row[state.current]
        vector_ops.combine(kernel_array(x), row, row, alpha=1.0, beta=0.0)
        losses = self.losses
        return LBFGSResult(
            x.reshape(state.shape), losses[-1], iterations, self.evaluations, reason, tuple(losses)
        )
