"""CUDA streams, stream capture and graphs for the CuPy stand-in, and a stand-in libcublas.

What real CUDA, CuPy and cuBLAS do, as far as this project's graphs depend on it:

* :class:`Stream` (``cupy.cuda.Stream``): ``with stream:`` makes it CuPy's current
  stream; ``begin_capture`` refuses the legacy default stream (as CuPy does), and while
  a stream captures, kernel launches and cuBLAS products queued on it are *recorded*,
  not run. Anything else (a launch on another stream, a CuPy computation, an
  allocation, a transfer, a synchronisation) raises
  :class:`~standin_state.CaptureViolation` and invalidates the capture, so that
  ``end_capture`` then raises as CUDA's ``cudaStreamEndCapture`` does;
* :class:`Graph`: ``launch()`` replays the recording and counts as *one* launch
  (:data:`cupy_standin.GRAPH_LAUNCH`). A graph holds addresses, not arrays: a replay
  reads whatever the captured addresses hold *now* (so a graph captured on a buffer
  that the caller swaps between calls gives stale results, which the tests see), and
  raises if that memory was freed since the capture;
* :class:`FakeCublas` stands in for the ``ctypes`` libcublas of
  ``diva_numba.gpu.cublas_capture``: the same calls, on raw addresses of stand-in device
  memory, column-major as cuBLAS is; ``cublasSetStream`` drops the handle's workspace
  (as cuBLAS does), and a product recorded without a workspace of the caller's raises
  (cuBLAS would allocate one during the capture);
* :func:`external_stream` stands in for ``numba.cuda.external_stream``, which the
  simulator lacks: the launcher (:mod:`standin_launcher`) reads the stream of each
  launch from it.
"""

from __future__ import annotations

import ctypes
import itertools
import weakref

import numpy as np
from standin_state import CAPTURE, CaptureViolation, owner_of, refuse_while_capturing

_POINTERS = itertools.count(0x5000, 0x10)
#: Streams by pointer, for the launcher and the stand-in cuBLAS.
_STREAMS: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


class Stream:
    """``cupy.cuda.Stream`` (and the null stream, pointer 0)."""

    def __init__(self, null=False, non_blocking=False, ptds=False, priority=None):
        self.ptr = 0 if null else next(_POINTERS)
        self.non_blocking = non_blocking
        self._recording = None
        self._invalid = ""
        _STREAMS[self.ptr] = self

    def __enter__(self):
        CAPTURE.current.append(self)
        return self

    def __exit__(self, *exc_info):
        CAPTURE.current.pop()

    def synchronize(self):
        from cupy_standin import COUNTERS

        refuse_while_capturing("Stream.synchronize")
        COUNTERS.synchronizations += 1

    def begin_capture(self, mode=None):
        if self.ptr == 0:
            raise RuntimeError("cannot capture on the default (legacy) stream")
        if CAPTURE.stream is not None:
            raise RuntimeError("another stream is capturing already")
        CAPTURE.stream, self._recording, self._invalid = self, [], ""

    def end_capture(self):
        if CAPTURE.stream is not self:
            raise RuntimeError("cudaErrorIllegalState: this stream is not capturing")
        CAPTURE.stream = None
        recording, self._recording = self._recording, None
        if self._invalid:
            raise RuntimeError(f"cudaErrorStreamCaptureInvalidated: {self._invalid}")
        return Graph(recording)

    def is_capturing(self) -> bool:
        return CAPTURE.stream is self

    def invalidate(self, why: str) -> None:
        """A rule of capture was broken: the capture ends in an error."""
        self._invalid = self._invalid or why

    def record(self, operation) -> None:
        self._recording.append(operation)


#: The legacy default stream, CuPy's current stream unless another is entered.
NULL_STREAM = Stream(null=True)


def current_stream() -> Stream:
    """``cupy.cuda.get_current_stream()``."""
    return CAPTURE.current[-1] if CAPTURE.current else NULL_STREAM


class Graph:
    """``cupy.cuda.graph.Graph``: an instantiated recording."""

    def __init__(self, operations):
        self._operations = tuple(operations)

    def launch(self, stream=None):
        from cupy_standin import COUNTERS, GRAPH_LAUNCH

        # Into a capture it would become a child graph, which the project never makes.
        refuse_while_capturing("Graph.launch")
        COUNTERS.launches[GRAPH_LAUNCH] += 1
        for operation in self._operations:
            operation.replay()

    def upload(self, stream=None):
        pass


class DeviceView:
    """A view of stand-in device memory as a graph keeps it: an address, no reference."""

    def __init__(self, array: np.ndarray):
        root = owner_of(array.__array_interface__["data"][0], max(array.nbytes, 1))
        if root is None:
            raise CaptureViolation(
                f"a {array.dtype} {array.shape} array that is not device memory was captured"
            )
        self._root = weakref.ref(root)
        self._offset = array.__array_interface__["data"][0] - root.__array_interface__["data"][0]
        self._shape, self._strides, self._dtype = array.shape, array.strides, array.dtype

    def resolve(self, what: str) -> np.ndarray:
        root = self._root()
        if root is None:
            raise CaptureViolation(f"{what}: the graph reads memory freed since its capture")
        return np.ndarray(
            self._shape, self._dtype, buffer=root, offset=self._offset, strides=self._strides
        )


def external_stream(ptr: int):
    """``numba.cuda.external_stream``: a Numba view of a CuPy stream."""
    if not isinstance(ptr, int):
        raise TypeError("ptr for external stream must be an int")
    return _NumbaStream(ptr)


class _NumbaStream:
    def __init__(self, ptr: int):
        self.ptr = ptr

    def __int__(self) -> int:
        return self.ptr


def stream_pointer(stream) -> int:
    """The CUDA stream a launch configuration names (0: the default stream)."""
    return 0 if stream is None or (isinstance(stream, int) and stream == 0) else int(stream)


# --------------------------------------------------------------------------- libcublas


def _value(argument):
    """A ``ctypes`` argument as Python sees it: pointers and handles as ints, scalars by value."""
    argument = getattr(argument, "_obj", argument)  # ctypes.byref(x)
    if isinstance(argument, ctypes._SimpleCData):
        argument = argument.value
    return 0 if argument is None else argument


class _Handle:
    def __init__(self):
        self.stream = 0
        self.workspace = None


class FakeCublas:
    """The calls of libcublas that ``diva_numba.gpu.cublas_capture`` makes, on stand-in memory."""

    def __init__(self):
        self._handles: dict[int, _Handle] = {}

    def cublasCreate_v2(self, handle_reference):  # noqa: N802 (cuBLAS's names)
        refuse_while_capturing("cublasCreate")
        key = len(self._handles) + 1
        self._handles[key] = _Handle()
        handle_reference._obj.value = key
        return 0

    def cublasSetStream_v2(self, handle, stream):  # noqa: N802
        state = self._handles[_value(handle)]
        state.stream = _value(stream)
        state.workspace = None  # cuBLAS goes back to its own workspace pool
        return 0

    def cublasSetWorkspace_v2(self, handle, address, size):  # noqa: N802
        root = owner_of(_value(address), _value(size))
        if root is None:
            raise CaptureViolation("cublasSetWorkspace: the workspace is not device memory")
        self._handles[_value(handle)].workspace = weakref.ref(root)
        return 0

    def cublasSgemm_v2(self, *arguments):  # noqa: N802
        return self._gemm(np.float32, *arguments)

    def cublasDgemm_v2(self, *arguments):  # noqa: N802
        return self._gemm(np.float64, *arguments)

    def _gemm(self, dtype, handle, *arguments):
        from cupy_standin import COUNTERS

        state = self._handles[_value(handle)]
        values = [_value(argument) for argument in arguments]
        operation = _Gemm(dtype, *values)
        capturing = CAPTURE.stream
        if capturing is None:
            operation.replay()
            return 0
        if state.stream != capturing.ptr:
            refuse_while_capturing(f"a cuBLAS product on stream {state.stream:#x}")
        if state.workspace is None or state.workspace() is None:
            message = (
                "a cuBLAS product without a workspace of the caller's: cuBLAS would "
                "allocate one during the capture (cublasSetWorkspace after cublasSetStream)"
            )
            capturing.invalidate(message)
            raise CaptureViolation(message)
        capturing.record(operation)
        COUNTERS.recorded["cublas_gemm"] += 1
        return 0


class _Gemm:
    """``C = alpha op(A) op(B) + beta C``, column-major, on addresses (cuBLAS's ``gemm``)."""

    def __init__(self, dtype, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
        self.alpha, self.beta = dtype(alpha), dtype(beta)
        # The stored matrices: op(A) is m x k, stored k x m when transposed; likewise B.
        a_shape = (k, m) if transa else (m, k)
        b_shape = (n, k) if transb else (k, n)
        self.a = _column_major(a, a_shape, lda, dtype)
        self.b = _column_major(b, b_shape, ldb, dtype)
        self.c = _column_major(c, (m, n), ldc, dtype)
        self.transa, self.transb = transa, transb

    def replay(self):
        a, b, c = (view.resolve("a cuBLAS product") for view in (self.a, self.b, self.c))
        op_a = a.T if self.transa else a
        op_b = b.T if self.transb else b
        # C^T = op(B)^T op(A)^T: for the row-major operands the project passes, these are
        # the very arrays cupy.matmul multiplies, so the stand-in's product is the same.
        product = np.matmul(op_b.T, op_a.T).T
        if self.alpha != 1:
            product = self.alpha * product
        if self.beta != 0:  # beta = 0: C is not read (it may hold anything)
            product = product + self.beta * c
        c[...] = product


def _column_major(address: int, shape: tuple[int, int], leading: int, dtype) -> DeviceView:
    rows, columns = shape
    if leading < max(rows, 1):
        raise ValueError(f"cuBLAS: leading dimension {leading} < {rows} rows")
    itemsize = np.dtype(dtype).itemsize
    nbytes = ((columns - 1) * leading + rows) * itemsize
    root = owner_of(address, nbytes)
    if root is None:
        raise CaptureViolation(f"cuBLAS reads {nbytes} bytes at {address:#x}: not device memory")
    view = np.ndarray(
        shape,
        dtype,
        buffer=root,
        offset=address - root.__array_interface__["data"][0],
        strides=(itemsize, leading * itemsize),
    )
    return DeviceView(view)
