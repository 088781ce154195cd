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

While a stream captures a CUDA graph (:mod:`standin_capture`), the stand-in is as
strict as CUDA: a transfer, an allocation, a synchronisation, or any CuPy computation
(which the stand-in would run at once, outside the graph) raises
:class:`CaptureViolation` and invalidates the capture; ``cupy.matmul`` on the capturing
stream raises CuPy's own ``NotImplementedError`` (CuPy refuses cuBLAS during capture).
Views (reshape, slicing, transposes) do no device work and stay allowed.

Kernel launches go through :func:`standin_launcher.install_launcher` (re-exported
here).
"""

from __future__ import annotations

import collections
import functools
import operator
import os
import sys
from dataclasses import dataclass, field

import numpy as np
from standin_state import (  # noqa: F401 (re-exported: the stand-in's one entry point)
    CAPTURE,
    CaptureViolation,
    owner_of,
    refuse_while_capturing,
    register_buffer,
    root_buffer,
)

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
        Launches run; a CUDA graph's replay counts once, as ``GRAPH_LAUNCH``.
    synchronizations : int
        ``Stream.synchronize``/``deviceSynchronize`` calls.
    numba_device_arrays : int
        Kernel arguments that were Numba (simulator) device arrays rather than CuPy
        ones: the CuPy pipeline should have none.
    recorded : Counter of kernel name -> count
        Launches (and cuBLAS products, as ``"cublas_gemm"``) recorded into CUDA graphs.
    """

    uploads: collections.Counter = field(default_factory=collections.Counter)
    downloads: collections.Counter = field(default_factory=collections.Counter)
    upload_bytes: int = 0
    download_bytes: int = 0
    launches: collections.Counter = field(default_factory=collections.Counter)
    synchronizations: int = 0
    numba_device_arrays: int = 0
    recorded: collections.Counter = field(default_factory=collections.Counter)

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
            collections.Counter(self.recorded),
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
            self.recorded - earlier.recorded,
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
        refuse_while_capturing("a host->device copy")
        self.uploads[_call_site()] += 1
        self.upload_bytes += int(nbytes)

    def download(self, nbytes: int) -> None:
        refuse_while_capturing("a device->host copy")
        self.downloads[_call_site()] += 1
        self.download_bytes += int(nbytes)


#: The name a CUDA graph's replay is counted under in :attr:`Counters.launches`.
GRAPH_LAUNCH = "cuda_graph_launch"


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
        register_buffer(array)

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


def _refusing_while_capturing(method, name: str):
    @functools.wraps(method)
    def call(self, *args, **kwargs):
        refuse_while_capturing(f"ndarray.{name}")
        return method(self, *args, **kwargs)

    return call


#: ndarray methods that do device work (a CuPy kernel, or an allocation): refused while
#: a stream captures, since the stand-in would run them at once.
_DEVICE_WORK = (
    "copy", "astype", "flatten", "fill", "__setitem__", "sum", "min", "max", "mean", "any",
    "all", "argmin", "argmax", "__neg__", "__pos__", "__abs__", "__invert__",
    "__radd__", "__rsub__", "__rmul__", "__rtruediv__", "__rfloordiv__", "__rpow__",
    "__rmatmul__", "__rand__", "__ror__", "__iadd__", "__isub__", "__imul__", "__itruediv__",
    "__ior__", "__iand__", "__add__", "__sub__", "__mul__", "__truediv__", "__floordiv__",
    "__mod__", "__pow__", "__matmul__", "__and__", "__or__", "__xor__", "__lt__", "__le__",
    "__gt__", "__ge__", "__eq__", "__ne__",
)  # fmt: skip
for _name in _DEVICE_WORK:
    setattr(ndarray, _name, _refusing_while_capturing(getattr(ndarray, _name), _name))
del _name

# The module's functions and the launcher live in modules of their own; importing them from
# here keeps one entry point.
from standin_launcher import counting, install_launcher  # noqa: E402, F401
from standin_module import asnumpy, make_module  # noqa: E402, F401
