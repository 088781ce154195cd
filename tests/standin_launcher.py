"""The simulator launcher of the CuPy stand-in (:mod:`cupy_standin`).

Kernel launches go through :func:`install_launcher`, which replaces the body of the
simulator's ``FakeCUDAKernel.__call__`` (device functions are left alone). It still
runs every kernel as Python inside the simulator's fake ``cuda`` module (grid, thread
and block indices, shared and local memory), and it differs in two ways:

* *arguments*: stand-in arrays reach the kernel as the NumPy arrays behind them,
  as a CuPy array reaches a real kernel as a device pointer; a host NumPy array,
  which real Numba would copy to the device and back around the launch, is
  refused (:class:`HiddenTransfer`), and so is a tuple of CuPy arrays, which real
  Numba cannot type (numba issue 8483);
* *scheduling*: a kernel without ``cuda.syncthreads`` (found by scanning its code
  and the device and shared functions it calls) runs its threads one after
  another in the calling thread, which is one legal schedule of a kernel without
  barriers (the stock simulator starts an OS thread per CUDA thread, about 50x
  slower); a kernel with barriers runs a block's threads as OS threads meeting at
  a barrier, like the stock simulator, but without its busy polling;
* *streams*: the stream of ``kernel[grid, block, stream]`` is kept (the stock simulator
  drops it). While a stream captures a CUDA graph (:mod:`standin_capture`), a launch on
  it is recorded, not run, and a launch on any other stream raises, as it would escape
  the graph. :func:`install_launcher` also puts the capture's other stand-ins in place:
  ``numba.cuda.external_stream`` and the libcublas of ``diva_numba.gpu.cublas_capture``.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import queue
import sys
import threading
import types

import numpy as np
import standin_capture
from cupy_standin import COUNTERS, Counters, HiddenTransfer, ndarray
from standin_state import CAPTURE, refuse_while_capturing

# --------------------------------------------------------------------------- the launcher


def _names(code) -> set[str]:
    names = set(code.co_names)
    for constant in code.co_consts:
        if isinstance(constant, types.CodeType):
            names |= _names(constant)
    return names


@functools.cache
def _uses_barrier(function) -> bool:
    """Whether ``function`` or a function it calls calls ``cuda.syncthreads*``."""
    from numba.cuda.simulator.kernel import FakeCUDAKernel

    pending, seen = [function], set()
    while pending:
        current = pending.pop()
        if current.__code__ in seen:
            continue
        seen.add(current.__code__)
        names = _names(current.__code__)
        if any(name.startswith("syncthreads") for name in names):
            return True
        for name in names:
            target = current.__globals__.get(name)
            if isinstance(target, FakeCUDAKernel):
                target = target.fn
            target = getattr(target, "py_func", target)  # njit dispatchers keep it there
            if isinstance(target, types.FunctionType):
                pending.append(target)
    return False


class _BlockAborted(RuntimeError):
    """Raised in the threads of a block waiting at a barrier when one of them failed."""


class _Barrier:
    """``syncthreads`` for one block: releases when every live thread has arrived."""

    def __init__(self, count: int):
        self.condition = threading.Condition()
        self.alive = count
        self.waiting = 0
        self.generation = 0
        self.failed = False

    def _release(self):
        self.waiting = 0
        self.generation += 1
        self.condition.notify_all()

    def wait(self):
        with self.condition:
            if self.failed:
                raise _BlockAborted("another thread of the block failed")
            generation = self.generation
            self.waiting += 1
            if self.waiting == self.alive:
                self._release()
                return
            while generation == self.generation and not self.failed:
                self.condition.wait()
            if self.failed:
                raise _BlockAborted("another thread of the block failed")

    def leave(self, *, failed: bool):
        with self.condition:
            self.alive -= 1
            if failed:
                self.failed = True
                self.condition.notify_all()
            elif self.waiting and self.waiting == self.alive:
                self._release()


class _Worker(threading.Thread):
    """An OS thread that runs CUDA threads of blocks with barriers, one at a time.

    The fake ``cuda`` module reads the running CUDA thread's indices from
    ``threading.current_thread()``, so they are set on the worker before each run.
    Workers are kept for the whole session: starting an OS thread per CUDA thread
    costs more than most kernels.
    """

    def __init__(self):
        super().__init__(daemon=True, name="cuda-simulator-worker")
        self.tasks = queue.SimpleQueue()
        self.barrier = None

    def syncthreads(self):
        self.barrier.wait()

    def run(self):
        while True:
            function, args, barrier, block_index, thread_index, thread_id, done = self.tasks.get()
            self.barrier, self.blockIdx, self.threadIdx = barrier, block_index, thread_index
            self.thread_id = thread_id
            try:
                function(*args)
            except BaseException as exc:  # reported by the launcher
                barrier.leave(failed=True)
                done.put(exc)
            else:
                barrier.leave(failed=False)
                done.put(None)


_WORKERS: list[_Worker] = []


def _run_blocks_with_barriers(function, arguments, grid_dim, thread_indices):
    from numba.cuda.simulator.kernelapi import Dim3

    while len(_WORKERS) < len(thread_indices):
        worker = _Worker()
        worker.start()
        _WORKERS.append(worker)
    done = queue.SimpleQueue()
    for block_index in itertools.product(*(range(extent) for extent in grid_dim)):
        block = Dim3(*block_index)
        barrier = _Barrier(len(thread_indices))
        for worker, (thread_index, thread_id) in zip(_WORKERS, thread_indices, strict=False):
            worker.tasks.put((function, arguments, barrier, block, thread_index, thread_id, done))
        failures = [done.get() for _ in thread_indices]
        # The thread that failed first, not those it stopped at a barrier.
        for failure in sorted(
            (f for f in failures if f is not None), key=lambda f: isinstance(f, _BlockAborted)
        ):
            raise failure


def _no_barrier():
    raise RuntimeError("syncthreads in a kernel the launcher took for barrier-free")


def _kernel_argument(value, name: str, counters: Counters):
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

    if isinstance(value, ndarray):
        return value._a
    if isinstance(value, tuple):
        if any(isinstance(item, ndarray) for item in value):
            raise TypeError(
                f"kernel {name} was launched with a tuple of CuPy arrays, which Numba's CUDA "
                "dispatcher cannot type (numba issue 8483): pass them as separate arguments"
            )
        return tuple(_kernel_argument(item, name, counters) for item in value)
    if isinstance(value, FakeCUDAArray):
        counters.numba_device_arrays += 1
        return value._ary
    if isinstance(value, np.ndarray) and value.ndim > 0:
        raise HiddenTransfer(
            f"kernel {name} was launched with a host NumPy array {value.dtype} {value.shape}: "
            "Numba would copy it to the device and back around the launch"
        )
    return value


def _run_kernel(kernel, args, counters: Counters):
    from numba.cuda.errors import normalize_kernel_dimensions

    function = kernel.fn
    name = function.__name__
    grid_dim, block_dim = normalize_kernel_dimensions(kernel.grid_dim, kernel.block_dim)
    arguments = [_kernel_argument(value, name, counters) for value in args]
    stream = standin_capture.stream_pointer(getattr(kernel, "stream", 0))
    capturing = CAPTURE.stream
    if capturing is not None and stream == capturing.ptr:
        capturing.record(
            _RecordedLaunch(function, grid_dim, block_dim, kernel.dynshared_size, arguments)
        )
        counters.recorded[name] += 1
        return
    refuse_while_capturing(f"kernel {name} launched on stream {stream:#x}")
    counters.launches[name] += 1
    _execute(function, grid_dim, block_dim, kernel.dynshared_size, arguments)


class _RecordedLaunch:
    """A launch in a CUDA graph: its arrays held by address (standin_capture.DeviceView)."""

    def __init__(self, function, grid_dim, block_dim, dynshared_size, arguments):
        self.function, self.grid_dim, self.block_dim = function, grid_dim, block_dim
        self.dynshared_size = dynshared_size
        self.arguments = [
            standin_capture.DeviceView(value) if isinstance(value, np.ndarray) else value
            for value in arguments
        ]

    def replay(self):
        what = f"kernel {self.function.__name__}"
        arguments = [
            value.resolve(what) if isinstance(value, standin_capture.DeviceView) else value
            for value in self.arguments
        ]
        _execute(self.function, self.grid_dim, self.block_dim, self.dynshared_size, arguments)


def _execute(function, grid_dim, block_dim, dynshared_size, arguments):
    """Run a kernel's threads (see the module's notes on scheduling)."""
    from numba.cuda.simulator import kernel as simulator
    from numba.cuda.simulator.kernelapi import Dim3, FakeCUDAModule, swapped_cuda_module

    fake_cuda = FakeCUDAModule(grid_dim, block_dim, dynshared_size)
    block_x, block_y, _ = block_dim
    thread_indices = [
        (Dim3(*index), index[0] + block_x * (index[1] + block_y * index[2]))
        for index in itertools.product(*(range(extent) for extent in block_dim))
    ]
    with simulator._push_kernel_context(fake_cuda), swapped_cuda_module(function, fake_cuda):
        if _uses_barrier(function):
            _run_blocks_with_barriers(function, arguments, grid_dim, thread_indices)
            return
        current = threading.current_thread()
        current.syncthreads = _no_barrier
        try:
            for block_index in itertools.product(*(range(extent) for extent in grid_dim)):
                current.blockIdx = Dim3(*block_index)
                for current.threadIdx, current.thread_id in thread_indices:
                    function(*arguments)
        finally:
            for attribute in ("blockIdx", "threadIdx", "thread_id", "syncthreads"):
                current.__dict__.pop(attribute, None)


_SHARED_LOCK = threading.Lock()


def _shared_array(self, shape, dtype):
    """``cuda.shared.array`` of the simulator, made once per call site under a lock.

    The stock simulator looks the call site up and stores a new array unlocked, so
    two threads of a block running as OS threads could each get an array of their
    own: a reduction through shared memory then lost some threads' values, one run
    in several hundred under load (a neural-style loss 2.4 % off the CPU's).
    """
    from numba.core import types
    from numba.np import numpy_support

    if isinstance(dtype, types.Type):
        dtype = numpy_support.as_dtype(dtype)
    if shape == 0:  # dynamic shared memory: one buffer for every thread already
        count = self._dynshared_size // dtype.itemsize
        return np.frombuffer(self._dynshared.data, dtype=dtype, count=count)
    frame = sys._getframe(1)
    site = (frame.f_code.co_filename, frame.f_lineno)
    with _SHARED_LOCK:
        array = self._allocations.get(site)
        if array is None:
            array = self._allocations[site] = np.empty(shape, dtype)
    return array


def install_launcher(monkeypatch, counters: Counters = COUNTERS) -> Counters:
    """Route every simulated kernel launch through the lean launcher, counting it.

    Also: launches keep their stream, ``numba.cuda.external_stream`` and the libcublas
    of ``diva_numba.gpu.cublas_capture`` are the stand-ins of :mod:`standin_capture`, no
    stream captures, and ``diva_numba.gpu.launch_graphs`` makes its capture streams afresh.
    """
    from numba import cuda
    from numba.cuda.simulator import kernelapi
    from numba.cuda.simulator.kernel import FakeCUDAKernel

    from diva_numba.gpu import cublas_capture, launch_graphs

    stock_call, stock_getitem = FakeCUDAKernel.__call__, FakeCUDAKernel.__getitem__

    def call(self, *args):
        if self._device:  # a device function called from a running kernel
            return stock_call(self, *args)
        return _run_kernel(self, args, counters)

    def getitem(self, configuration):
        stock_getitem(self, configuration)
        self.stream = configuration[2] if len(configuration) > 2 else 0
        return self

    monkeypatch.setattr(FakeCUDAKernel, "__call__", call)
    monkeypatch.setattr(FakeCUDAKernel, "__getitem__", getitem)
    monkeypatch.setattr(kernelapi.FakeCUDAShared, "array", _shared_array)
    monkeypatch.setattr(cuda, "external_stream", standin_capture.external_stream, raising=False)
    monkeypatch.setattr(cublas_capture, "load_cublas", standin_capture.FakeCublas)
    monkeypatch.setattr(launch_graphs, "_captures", {})
    monkeypatch.setattr(CAPTURE, "stream", None)
    monkeypatch.setattr(CAPTURE, "current", [])
    return counters


@contextlib.contextmanager
def counting(counters: Counters = COUNTERS):
    """Yield a :class:`Counters` holding what happens inside the block (filled at exit)."""
    start = counters.snapshot()
    delta = Counters()
    yield delta
    result = counters.since(start)
    delta.__dict__.update(result.__dict__)
