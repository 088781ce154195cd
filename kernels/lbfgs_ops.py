"""The two fused kernels of an L-BFGS iteration, on the optimiser's state rows.

They carry the iteration of :mod:`diva_numba.optim.lbfgs`, on a state held as the rows of
one ``(rows, n)`` array (two points, the gradient, the direction, then the ``m``
steps ``s`` and the ``m`` gradient changes ``y``), and reduce into the float64 scalar
register as :mod:`diva_numba.kernels.reductions` describes:

* :func:`trial_scalars`, after each evaluation at a trial point ``t`` with gradient
  ``g_t``: the line search's ``g_t.d``, ``|g_t|^2`` and ``|t|^2``, and every inner
  product the next direction needs if ``t`` is accepted (``s = t - x`` and
  ``y = g_t - g`` with each other, with ``g_t`` and with every stored pair);
* :func:`lbfgs_step`, at the start of an iteration: takes the accepted point (writes
  its ``s`` and ``y``, makes ``g_t`` the gradient), forms the direction as a linear
  combination of the stored vectors with coefficients the host computed from those
  inner products (the two-loop recursion on scalars: Chen et al., "Large-scale
  L-BFGS using MapReduce", 2014), writes the first trial point and reduces ``g.d``.

The rows a kernel works on travel as one tuple of ints, its *layout*, the same for
the CPU twin, the CUDA kernel and the per-element maths they share.
"""

from __future__ import annotations

import numpy as np
from numba import cuda, float64, njit, prange

from diva_numba.kernels.reductions import CPU_CHUNKS, reduce_into, reduction_grid, work_for
from diva_numba.kernels.targets import as_device, is_cuda_array, shared

#: Most pairs :func:`trial_scalars` and :func:`lbfgs_step` handle (their sums live in
#: a fixed-size per-thread array on the GPU).
MAX_HISTORY = 8
#: Sums :func:`trial_scalars` produces beyond the per-pair ones.
TRIAL_FIXED_SUMS = 8
#: Sums per stored vector (``s.h``, ``y.h``, ``g_t.h``).
TRIAL_SUMS_PER_ROW = 3
_MAX_SUMS = TRIAL_FIXED_SUMS + TRIAL_SUMS_PER_ROW * 2 * MAX_HISTORY

#: :func:`lbfgs_step` modes: the gradient row is already current; copy the new
#: gradient into it; accept the trial point (write its pair, then copy the gradient).
STEP_PLAIN, STEP_TAKE_GRADIENT, STEP_ACCEPT = 0, 1, 2


@shared
def trial_sum_count(history: int) -> int:
    """Register slots :func:`trial_scalars` writes for ``history`` stored pairs."""
    return TRIAL_FIXED_SUMS + TRIAL_SUMS_PER_ROW * 2 * history


@shared
def _trial_terms(rows, gradient, index, layout, sums):
    """Add element ``index``'s share of every :func:`trial_scalars` sum to ``sums``.

    ``layout`` is ``(current, trial, gradient_row, direction, first_history, history)``.
    """
    current, trial, gradient_row, direction, first_history, history = layout
    # s and y in the vectors' dtype, exactly as lbfgs_step will store them.
    step = rows[trial, index] - rows[current, index]
    change = gradient[index] - rows[gradient_row, index]
    s = float64(step)
    y = float64(change)
    g = float64(gradient[index])
    t = float64(rows[trial, index])
    sums[0] += g * float64(rows[direction, index])
    sums[1] += g * g
    sums[2] += t * t
    sums[3] += s * s
    sums[4] += s * y
    sums[5] += y * y
    sums[6] += s * g
    sums[7] += y * g
    for row in range(2 * history):
        h = float64(rows[first_history + row, index])
        base = TRIAL_FIXED_SUMS + TRIAL_SUMS_PER_ROW * row
        sums[base] += s * h
        sums[base + 1] += y * h
        sums[base + 2] += g * h


@shared
def _step_element(rows, gradient, coefficients, step, layout, index):
    """One element of :func:`lbfgs_step`; returns its share of ``g.d``.

    ``layout`` is ``(mode, slot, current, previous, out, gradient_row, direction,
    first_history, history)``.
    """
    mode, slot, current, previous, out, gradient_row, direction, first_history, history = layout
    if mode == STEP_ACCEPT:
        rows[first_history + slot, index] = rows[current, index] - rows[previous, index]
        rows[first_history + history + slot, index] = gradient[index] - rows[gradient_row, index]
        rows[gradient_row, index] = gradient[index]
    elif mode == STEP_TAKE_GRADIENT:
        rows[gradient_row, index] = gradient[index]
    total = float64(0)
    for row in range(2 * history):
        coefficient = coefficients[row]
        if coefficient != 0:  # rows of unused slots are never read
            total += coefficient * float64(rows[first_history + row, index])
    total += coefficients[2 * history] * float64(rows[gradient_row, index])
    value = rows.dtype.type(total)
    rows[direction, index] = value
    # As vector_ops.combine(out, x, d, alpha=1.0, beta=step) would: one rounding.
    rows[out, index] = float64(rows[current, index]) + step * float64(value)
    return float64(rows[gradient_row, index]) * float64(value)


# --- CPU ------------------------------------------------------------------------------
# Both twins split the elements into CPU_CHUNKS fixed chunks and add the chunks' sums
# in order, so the results do not depend on the thread count.


@njit(parallel=True, cache=True)
def _trial_scalars_cpu(rows, gradient, layout, out):
    size = rows.shape[1]
    chunks = min(CPU_CHUNKS, size)
    partial = np.zeros((chunks, out.size))
    for chunk in prange(chunks):
        sums = partial[chunk]
        for index in range(chunk * size // chunks, (chunk + 1) * size // chunks):
            _trial_terms(rows, gradient, index, layout, sums)
    for k in range(out.size):
        total = 0.0
        for chunk in range(chunks):
            total += partial[chunk, k]
        out[k] = total


@njit(parallel=True, cache=True)
def _lbfgs_step_cpu(rows, gradient, coefficients, step, layout):
    size = rows.shape[1]
    chunks = min(CPU_CHUNKS, size)
    partial = np.zeros(chunks)
    for chunk in prange(chunks):
        total = 0.0
        for index in range(chunk * size // chunks, (chunk + 1) * size // chunks):
            total += _step_element(rows, gradient, coefficients, step, layout, index)
        partial[chunk] = total
    total = 0.0
    for chunk in range(chunks):
        total += partial[chunk]
    return total


# --- CUDA -----------------------------------------------------------------------------


@cuda.jit(cache=True)
def _trial_scalars_kernel(
    rows, gradient, loss, layout, partials, counter, scalars, loss_slot, first_slot
):
    count = trial_sum_count(layout[5])  # the layout's last entry is the history
    sums = cuda.local.array(_MAX_SUMS, float64)
    for k in range(count):
        sums[k] = 0
    for index in range(cuda.grid(1), rows.shape[1], cuda.gridsize(1)):
        _trial_terms(rows, gradient, index, layout, sums)
    if cuda.grid(1) == 0:
        scalars[loss_slot] = loss[0]
    reduce_into(sums, count, partials, counter, scalars, first_slot)


@cuda.jit(cache=True)
def _lbfgs_step_kernel(
    rows, gradient, coefficients, step, layout, partials, counter, scalars, slope_slot
):
    sums = cuda.local.array(1, float64)
    sums[0] = 0
    for index in range(cuda.grid(1), rows.shape[1], cuda.gridsize(1)):
        sums[0] += _step_element(rows, gradient, coefficients, step, layout, index)
    reduce_into(sums, 1, partials, counter, scalars, slope_slot)


# --- dispatch -------------------------------------------------------------------------


def trial_scalars(
    rows,
    gradient,
    loss,
    scalars,
    *,
    current: int,
    trial: int,
    gradient_row: int,
    direction: int,
    first_history: int,
    history: int,
    loss_slot: int,
    first_slot: int,
    work=None,
) -> None:
    """The scalars of one evaluation at ``t = rows[trial]``, in one pass over the state.

    With ``x = rows[current]``, ``g = rows[gradient_row]``, ``d = rows[direction]``,
    the new gradient ``g_t = gradient`` and, as :func:`lbfgs_step` would store them,
    ``s = t - x`` and ``y = g_t - g`` (rounded to the vectors' dtype), writes
    ``scalars[first_slot + k]`` for ``k`` in order: ``g_t.d``, ``g_t.g_t``, ``t.t``,
    ``s.s``, ``s.y``, ``y.y``, ``s.g_t``, ``y.g_t``, then for each stored vector
    ``h = rows[first_history + j]`` (``j < 2 history``): ``s.h``, ``y.h``, ``g_t.h``
    (:func:`trial_sum_count` in all). ``scalars[loss_slot] = loss``.

    Parameters
    ----------
    rows : float32 or float64 array, shape (R, n), C-contiguous
    gradient : array, shape (n,), same dtype and device
    loss : float, or one-element float64 array on the device
    scalars : float64 array, same device
    current, trial, gradient_row, direction, first_history : int
        Rows of ``rows``.
    history : int
        Stored pairs, at most :data:`MAX_HISTORY`.
    loss_slot, first_slot : int
        Slots of the register.
    work : ReductionWork, optional
        For :func:`trial_sum_count` ``(history)`` sums.
    """
    if not 0 <= history <= MAX_HISTORY:
        raise ValueError(f"history must be 0..{MAX_HISTORY}, got {history}")
    rows_used = (current, trial, gradient_row, direction, first_history, history)
    layout = tuple(int(row) for row in rows_used)
    if is_cuda_array(rows):
        trial_scalars_cuda(rows, gradient, loss, scalars, layout, loss_slot, first_slot, work)
    else:
        trial_scalars_cpu(rows, gradient, loss, scalars, layout, loss_slot, first_slot)


def trial_scalars_cpu(rows, gradient, loss, scalars, layout, loss_slot, first_slot):
    """CPU twin of :func:`trial_scalars`, given its packed row ``layout``."""
    count = trial_sum_count(layout[-1])
    out = np.empty(count)
    _trial_scalars_cpu(rows, gradient, layout, out)
    scalars[first_slot : first_slot + count] = out
    scalars[loss_slot] = float(np.asarray(loss).reshape(()))


def trial_scalars_cuda(rows, gradient, loss, scalars, layout, loss_slot, first_slot, work=None):
    """CUDA kernel of :func:`trial_scalars`, given its packed row ``layout``."""
    count = trial_sum_count(layout[-1])
    if not is_cuda_array(loss):
        loss = as_device(np.array([float(np.asarray(loss).reshape(()))]), like=rows)
    work = work_for(work, rows, count)
    blocks, threads = reduction_grid(rows.shape[1])
    _trial_scalars_kernel[blocks, threads](
        rows, gradient, loss.reshape(1), layout, work.partials, work.counter, scalars,
        loss_slot, first_slot,
    )  # fmt: skip


def lbfgs_step(
    rows,
    gradient,
    coefficients,
    scalars,
    *,
    mode: int,
    slot: int,
    current: int,
    previous: int,
    out: int,
    gradient_row: int,
    direction: int,
    first_history: int,
    history: int,
    step: float,
    slope_slot: int,
    work=None,
) -> None:
    """Start an L-BFGS iteration in one pass: accept, direction, first trial point, ``g.d``.

    Per element, in order:

    1. ``mode`` :data:`STEP_ACCEPT`: ``rows[first_history + slot] = x - rows[previous]``
       and ``rows[first_history + history + slot] = gradient - g`` (the new pair, with
       ``x = rows[current]``, ``g = rows[gradient_row]``), then ``g = gradient``;
       :data:`STEP_TAKE_GRADIENT`: ``g = gradient``; :data:`STEP_PLAIN`: nothing;
    2. ``d = sum_j coefficients[j] rows[first_history + j] + coefficients[2 history] g``
       (float64, rounded once; rows with a zero coefficient are not read) into
       ``rows[direction]``;
    3. ``rows[out] = x + step d``;

    and ``scalars[slope_slot] = g.d``.

    Parameters
    ----------
    rows : float32 or float64 array, shape (R, n), C-contiguous
    gradient : array, shape (n,), same dtype and device (read in the first two modes)
    coefficients : tuple of ``2 history + 1`` floats
        Travel as launch arguments: no transfer.
    scalars : float64 array, same device
    mode, slot, current, previous, out, gradient_row, direction, first_history : int
        ``out`` may be ``previous`` (written after it is read).
    history : int
    step : float
    slope_slot : int
    work : ReductionWork, optional
    """
    coefficients = tuple(float(c) for c in coefficients)
    if len(coefficients) != 2 * history + 1:
        raise ValueError(f"need {2 * history + 1} coefficients, got {len(coefficients)}")
    rows_used = (current, previous, out, gradient_row, direction, first_history, history)
    layout = (int(mode), int(slot), *(int(row) for row in rows_used))
    if is_cuda_array(rows):
        lbfgs_step_cuda(rows, gradient, coefficients, scalars, layout, float(step), slope_slot,
                        work)  # fmt: skip
    else:
        lbfgs_step_cpu(rows, gradient, coefficients, scalars, layout, float(step), slope_slot)


def lbfgs_step_cpu(rows, gradient, coefficients, scalars, layout, step, slope_slot):
    """CPU twin of :func:`lbfgs_step`, given its packed ``layout`` and ``coefficients``."""
    scalars[slope_slot] = _lbfgs_step_cpu(rows, gradient, coefficients, step, layout)


def lbfgs_step_cuda(rows, gradient, coefficients, scalars, layout, step, slope_slot, work=None):
    """CUDA kernel of :func:`lbfgs_step`, given its packed ``layout`` and ``coefficients``."""
    work = work_for(work, rows, 1)
    blocks, threads = reduction_grid(rows.shape[1])
    _lbfgs_step_kernel[blocks, threads](
        rows, gradient, coefficients, step, layout, work.partials, work.counter, scalars,
        slope_slot,
    )  # fmt: skip
