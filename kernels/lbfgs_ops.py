"""Vector operations of the L-BFGS optimiser and of the deconvolution loss.

The optimiser keeps its scalars (dot products, the loss) in a small float64 "scalar
register" array that lives on the same device as the vectors. Reductions write into
slots of that register and vector updates read their coefficients from it or take
them as launch arguments, so an iteration runs on the GPU without copying a scalar
to the host; the optimiser reads the whole register once per function evaluation.

Reductions accumulate in float64 whatever the vector dtype. A CUDA reduction is one
launch: every block adds its share (grid-stride, then a tree in shared memory) and
writes a partial sum; the last block to finish, found with an atomic ticket, adds
the partials in index order and writes the register. Results therefore do not depend
on thread scheduling, and a reduction costs one launch instead of two. The partials
and the ticket counter live in a :class:`ReductionWork`, which a caller that reduces
often allocates once.

Two kernels carry the optimiser's iteration (:mod:`diva_numba.lbfgs`), on a state
held as the rows of one ``(rows, n)`` array (two points, the gradient, the direction,
then the ``m`` steps ``s`` and the ``m`` gradient changes ``y``):

* :func:`trial_scalars`, after each evaluation at a trial point ``t`` with gradient
  ``g_t``: the line search's ``g_t.d``, ``|g_t|^2`` and ``|t|^2``, and every inner
  product the next direction needs if ``t`` is accepted (``s = t - x`` and
  ``y = g_t - g`` with each other, with ``g_t`` and with every stored pair);
* :func:`lbfgs_step`, at the start of an iteration: takes the accepted point (writes
  its ``s`` and ``y``, makes ``g_t`` the gradient), forms the direction as a linear
  combination of the stored vectors with coefficients the host computed from those
  inner products (the two-loop recursion on scalars: Chen et al., "Large-scale
  L-BFGS using MapReduce", 2014), writes the first trial point and reduces ``g.d``.
"""

from __future__ import annotations

import numpy as np
from numba import cuda, float64, int32, njit, prange

from diva_numba.kernels.activations import biased_relu, relu_open
from diva_numba.kernels.targets import (
    device_empty,
    device_zeros,
    is_cuda_array,
    launch_1d,
    shared,
    smaller,
    zero_like,
)

#: Largest block the CUDA reductions support (their shared-memory buffer holds
#: ``_SUM_CHUNK`` sums of this many threads: 32 KiB).
MAX_BLOCK = 256
#: Sums one tree pass of a reduction adds at once.
_SUM_CHUNK = 16
#: At most this many blocks (and partial sums) per CUDA reduction.
MAX_PARTIALS = 1024
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


def trial_sum_count(history: int) -> int:
    """Register slots :func:`trial_scalars` writes for ``history`` stored pairs."""
    return TRIAL_FIXED_SUMS + TRIAL_SUMS_PER_ROW * 2 * history


@shared
def product64(a, b):
    """``a * b`` in float64, whatever the storage dtype."""
    return float64(a) * float64(b)


@shared
def ratio(scalars, plus, minus, over):
    """``(scalars[plus] - scalars[minus]) / scalars[over]``: a coefficient read on device."""
    return (scalars[plus] - scalars[minus]) / scalars[over]


@shared
def _relu_error(pre_activation, bias, target, grad, channel, pixel):
    """Squared error of ``relu(pre + bias)`` against the target; writes the gradient in ``pre``.

    The gradient with respect to the ReLU's output is ``2 (a - t)``; in the dtype,
    ``(a - t) + (a - t)`` rounds exactly as ``2.0 * (float64(a) - float64(t))`` does
    (doubling is exact), and the ReLU then gates it.
    """
    offset = bias[channel]
    value = biased_relu(pre_activation[channel, pixel], offset)
    expected = target[channel, pixel]
    if relu_open(pre_activation[channel, pixel], offset):
        error = value - expected
        grad[channel, pixel] = error + error
    else:
        grad[channel, pixel] = zero_like(value)
    difference = float64(value) - float64(expected)
    return difference * difference


@shared
def _trial_terms(
    rows, gradient, index, current, trial, gradient_row, direction, first_history, history, sums
):
    """Add element ``index``'s share of every :func:`trial_scalars` sum to ``sums``."""
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
def _step_element(
    rows,
    gradient,
    coefficients,
    index,
    mode,
    slot,
    current,
    previous,
    out,
    gradient_row,
    direction,
    first_history,
    history,
    step,
):
    """One element of :func:`lbfgs_step`; returns its share of ``g.d``."""
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
    # As combine(out, x, d, alpha=1.0, beta=step) would: one rounding.
    rows[out, index] = float64(rows[current, index]) + step * float64(value)
    return float64(rows[gradient_row, index]) * float64(value)


# --- CPU ------------------------------------------------------------------------------

#: Chunks of the CPU twins' multi-sum reductions: a fixed split, so the sums do not
#: depend on the thread count.
_CPU_CHUNKS = 64


@njit(parallel=True, cache=True)
def _dot_cpu(a, b):
    total = 0.0
    for index in prange(a.size):
        total += product64(a[index], b[index])
    return total


@njit(parallel=True, cache=True)
def _squared_error_cpu(output, target, grad):
    total = 0.0
    for index in prange(output.size):
        difference = float64(output[index]) - float64(target[index])
        grad[index] = 2.0 * difference
        total += difference * difference
    return total


@njit(parallel=True, cache=True)
def _relu_squared_error_cpu(pre_activation, bias, target, grad):
    plane = pre_activation.shape[1]
    total = 0.0
    for index in prange(pre_activation.size):
        total += _relu_error(pre_activation, bias, target, grad, index // plane, index % plane)
    return total


@njit(parallel=True, cache=True)
def _trial_scalars_cpu(
    rows, gradient, current, trial, gradient_row, direction, first_history, history, out
):
    size = rows.shape[1]
    chunks = min(_CPU_CHUNKS, size)
    partial = np.zeros((chunks, out.size))
    for chunk in prange(chunks):
        sums = partial[chunk]
        for index in range(chunk * size // chunks, (chunk + 1) * size // chunks):
            _trial_terms(
                rows,
                gradient,
                index,
                current,
                trial,
                gradient_row,
                direction,
                first_history,
                history,
                sums,
            )
    for k in range(out.size):
        total = 0.0
        for chunk in range(chunks):
            total += partial[chunk, k]
        out[k] = total


@njit(parallel=True, cache=True)
def _lbfgs_step_cpu(
    rows,
    gradient,
    coefficients,
    mode,
    slot,
    current,
    previous,
    out,
    gradient_row,
    direction,
    first_history,
    history,
    step,
):
    size = rows.shape[1]
    chunks = min(_CPU_CHUNKS, size)
    partial = np.zeros(chunks)
    for chunk in prange(chunks):
        total = 0.0
        for index in range(chunk * size // chunks, (chunk + 1) * size // chunks):
            total += _step_element(
                rows,
                gradient,
                coefficients,
                index,
                mode,
                slot,
                current,
                previous,
                out,
                gradient_row,
                direction,
                first_history,
                history,
                step,
            )
        partial[chunk] = total
    total = 0.0
    for chunk in range(chunks):
        total += partial[chunk]
    return total


@njit(parallel=True, cache=True)
def _combine_cpu(out, a, b, alpha, beta):
    for index in prange(out.size):
        out[index] = alpha * a[index] + beta * b[index]


@njit(parallel=True, cache=True)
def _add_scaled_cpu(y, x, scalars, plus, minus, over):
    coefficient = ratio(scalars, plus, minus, over)
    for index in prange(y.size):
        y[index] = y[index] + coefficient * x[index]


@njit(parallel=True, cache=True)
def _scale_cpu(y, scalars, numerator, denominator):
    factor = scalars[numerator] / scalars[denominator]
    for index in prange(y.size):
        y[index] = factor * y[index]


# --- CUDA -----------------------------------------------------------------------------


@cuda.jit(device=True)
def _block_sums(buffer, values, first, count):
    """Sums over the block of ``values[first : first + count]``, into ``buffer[k, 0]``.

    ``count <= _SUM_CHUNK``. Every thread must call it; the tree adds pairs in a fixed
    order, so the sums do not depend on scheduling. One pass reduces all ``count``
    sums: the barriers are per level, not per sum.
    """
    thread = cuda.threadIdx.x
    size = cuda.blockDim.x
    for k in range(count):
        buffer[k, thread] = values[first + k]
    cuda.syncthreads()
    half = 1
    while half < size:
        half *= 2
    half //= 2
    while half > 0:
        if thread < half and thread + half < size:
            for k in range(count):
                buffer[k, thread] += buffer[k, thread + half]
        cuda.syncthreads()
        half //= 2


@cuda.jit(device=True)
def _reduce_into(sums, count, partials, counter, scalars, first_slot):
    """``scalars[first_slot + k] = grid-wide sum of sums[k]`` for ``k < count``.

    Every thread of every block must call it, once per launch, after adding its own
    elements into ``sums``. Each block writes its partial sums; the last block to
    arrive adds them in block order and resets the arrival counter for the next launch.
    """
    buffer = cuda.shared.array((_SUM_CHUNK, MAX_BLOCK), float64)
    last = cuda.shared.array(1, int32)
    thread = cuda.threadIdx.x
    blocks = cuda.gridDim.x
    for first in range(0, count, _SUM_CHUNK):
        chunk = smaller(_SUM_CHUNK, count - first)
        _block_sums(buffer, sums, first, chunk)
        if thread == 0:
            for k in range(chunk):
                partials[(first + k) * blocks + cuda.blockIdx.x] = buffer[k, 0]
        cuda.syncthreads()  # the buffer is refilled next
    if thread == 0:
        cuda.threadfence()  # the partials are visible before the ticket is taken
        ticket = cuda.atomic.add(counter, 0, 1)
        last[0] = 1 if ticket == blocks - 1 else 0
    cuda.syncthreads()
    if last[0] == 0:
        return
    cuda.threadfence()
    for first in range(0, count, _SUM_CHUNK):
        chunk = smaller(_SUM_CHUNK, count - first)
        for k in range(first, first + chunk):
            total = float64(0)
            for block in range(thread, blocks, cuda.blockDim.x):
                total += partials[k * blocks + block]
            sums[k] = total
        _block_sums(buffer, sums, first, chunk)
        if thread == 0:
            for k in range(chunk):
                scalars[first_slot + first + k] = buffer[k, 0]
        cuda.syncthreads()
    if thread == 0:
        counter[0] = 0


@cuda.jit(cache=True)
def _dot_kernel(a, b, partials, counter, scalars, slot):
    sums = cuda.local.array(1, float64)
    sums[0] = 0
    for index in range(cuda.grid(1), a.size, cuda.gridsize(1)):
        sums[0] += product64(a[index], b[index])
    _reduce_into(sums, 1, partials, counter, scalars, slot)


@cuda.jit(cache=True)
def _squared_error_kernel(output, target, grad, partials, counter, scalars, slot):
    sums = cuda.local.array(1, float64)
    sums[0] = 0
    for index in range(cuda.grid(1), output.size, cuda.gridsize(1)):
        difference = float64(output[index]) - float64(target[index])
        grad[index] = 2 * difference
        sums[0] += difference * difference
    _reduce_into(sums, 1, partials, counter, scalars, slot)


@cuda.jit(cache=True)
def _relu_squared_error_kernel(
    pre_activation, bias, target, grad, partials, counter, scalars, slot
):
    sums = cuda.local.array(1, float64)
    sums[0] = 0
    plane = pre_activation.shape[1]
    for index in range(cuda.grid(1), pre_activation.size, cuda.gridsize(1)):
        sums[0] += _relu_error(pre_activation, bias, target, grad, index // plane, index % plane)
    _reduce_into(sums, 1, partials, counter, scalars, slot)


@cuda.jit(cache=True)
def _trial_scalars_kernel(
    rows,
    gradient,
    loss,
    current,
    trial,
    gradient_row,
    direction,
    first_history,
    history,
    partials,
    counter,
    scalars,
    loss_slot,
    first_slot,
):
    count = TRIAL_FIXED_SUMS + TRIAL_SUMS_PER_ROW * 2 * history
    sums = cuda.local.array(_MAX_SUMS, float64)
    for k in range(count):
        sums[k] = 0
    for index in range(cuda.grid(1), rows.shape[1], cuda.gridsize(1)):
        _trial_terms(
            rows,
            gradient,
            index,
            current,
            trial,
            gradient_row,
            direction,
            first_history,
            history,
            sums,
        )
    if cuda.grid(1) == 0:
        scalars[loss_slot] = loss[0]
    _reduce_into(sums, count, partials, counter, scalars, first_slot)


@cuda.jit(cache=True)
def _lbfgs_step_kernel(
    rows,
    gradient,
    coefficients,
    mode,
    slot,
    current,
    previous,
    out,
    gradient_row,
    direction,
    first_history,
    history,
    step,
    partials,
    counter,
    scalars,
    slope_slot,
):
    sums = cuda.local.array(1, float64)
    sums[0] = 0
    for index in range(cuda.grid(1), rows.shape[1], cuda.gridsize(1)):
        sums[0] += _step_element(
            rows,
            gradient,
            coefficients,
            index,
            mode,
            slot,
            current,
            previous,
            out,
            gradient_row,
            direction,
            first_history,
            history,
            step,
        )
    _reduce_into(sums, 1, partials, counter, scalars, slope_slot)


@cuda.jit(cache=True)
def _combine_kernel(out, a, b, alpha, beta):
    index = cuda.grid(1)
    if index < out.size:
        out[index] = alpha * a[index] + beta * b[index]


@cuda.jit(cache=True)
def _add_scaled_kernel(y, x, scalars, plus, minus, over):
    index = cuda.grid(1)
    if index < y.size:
        y[index] = y[index] + ratio(scalars, plus, minus, over) * x[index]


@cuda.jit(cache=True)
def _scale_kernel(y, scalars, numerator, denominator):
    index = cuda.grid(1)
    if index < y.size:
        y[index] = scalars[numerator] / scalars[denominator] * y[index]


@cuda.jit(cache=True)
def _copy_scalar_kernel(value, scalars, slot):
    if cuda.grid(1) == 0:
        scalars[slot] = value[0]


@cuda.jit(cache=True)
def _store_scalar_kernel(value, scalars, slot):
    if cuda.grid(1) == 0:
        scalars[slot] = value


# --- work buffers -----------------------------------------------------------------------


class ReductionWork:
    """Scratch of the one-launch CUDA reductions: partial sums and the arrival counter.

    Parameters
    ----------
    like : GPU array
        The device (and array kind) to allocate on.
    sums : int
        Most sums one reduction produces (1 for :func:`dot`).

    A reduction leaves the counter at zero, so the same work serves any number of
    reductions in a row on one stream (not two at once on different streams). The
    buffers are wrapped for launches once (``targets.kernel_array``).
    """

    def __init__(self, like, sums: int = 1):
        from diva_numba.kernels.targets import kernel_array

        self.sums = sums
        self.partials = kernel_array(device_empty((MAX_PARTIALS * sums,), np.float64, like=like))
        self.counter = kernel_array(device_zeros((1,), np.int32, like=like))

    def check(self, sums: int) -> None:
        if sums > self.sums:
            raise ValueError(f"this ReductionWork holds {self.sums} sums, {sums} needed")


def _reduction_grid(count):
    blocks, threads = launch_1d(count)
    if threads > MAX_BLOCK:
        raise ValueError(f"reduction blocks hold at most {MAX_BLOCK} threads, got {threads}")
    return min(blocks, MAX_PARTIALS), threads


def _work_for(work, like, sums):
    if work is None:
        return ReductionWork(like, sums)
    work.check(sums)
    return work


# --- dispatch -------------------------------------------------------------------------


def dot(a, b, scalars, slot: int, *, work: ReductionWork | None = None) -> None:
    """``scalars[slot] = sum(a * b)``, accumulated in float64.

    Parameters
    ----------
    a, b : float32 or float64 arrays, shape (n,), C-contiguous, same device
    scalars : float64 array, shape (k,), same device
        The scalar register; only ``scalars[slot]`` is written.
    slot : int
    work : ReductionWork, optional
        GPU scratch; allocated per call when omitted.
    """
    if is_cuda_array(a):
        work = _work_for(work, a, 1)
        blocks, threads = _reduction_grid(a.size)
        _dot_kernel[blocks, threads](a, b, work.partials, work.counter, scalars, slot)
    else:
        scalars[slot] = _dot_cpu(a, b)


def squared_error(output, target, *, grad_out, scalars, slot: int, work=None) -> None:
    """Loss ``sum((output - target)**2)`` and its gradient ``2 * (output - target)``.

    Parameters
    ----------
    output, target : float32 or float64 arrays, shape (n,), C-contiguous, same device
    grad_out : array, shape (n,), same dtype and device as ``output``
        Overwritten with ``2 * (output - target)``.
    scalars : float64 array, shape (k,), same device
        ``scalars[slot]`` receives the loss (accumulated in float64).
    slot : int
    work : ReductionWork, optional
    """
    if is_cuda_array(output):
        work = _work_for(work, output, 1)
        blocks, threads = _reduction_grid(output.size)
        _squared_error_kernel[blocks, threads](
            output, target, grad_out, work.partials, work.counter, scalars, slot
        )
    else:
        scalars[slot] = _squared_error_cpu(output, target, grad_out)


def relu_squared_error(
    pre_activation, bias, target, *, grad_out, scalars, slot: int, work=None
) -> None:
    """:func:`squared_error` of ``relu(pre_activation + bias[c])``, gradient through the ReLU.

    The deconvolution's loss fused with the last conv's bias and ReLU:
    ``scalars[slot] = sum((a - target)**2)`` with ``a = relu(pre_activation + bias)``,
    and ``grad_out = 2 (a - target)`` where the ReLU is open, 0 where it is closed
    (the gradient with respect to ``pre_activation``). Bitwise what
    ``relu_forward``, :func:`squared_error` and ``relu_backward`` give in turn.

    Parameters
    ----------
    pre_activation, target : float32 or float64 arrays, shape (C, P), C-contiguous
    bias : array, shape (C,), same dtype and device
    grad_out : array, shape (C, P), same dtype and device
    scalars : float64 array, shape (k,), same device
    slot : int
    work : ReductionWork, optional
    """
    if is_cuda_array(pre_activation):
        work = _work_for(work, pre_activation, 1)
        blocks, threads = _reduction_grid(pre_activation.size)
        _relu_squared_error_kernel[blocks, threads](
            pre_activation, bias, target, grad_out, work.partials, work.counter, scalars, slot
        )
    else:
        scalars[slot] = _relu_squared_error_cpu(pre_activation, bias, target, grad_out)


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
    count = trial_sum_count(history)
    if is_cuda_array(rows):
        if not is_cuda_array(loss):
            from diva_numba.kernels.targets import as_device

            loss = as_device(np.array([float(np.asarray(loss).reshape(()))]), like=rows)
        work = _work_for(work, rows, count)
        blocks, threads = _reduction_grid(rows.shape[1])
        _trial_scalars_kernel[blocks, threads](
            rows,
            gradient,
            loss.reshape(1),
            current,
            trial,
            gradient_row,
            direction,
            first_history,
            history,
            work.partials,
            work.counter,
            scalars,
            loss_slot,
            first_slot,
        )
    else:
        out = np.empty(count)
        _trial_scalars_cpu(
            rows, gradient, current, trial, gradient_row, direction, first_history, history, out
        )
        scalars[first_slot : first_slot + count] = out
        scalars[loss_slot] = float(np.asarray(loss).reshape(()))


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
    arguments = (
        coefficients,
        int(mode),
        int(slot),
        current,
        previous,
        out,
        gradient_row,
        direction,
        first_history,
        history,
        float(step),
    )
    if is_cuda_array(rows):
        work = _work_for(work, rows, 1)
        blocks, threads = _reduction_grid(rows.shape[1])
        _lbfgs_step_kernel[blocks, threads](
            rows, gradient, *arguments, work.partials, work.counter, scalars, slope_slot
        )
    else:
        scalars[slope_slot] = _lbfgs_step_cpu(rows, gradient, *arguments)


def combine(out, a, b, *, alpha: float, beta: float) -> None:
    """``out = alpha * a + beta * b`` with host coefficients (copies, differences, steps).

    Parameters
    ----------
    out, a, b : arrays, shape (n,), same dtype and device; ``out`` may alias ``a`` or ``b``
    alpha, beta : float
    """
    if is_cuda_array(out):
        grid, block = launch_1d(out.size)
        _combine_kernel[grid, block](out, a, b, float(alpha), float(beta))
    else:
        _combine_cpu(out, a, b, float(alpha), float(beta))


def add_scaled(y, x, scalars, *, plus: int, minus: int, over: int) -> None:
    """``y += (scalars[plus] - scalars[minus]) / scalars[over] * x`` with device scalars.

    The coefficient is read from the scalar register on the device, so the caller
    never waits for it. Point ``plus`` or ``minus`` at a slot holding zero for a plain
    ratio.

    Parameters
    ----------
    y, x : arrays, shape (n,), same dtype and device
    scalars : float64 array, shape (k,), same device
    plus, minus, over : int
        Slots of the scalar register.
    """
    if is_cuda_array(y):
        grid, block = launch_1d(y.size)
        _add_scaled_kernel[grid, block](y, x, scalars, plus, minus, over)
    else:
        _add_scaled_cpu(y, x, scalars, plus, minus, over)


def scale(y, scalars, *, numerator: int, denominator: int) -> None:
    """``y *= scalars[numerator] / scalars[denominator]`` with device scalars.

    Parameters
    ----------
    y : array, shape (n,)
    scalars : float64 array, shape (k,), same device
    numerator, denominator : int
        Slots of the scalar register.
    """
    if is_cuda_array(y):
        grid, block = launch_1d(y.size)
        _scale_kernel[grid, block](y, scalars, numerator, denominator)
    else:
        _scale_cpu(y, scalars, numerator, denominator)


def copy_scalar(value, scalars, slot: int) -> None:
    """``scalars[slot] = value``, where ``value`` is a number or a one-element array.

    On the GPU neither form waits for the device: a one-element GPU array is copied by
    a kernel, a host number travels as a kernel argument.
    """
    if not is_cuda_array(scalars):
        scalars[slot] = float(np.asarray(value).reshape(()))
    elif is_cuda_array(value):
        _copy_scalar_kernel[1, 1](value.reshape(1), scalars, slot)
    else:
        _store_scalar_kernel[1, 1](float(np.asarray(value).reshape(())), scalars, slot)
