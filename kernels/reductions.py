"""The float64 scalar register and the one-launch reductions that write into it.

The optimiser (:mod:`diva_numba.optim.lbfgs`) keeps its scalars (dot products, the loss) in
a small float64 "scalar register" array that lives on the same device as the
vectors. Reductions write into slots of that register and vector updates
(:mod:`diva_numba.kernels.vector_ops`) read their coefficients from it or take them
as launch arguments, so an iteration runs on the GPU without copying a scalar to the
host; the optimiser reads the whole register once per function evaluation.

Reductions accumulate in float64 whatever the vector dtype. A CUDA reduction is one
launch: every block adds its share (grid-stride, then a tree in shared memory) and
writes a partial sum; the last block to finish, found with an atomic ticket, adds
the partials in index order and writes the register. Results therefore do not depend
on thread scheduling, and a reduction costs one launch instead of two. The partials
and the ticket counter live in a :class:`ReductionWork`, which a caller that reduces
often allocates once.

This module holds that machinery (:func:`reduce_into` for the CUDA kernels that
reduce, :data:`CPU_CHUNKS` for their CPU twins), the plain :func:`dot` and
:func:`copy_scalar`. The fused reductions are the losses
(:mod:`diva_numba.kernels.squared_error`) and the optimiser's iteration
(:mod:`diva_numba.kernels.lbfgs_ops`).
"""

from __future__ import annotations

import numpy as np
from numba import cuda, float64, int32, njit, prange

from diva_numba.kernels.targets import (
    device_empty,
    device_zeros,
    is_cuda_array,
    kernel_array,
    launch_1d,
    shared,
    smaller,
)

#: Largest block the CUDA reductions support (their shared-memory buffer holds
#: ``_SUM_CHUNK`` sums of this many threads: 32 KiB).
MAX_BLOCK = 256
#: Sums one tree pass of a reduction adds at once.
_SUM_CHUNK = 16
#: At most this many blocks (and partial sums) per CUDA reduction.
MAX_PARTIALS = 1024
#: Chunks of the CPU twins' multi-sum reductions: a fixed split, so the sums do not
#: depend on the thread count.
CPU_CHUNKS = 64


@shared
def product64(a, b):
    """``a * b`` in float64, whatever the storage dtype."""
    return float64(a) * float64(b)


# --- CPU ------------------------------------------------------------------------------


@njit(parallel=True, cache=True)
def _dot_cpu(a, b):
    total = 0.0
    for index in prange(a.size):
        total += product64(a[index], b[index])
    return total


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
def reduce_into(sums, count, partials, counter, scalars, first_slot):
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
    reduce_into(sums, 1, partials, counter, scalars, slot)


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
        self.sums = sums
        self.partials = kernel_array(device_empty((MAX_PARTIALS * sums,), np.float64, like=like))
        self.counter = kernel_array(device_zeros((1,), np.int32, like=like))

    def check(self, sums: int) -> None:
        if sums > self.sums:
            raise ValueError(f"this ReductionWork holds {self.sums} sums, {sums} needed")


def reduction_grid(count: int) -> tuple[int, int]:
    """``(blocks, threads)`` of a reduction over ``count`` elements."""
    blocks, threads = launch_1d(count)
    if threads > MAX_BLOCK:
        raise ValueError(f"reduction blocks hold at most {MAX_BLOCK} threads, got {threads}")
    return min(blocks, MAX_PARTIALS), threads


def work_for(work: ReductionWork | None, like, sums: int) -> ReductionWork:
    """``work``, checked to hold ``sums`` sums; a new one on ``like``'s device if None."""
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
        dot_cuda(a, b, scalars, slot, work=work)
    else:
        dot_cpu(a, b, scalars, slot)


def dot_cpu(a, b, scalars, slot: int) -> None:
    """CPU twin of :func:`dot`."""
    scalars[slot] = _dot_cpu(a, b)


def dot_cuda(a, b, scalars, slot: int, *, work: ReductionWork | None = None) -> None:
    """CUDA kernels of :func:`dot` (two passes in a fixed order)."""
    work = work_for(work, a, 1)
    blocks, threads = reduction_grid(a.size)
    _dot_kernel[blocks, threads](a, b, work.partials, work.counter, scalars, slot)


def copy_scalar(value, scalars, slot: int) -> None:
    """``scalars[slot] = value``, where ``value`` is a number or a one-element array.

    On the GPU neither form waits for the device: a one-element GPU array is copied by
    a kernel, a host number travels as a kernel argument.
    """
    if is_cuda_array(scalars):
        copy_scalar_cuda(value, scalars, slot)
    else:
        copy_scalar_cpu(value, scalars, slot)


def copy_scalar_cpu(value, scalars, slot: int) -> None:
    """CPU twin of :func:`copy_scalar`."""
    scalars[slot] = float(np.asarray(value).reshape(()))


def copy_scalar_cuda(value, scalars, slot: int) -> None:
    """CUDA kernel of :func:`copy_scalar`: a GPU ``value`` copied on the device."""
    if is_cuda_array(value):
        _copy_scalar_kernel[1, 1](value.reshape(1), scalars, slot)
    else:
        _store_scalar_kernel[1, 1](float(np.asarray(value).reshape(())), scalars, slot)
