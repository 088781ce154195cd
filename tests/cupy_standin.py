"""A NumPy-backed stand-in for the CuPy the package uses, and a lean simulator launcher.

Together they run the whole CUDA code path (``Device("cuda", ...)``) on a machine
without a GPU: CuPy calls go to NumPy behind :class:`ndarray`, the Numba kernels run
under Numba's CUDA simulator, and every device<->host transfer and kernel launch is
counted (docs/DESIGN.md section 8).

The stand-in is strict where CuPy is, so that a hidden host round trip fails loudly
instead of passing unnoticed:

* ``numpy.asarray(gpu_array)`` raises ``TypeError`` (``__array__``, as CuPy's does);
  so do ``float()``, ``int()``, ``bool()``, ``item()`` and ``tolist()`` of a device
  array, which CuPy allows but which wait for the device and copy behind the
  caller's back. ``.get()`` and ``cupy.asnumpy`` are the only ways back; both count.
* Mixing NumPy arrays with device arrays in arithmetic or in ``cupy.*`` functions
  raises ``TypeError``, as in CuPy. ``cupy.asarray`` of host data counts as an upload
  (and copies, as an upload does).
* A CuPy function or array method the stand-in lacks raises ``AttributeError``
  naming it: add it here (only what real CuPy has, with CuPy's semantics).

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
  a barrier, like the stock simulator, but without its busy polling.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import itertools
import operator
import os
import queue
import sys
import threading
import types
from dataclasses import dataclass, field

import numpy as np

# --------------------------------------------------------------------------- counting


class HiddenTransfer(TypeError):
    """A device array was about to be converted, or a host array launched, implicitly."""


@functools.cache
def _package_roots() -> tuple[str, ...]:
    import diva_numba
    import diva_numba.kernels

    return tuple(
        os.path.dirname(module.__file__) + os.sep for module in (diva_numba, diva_numba.kernels)
    )


#: The package's conversion helpers: a transfer is put down to their caller.
_HELPERS = ("device.py", "targets.py")


def _call_site() -> str:
    """``module.py:line`` of the innermost package frame (diva_numba or its kernels).

    Frames of the conversion helpers (``to_host``, ``to_device``, ``as_device``) are
    skipped, so that the site says who asked for the transfer.
    """
    roots = _package_roots()
    frame = sys._getframe(2)
    while frame is not None:
        filename = frame.f_code.co_filename
        if filename.startswith(roots) and os.path.basename(filename) not in _HELPERS:
            return f"{os.path.basename(filename)}:{frame.f_lineno}"
        frame = frame.f_back
    return "test"


@dataclass
class Counters:
    """Transfers and launches since the counters were made (or last :meth:`reset`).

    Attributes
    ----------
    uploads, downloads : Counter of call site -> count
        Host->device copies (``cupy.asarray`` of host data, host data stored into
        a device array) and device->host copies (``.get()``, ``cupy.asnumpy``), by
        the package line that asked for them.
    upload_bytes, download_bytes : int
    launches : Counter of kernel name -> count
    synchronizations : int
        ``Stream.synchronize``/``deviceSynchronize`` calls.
    numba_device_arrays : int
        Kernel arguments that were Numba (simulator) device arrays rather than CuPy
        ones: the CuPy pipeline should have none.
    """

    uploads: collections.Counter = field(default_factory=collections.Counter)
    downloads: collections.Counter = field(default_factory=collections.Counter)
    upload_bytes: int = 0
    download_bytes: int = 0
    launches: collections.Counter = field(default_factory=collections.Counter)
    synchronizations: int = 0
    numba_device_arrays: int = 0

    def reset(self) -> None:
        self.__init__()

    def snapshot(self) -> Counters:
        return Counters(
            collections.Counter(self.uploads),
            collections.Counter(self.downloads),
            self.upload_bytes,
            self.download_bytes,
            collections.Counter(self.launches),
            self.synchronizations,
            self.numba_device_arrays,
        )

    def since(self, earlier: Counters) -> Counters:
        """What happened between ``earlier`` (a snapshot) and now."""
        return Counters(
            self.uploads - earlier.uploads,
            self.downloads - earlier.downloads,
            self.upload_bytes - earlier.upload_bytes,
            self.download_bytes - earlier.download_bytes,
            self.launches - earlier.launches,
            self.synchronizations - earlier.synchronizations,
            self.numba_device_arrays - earlier.numba_device_arrays,
        )

    @property
    def upload_count(self) -> int:
        return sum(self.uploads.values())

    @property
    def download_count(self) -> int:
        return sum(self.downloads.values())

    @property
    def transfer_count(self) -> int:
        return self.upload_count + self.download_count

    @property
    def launch_count(self) -> int:
        return sum(self.launches.values())

    def upload(self, nbytes: int) -> None:
        self.uploads[_call_site()] += 1
        self.upload_bytes += int(nbytes)

    def download(self, nbytes: int) -> None:
        self.downloads[_call_site()] += 1
        self.download_bytes += int(nbytes)


#: The counters the stand-in module of this process reports to (see :func:`make_module`).
COUNTERS = Counters()


# --------------------------------------------------------------------------- arrays


def _host(value, what: str):
    """The NumPy array behind a stand-in, or ``value`` if it is not an array at all."""
    if isinstance(value, ndarray):
        return value._a
    if isinstance(value, np.ndarray):
        raise TypeError(
            f"Unsupported type {type(value)} in {what}: CuPy does not mix host (NumPy) "
            "arrays with device arrays; upload it with cupy.asarray first"
        )
    if isinstance(value, list | tuple) and any(
        isinstance(item, ndarray | np.ndarray) for item in value
    ):
        return type(value)(_host(item, what) for item in value)
    return value


def _wrap(result):
    if isinstance(result, np.ndarray):
        return ndarray(result)
    if isinstance(result, np.generic):  # CuPy reductions give 0-d device arrays
        return ndarray(np.asarray(result))
    if isinstance(result, tuple):
        return tuple(_wrap(item) for item in result)
    return result


def _implicit(name):
    def refuse(self, *args, **kwargs):
        raise HiddenTransfer(
            f"{name} of a device array would copy it to the host implicitly; "
            "use .get() or cupy.asnumpy"
        )

    refuse.__name__ = name
    return refuse


def _binary(op, name):
    def method(self, other):
        return _wrap(op(self._a, _host(other, f"ndarray.{name}")))

    method.__name__ = name
    return method


def _reflected(op, name):
    def method(self, other):
        return _wrap(op(_host(other, f"ndarray.{name}"), self._a))

    method.__name__ = name
    return method


def _inplace(op, name):
    def method(self, other):
        op(self._a, _host(other, f"ndarray.{name}"))
        return self

    method.__name__ = name
    return method


class ndarray:  # noqa: N801 (CuPy's name)
    """A device array: a NumPy array that refuses to be treated as one.

    Views share memory as CuPy views do; ``__cuda_array_interface__`` points at
    the NumPy buffer, so the kernels' dispatch and onnxruntime's IO binding see a
    GPU array.
    """

    # targets.device_empty and friends recognise CuPy arrays by their module.
    __module__ = "cupy"
    __slots__ = ("_a",)
    # NumPy operators and ufuncs defer to this class; it then refuses NumPy operands.
    __array_ufunc__ = None

    def __init__(self, array: np.ndarray):
        self._a = array

    # --- what CuPy refuses, or does only with a hidden copy
    def __array__(self, dtype=None, copy=None):
        raise HiddenTransfer(
            "Implicit conversion to a NumPy array is not allowed. "
            "Please use `.get()` to construct a NumPy array explicitly."
        )

    __float__ = _implicit("float()")
    __int__ = _implicit("int()")
    __index__ = _implicit("operator.index()")
    __bool__ = _implicit("bool()")
    __complex__ = _implicit("complex()")
    item = _implicit("ndarray.item()")
    tolist = _implicit("ndarray.tolist()")

    def __repr__(self) -> str:  # no transfer: CuPy's repr would copy
        return f"cupy_standin.ndarray(shape={self._a.shape}, dtype={self._a.dtype})"

    __hash__ = None

    # --- the ways back
    def get(self, stream=None, order="C", out=None, blocking=True) -> np.ndarray:
        COUNTERS.download(self._a.nbytes)
        copy = np.array(self._a, order=order, copy=True)
        if out is not None:
            out[...] = copy
            return out
        return copy

    # --- interfaces
    @property
    def __cuda_array_interface__(self) -> dict:
        array = self._a
        return {
            "shape": array.shape,
            "typestr": array.dtype.str,
            "data": (array.__array_interface__["data"][0], False),
            "strides": None if array.flags.c_contiguous else array.strides,
            "version": 3,
        }

    # --- attributes
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    nbytes = property(lambda self: self._a.nbytes)
    itemsize = property(lambda self: self._a.itemsize)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: self._a.flags)
    T = property(lambda self: ndarray(self._a.T))

    def __len__(self) -> int:
        return len(self._a)

    def __iter__(self):
        return (_wrap(row) for row in self._a)

    # --- indexing (host side; kernels see the NumPy array itself)
    def _key(self, key):
        if isinstance(key, tuple):
            return tuple(self._key(part) for part in key)
        if isinstance(key, ndarray):
            return key._a
        if isinstance(key, np.ndarray | list):
            # CuPy uploads a host index array: count it.
            COUNTERS.upload(np.asarray(key).nbytes)
        return key

    def __getitem__(self, key):
        return _wrap(self._a[self._key(key)])

    def __setitem__(self, key, value):
        if isinstance(value, np.ndarray):
            COUNTERS.upload(value.nbytes)
        elif isinstance(value, ndarray):
            value = value._a
        self._a[self._key(key)] = value

    # --- shape and copies
    def reshape(self, *shape, order="C"):
        if len(shape) == 1 and isinstance(shape[0], tuple | list):
            shape = tuple(shape[0])
        return ndarray(self._a.reshape(shape, order=order))

    def transpose(self, *axes):
        if len(axes) == 1 and isinstance(axes[0], tuple | list):
            axes = tuple(axes[0])
        return ndarray(self._a.transpose(*axes))

    def view(self, dtype=None):
        return ndarray(self._a.view(dtype))

    def ravel(self, order="C"):
        return ndarray(self._a.ravel(order))

    def flatten(self, order="C"):
        return ndarray(self._a.flatten(order))

    def squeeze(self, axis=None):
        return ndarray(self._a.squeeze(axis))

    def copy(self, order="C"):
        return ndarray(self._a.copy(order))

    def astype(self, dtype, order="K", casting=None, subok=None, copy=True):
        return ndarray(self._a.astype(dtype, order=order, copy=copy))

    def fill(self, value):
        self._a.fill(_host(value, "ndarray.fill"))

    # --- reductions: 0-d device arrays, as in CuPy
    def _reduce(name):
        def method(self, *args, **kwargs):
            kwargs = {key: _host(value, f"ndarray.{name}") for key, value in kwargs.items()}
            if "out" in kwargs:
                raise NotImplementedError(f"ndarray.{name}(out=) is not stood in")
            return _wrap(getattr(self._a, name)(*args, **kwargs))

        method.__name__ = name
        return method

    sum = _reduce("sum")
    min = _reduce("min")
    max = _reduce("max")
    mean = _reduce("mean")
    any = _reduce("any")
    all = _reduce("all")
    argmin = _reduce("argmin")
    argmax = _reduce("argmax")
    del _reduce

    # --- arithmetic
    __add__ = _binary(operator.add, "__add__")
    __sub__ = _binary(operator.sub, "__sub__")
    __mul__ = _binary(operator.mul, "__mul__")
    __truediv__ = _binary(operator.truediv, "__truediv__")
    __floordiv__ = _binary(operator.floordiv, "__floordiv__")
    __mod__ = _binary(operator.mod, "__mod__")
    __pow__ = _binary(operator.pow, "__pow__")
    __matmul__ = _binary(operator.matmul, "__matmul__")
    __and__ = _binary(operator.and_, "__and__")
    __or__ = _binary(operator.or_, "__or__")
    __xor__ = _binary(operator.xor, "__xor__")
    __lt__ = _binary(operator.lt, "__lt__")
    __le__ = _binary(operator.le, "__le__")
    __gt__ = _binary(operator.gt, "__gt__")
    __ge__ = _binary(operator.ge, "__ge__")
    __eq__ = _binary(operator.eq, "__eq__")
    __ne__ = _binary(operator.ne, "__ne__")
    __radd__ = _reflected(operator.add, "__radd__")
    __rsub__ = _reflected(operator.sub, "__rsub__")
    __rmul__ = _reflected(operator.mul, "__rmul__")
    __rtruediv__ = _reflected(operator.truediv, "__rtruediv__")
    __rfloordiv__ = _reflected(operator.floordiv, "__rfloordiv__")
    __rpow__ = _reflected(operator.pow, "__rpow__")
    __rmatmul__ = _reflected(operator.matmul, "__rmatmul__")
    __rand__ = _reflected(operator.and_, "__rand__")
    __ror__ = _reflected(operator.or_, "__ror__")
    __iadd__ = _inplace(operator.iadd, "__iadd__")
    __isub__ = _inplace(operator.isub, "__isub__")
    __imul__ = _inplace(operator.imul, "__imul__")
    __itruediv__ = _inplace(operator.itruediv, "__itruediv__")
    __ior__ = _inplace(operator.ior, "__ior__")
    __iand__ = _inplace(operator.iand, "__iand__")

    def __neg__(self):
        return ndarray(-self._a)

    def __pos__(self):
        return ndarray(+self._a)

    def __abs__(self):
        return ndarray(abs(self._a))

    def __invert__(self):
        return ndarray(~self._a)


# --------------------------------------------------------------------------- the module


def asarray(a, dtype=None, order=None, *, blocking=False):
    """``a`` on the device: a no-op (or a cast) for device arrays, an upload otherwise."""
    if isinstance(a, ndarray):
        if dtype is None or np.dtype(dtype) == a.dtype:
            return a
        return a.astype(dtype)
    host = np.array(a, dtype=dtype, order=order or "K", copy=True)
    COUNTERS.upload(host.nbytes)
    return ndarray(host)


def array(obj, dtype=None, copy=True, order="K", ndmin=0):
    if isinstance(obj, ndarray):
        return ndarray(np.array(obj._a, dtype=dtype, copy=copy, order=order, ndmin=ndmin))
    host = np.array(obj, dtype=dtype, copy=True, order=order, ndmin=ndmin)
    COUNTERS.upload(host.nbytes)
    return ndarray(host)


def asnumpy(a, stream=None, order="C", out=None, blocking=True):
    if isinstance(a, ndarray):
        return a.get(order=order, out=out)
    return np.asarray(a, order=order)


def ascontiguousarray(a, dtype=None):
    if not isinstance(a, ndarray):
        return ascontiguousarray(asarray(a), dtype)
    return ndarray(np.ascontiguousarray(a._a, dtype=dtype))


def _copy(a, order="K"):
    return ndarray(np.array(_host(a, "cupy.copy"), copy=True, order=order))


def _allocator(function):
    @functools.wraps(function)
    def allocate(*args, **kwargs):
        return ndarray(function(*args, **kwargs))

    return allocate


# Uninitialised memory reads as NaN (floats) or a large negative number (integers): a
# kernel that reads what nothing wrote poisons its result, and the CPU comparison shows it.
def _empty(shape, dtype=float, order="C"):
    out = np.empty(shape, dtype=dtype, order=order)
    out.fill(np.nan if out.dtype.kind == "f" else -(2**30) if out.dtype.kind == "i" else 0xAB)
    return out


def _empty_like(prototype, dtype=None, order="K", shape=None):
    prototype = _host(prototype, "cupy.empty_like")
    return _empty(prototype.shape if shape is None else shape, dtype or prototype.dtype)


def _generic(name):
    function = getattr(np, name)

    @functools.wraps(function)
    def call(*args, **kwargs):
        args = tuple(_host(value, f"cupy.{name}") for value in args)
        out = kwargs.pop("out", None)
        kwargs = {key: _host(value, f"cupy.{name}") for key, value in kwargs.items()}
        if out is not None:
            if not isinstance(out, ndarray):
                raise TypeError(f"cupy.{name}(out=) must be a device array")
            kwargs["out"] = out._a
        result = function(*args, **kwargs)
        return out if out is not None else _wrap(result)

    return call


#: NumPy functions the stand-in offers under their CuPy names, with CuPy's rules.
GENERIC_FUNCTIONS = (
    "abs", "add", "all", "any", "arange", "argmax", "argmin", "clip", "concatenate",
    "copyto", "divide", "exp", "floor", "full", "linspace", "matmul", "maximum", "mean",
    "minimum", "multiply", "ones", "ones_like", "rint", "sqrt", "square", "stack", "subtract",
    "sum", "where", "zeros", "zeros_like", "logical_or", "logical_and", "take", "meshgrid",
    "broadcast_to", "expand_dims", "moveaxis", "count_nonzero", "array_equal", "cos", "sin",
)  # fmt: skip

DTYPES = (
    "bool_", "int8", "int16", "int32", "int64", "intp", "uint8", "uint16", "uint32",
    "uint64", "float16", "float32", "float64", "dtype",
)  # fmt: skip


class _Stream:
    def synchronize(self):
        COUNTERS.synchronizations += 1


class _MemoryPool:
    def free_all_blocks(self):
        pass

    def used_bytes(self):
        return 0

    def total_bytes(self):
        return 0

    def n_free_blocks(self):
        return 0


def make_module(description: str = "simulated GPU") -> types.ModuleType:
    """A ``cupy`` module on NumPy, reporting to :data:`COUNTERS`."""
    module = types.ModuleType("cupy")
    module.__version__ = "0.0-standin"
    module.ndarray = ndarray
    module.asarray = asarray
    module.array = array
    module.asnumpy = asnumpy
    module.ascontiguousarray = ascontiguousarray
    module.empty = _allocator(_empty)
    module.empty_like = _allocator(_empty_like)
    module.copy = _copy
    for name in GENERIC_FUNCTIONS:
        setattr(module, name, _generic(name))
    for name in DTYPES:
        setattr(module, name, getattr(np, name))
    stream = _Stream()
    memory_pool, pinned_pool = _MemoryPool(), _MemoryPool()
    module.get_default_memory_pool = lambda: memory_pool
    module.get_default_pinned_memory_pool = lambda: pinned_pool

    def synchronize():
        COUNTERS.synchronizations += 1

    runtime = types.SimpleNamespace(
        getDeviceCount=lambda: 1,
        getDeviceProperties=lambda device_id: {
            "name": description.encode(),
            "totalGlobalMem": 8 << 30,
            "l2CacheSize": 1 << 20,
        },
        runtimeGetVersion=lambda: 12000,
        driverGetVersion=lambda: 12000,
        deviceSynchronize=synchronize,
    )
    module.cuda = types.SimpleNamespace(
        runtime=runtime,
        get_current_stream=lambda: stream,
        Device=lambda device_id=0: types.SimpleNamespace(id=device_id, synchronize=synchronize),
    )

    def missing(name):
        raise AttributeError(
            f"the CuPy stand-in has no cupy.{name}; add it to tests/cupy_standin.py "
            "(with CuPy's semantics) if real CuPy has it"
        )

    module.__getattr__ = missing
    return module


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
    from numba.cuda.simulator import kernel as simulator
    from numba.cuda.simulator.kernelapi import Dim3, FakeCUDAModule, swapped_cuda_module

    function = kernel.fn
    name = function.__name__
    counters.launches[name] += 1
    grid_dim, block_dim = normalize_kernel_dimensions(kernel.grid_dim, kernel.block_dim)
    arguments = [_kernel_argument(value, name, counters) for value in args]
    fake_cuda = FakeCUDAModule(grid_dim, block_dim, kernel.dynshared_size)
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


def install_launcher(monkeypatch, counters: Counters = COUNTERS) -> Counters:
    """Route every simulated kernel launch through the lean launcher, counting it."""
    from numba.cuda.simulator.kernel import FakeCUDAKernel

    stock_call = FakeCUDAKernel.__call__

    def call(self, *args):
        if self._device:  # a device function called from a running kernel
            return stock_call(self, *args)
        return _run_kernel(self, args, counters)

    monkeypatch.setattr(FakeCUDAKernel, "__call__", call)
    return counters


@contextlib.contextmanager
def counting(counters: Counters = COUNTERS):
    """Yield a :class:`Counters` holding what happens inside the block (filled at exit)."""
    start = counters.snapshot()
    delta = Counters()
    yield delta
    result = counters.since(start)
    delta.__dict__.update(result.__dict__)
