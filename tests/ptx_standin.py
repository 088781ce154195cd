"""Stand-in CuPy arrays that Numba's real CUDA target types without a GPU.

Used by tests/test_cuda_ptx.py (in its compiler subprocess) and by the exercises of
tests/cuda_exercises.py: host arrays that the kernels package takes for CuPy arrays,
a ``cupy`` module made of NumPy's functions that returns them, the patches that let
the CUDA dispatcher type them as it types CuPy arrays, and a launch that records the
argument types instead of running the kernel.
"""

from __future__ import annotations

import types

import numpy as np


class FakeGpuArray(np.ndarray):
    """A host array that the kernels package takes for a CuPy array.

    Numba's typing sees it as it sees a CuPy array: :func:`type_like_cupy` removes
    the NumPy typing it would inherit, so only its ``__cuda_array_interface__`` (laid
    out as CuPy's: no strides when C-contiguous, no stream) is left to type it by.
    """

    __module__ = "cupy"

    @property
    def __cuda_array_interface__(self):
        return {
            "shape": self.shape,
            "typestr": self.dtype.str,
            "data": (self.ctypes.data, False),
            "strides": None if self.flags.c_contiguous else self.strides,
            "version": 3,
        }


def gpu(array):
    """``array`` as a stand-in GPU array."""
    return np.ascontiguousarray(array).view(FakeGpuArray)


def fake_cupy_module():
    """A ``cupy`` module whose functions are NumPy's, returning stand-in GPU arrays."""

    def on_fake_gpu(function):
        def wrapper(*args, **kwargs):
            result = function(*args, **kwargs)
            if not isinstance(result, np.ndarray):
                return result
            # CuPy copies host data to new, writable device memory.
            return (result if result.flags.writeable else result.copy()).view(FakeGpuArray)

        return wrapper

    module = types.ModuleType("cupy")
    module.ndarray = FakeGpuArray
    # No kernel runs, so "uninitialised" buffers are zeros: host code reading them
    # (matmul of the network) then computes on numbers instead of garbage.
    module.empty = on_fake_gpu(np.zeros)

    def attribute(name):
        if name.startswith("_"):
            raise AttributeError(name)
        return on_fake_gpu(getattr(np, name))

    module.__getattr__ = attribute
    return module


def type_like_cupy():
    """Make Numba type the stand-in arrays as CuPy's, without a GPU.

    * Numba's ``typeof`` has no rule for CuPy arrays (no buffer protocol, no
      ``_numba_type_``), so the CUDA dispatcher falls back to
      ``cuda.as_cuda_array(value)`` and types the device array built from the
      ``__cuda_array_interface__``. The stand-ins are NumPy arrays underneath, so
      their inherited NumPy rule is overridden with "no rule", as for CuPy. A tuple
      of them is typed element by element with ``typeof`` alone, which then fails,
      exactly as a tuple of CuPy arrays fails on a real GPU (numba issue 8483).
    * Building that device array asks the CUDA driver for a context (the
      ``require_context`` decorator, ``current_context``) and for the device pointer;
      with no GPU, the decorator is skipped, the context is None and the pointer is
      kept as it is. Everything else (shape, strides, layout, the array's Numba type)
      is Numba's own code.
    """
    from numba.core.typing.typeof import typeof_impl
    from numba.cuda import api
    from numba.cuda.cudadrv import driver

    typeof_impl.register(FakeGpuArray)(lambda value, context: None)
    api.from_cuda_array_interface = api.from_cuda_array_interface.__wrapped__
    api.current_context = lambda: None
    driver.get_devptr_for_active_ctx = lambda pointer: pointer


class TypeRecordingLaunch:
    """Stands in for ``kernel[grid, block]``: records the argument types, runs nothing.

    The types are the CUDA dispatcher's own (``typeof_pyval``, what a real launch
    uses for every argument its C fast path does not know). An argument it cannot
    type, or a host array, is recorded as a launch problem instead.
    """

    def __init__(self, kernel, launches, problems):
        self._kernel = kernel
        self._launches = launches
        self._problems = problems

    def __call__(self, *args):
        argument_types = []
        for position, arg in enumerate(args):
            where = f"argument {position} ({_describe_value(arg)})"
            if isinstance(arg, tuple) and _holds_gpu_array(arg):
                # Also when this Numba could type it: the releases the project allows
                # (numba's own CUDA target, numba-cuda before 0.23) cannot.
                self._problems.setdefault(self._kernel, set()).add(
                    f"{where}: a tuple of GPU arrays; pass each array as its own "
                    "argument (numba issue 8483)"
                )
            if type(arg) is np.ndarray or _holds_host_array(arg):
                self._problems.setdefault(self._kernel, set()).add(
                    f"{where}: a host array reaches the kernel (Numba copies it to the "
                    "device and back at every launch); upload it once"
                )
            try:
                argument_types.append(self._kernel.typeof_pyval(arg))
            except Exception as exc:
                self._problems.setdefault(self._kernel, set()).add(
                    f"{where}: the CUDA dispatcher cannot type it: "
                    f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}"
                )
                return
        self._launches.setdefault(self._kernel, set()).add(tuple(argument_types))


def _holds_gpu_array(value):
    return any(
        isinstance(item, FakeGpuArray)
        or bool(getattr(item, "__cuda_ndarray__", False))
        or (isinstance(item, tuple) and _holds_gpu_array(item))
        for item in value
    )


def _holds_host_array(value):
    return isinstance(value, tuple) and any(
        type(item) is np.ndarray or _holds_host_array(item) for item in value
    )


def _describe_value(value):
    if isinstance(value, tuple):
        return "tuple of " + ", ".join(_describe_value(item) for item in value)
    if isinstance(value, np.ndarray):
        kind = "stand-in CuPy array" if isinstance(value, FakeGpuArray) else "NumPy array"
        return f"{kind} {value.dtype} {value.shape}"
    return type(value).__name__
