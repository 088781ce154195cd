"""The ``cupy`` module of the CuPy stand-in (:mod:`cupy_standin`): its functions and dtypes."""

from __future__ import annotations

import functools
import types

import numpy as np
import standin_capture
from cupy_standin import COUNTERS, _host, _wrap, ndarray
from standin_state import CAPTURE, refuse_while_capturing

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
        refuse_while_capturing("cupy.array (an allocation and a copy)")
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
    if not a._a.flags.c_contiguous or (dtype is not None and np.dtype(dtype) != a.dtype):
        refuse_while_capturing("cupy.ascontiguousarray (an allocation and a copy)")
    return ndarray(np.ascontiguousarray(a._a, dtype=dtype))


def _copy(a, order="K"):
    refuse_while_capturing("cupy.copy (an allocation and a copy)")
    return ndarray(np.array(_host(a, "cupy.copy"), copy=True, order=order))


def _allocator(function):
    @functools.wraps(function)
    def allocate(*args, **kwargs):
        refuse_while_capturing(f"cupy.{function.__name__.lstrip('_')} (an allocation)")
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
        if name == "matmul" and CAPTURE.stream is not None:
            if standin_capture.current_stream() is CAPTURE.stream:
                # CuPy's cublas.setStream refuses a capturing stream (CuPy 11 and later).
                raise NotImplementedError(
                    "calling cuBLAS API during stream capture is currently unsupported"
                )
        refuse_while_capturing(f"cupy.{name}")
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
    memory_pool, pinned_pool = _MemoryPool(), _MemoryPool()
    module.get_default_memory_pool = lambda: memory_pool
    module.get_default_pinned_memory_pool = lambda: pinned_pool

    def synchronize():
        refuse_while_capturing("cupy.cuda.runtime.deviceSynchronize")
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
        Stream=standin_capture.Stream,
        get_current_stream=standin_capture.current_stream,
        graph=types.SimpleNamespace(Graph=standin_capture.Graph),
        Device=lambda device_id=0: types.SimpleNamespace(id=device_id, synchronize=synchronize),
    )

    def missing(name):
        raise AttributeError(
            f"the CuPy stand-in has no cupy.{name}; add it to tests/cupy_standin.py "
            "(with CuPy's semantics) if real CuPy has it"
        )

    module.__getattr__ = missing
    return module
