"""cuBLAS GEMMs that a CUDA stream capture can record, called without CuPy.

See docs/DESIGN.md section 2 ("Launches and the CUDA graph").

The deconvolution's convolutions are GEMMs, and a CUDA graph of its loss-and-gradient
evaluation must hold them. cuBLAS supports stream capture: with the host pointer mode
the coefficients ``alpha`` and ``beta`` are recorded by value, and with a workspace of
the caller's (``cublasSetWorkspace``) nothing is allocated while capturing (cuBLAS
documentation, "CUDA Graphs Support"). CuPy, however, refuses every cuBLAS call on a
capturing stream: its ``cublas.setStream``, which each of its cuBLAS wrappers calls
first, raises ``NotImplementedError`` when the stream captures (CuPy 11 and later;
CuPy issue 6290). :class:`StreamGemm` therefore calls the libcublas that CuPy loaded,
through ``ctypes``: a handle of its own, bound to one stream and one workspace, and
row-major products of C-contiguous arrays, as ``cupy.matmul`` computes them (float32
without TF32, the default math mode).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import re

import numpy as np

from diva_numba.kernels.targets import device_empty

#: ``cublasOperation_t``.
_OP_N, _OP_T = 0, 1
#: Workspace handed to cuBLAS: NVIDIA's recommendation for Hopper and Blackwell, and
#: more than the 4 MiB it recommends for earlier GPUs.
WORKSPACE_BYTES = 32 << 20
#: Names tried when no libcublas is loaded yet (CuPy's cuBLAS module loads one).
_LIBRARY_NAMES = ("libcublas.so.13", "libcublas.so.12", "libcublas.so.11", "cublas64_12.dll")


class CublasError(RuntimeError):
    """libcublas is missing, or one of its calls returned an error status."""


def load_cublas():
    """The libcublas of this process, as a ``ctypes`` library with its signatures declared.

    CuPy's cuBLAS module is imported first, so that the library found is the one CuPy
    runs (the same build, already initialised); then the process's own map of loaded
    libraries is read, and the usual names are tried last.

    Raises
    ------
    CublasError
        If no libcublas can be loaded.
    """
    try:
        import cupy_backends.cuda.libs.cublas  # noqa: F401 (loads libcublas as CuPy does)
    except Exception:  # an older or newer layout: the names below still find it
        pass
    for name in _candidates():
        try:
            library = ctypes.CDLL(name)
        except OSError:
            continue
        _declare(library)
        return library
    raise CublasError("libcublas cannot be loaded (not found next to CuPy or on the path)")


def _candidates():
    """Library names to try, best first (``find_library`` only when the others fail: it is slow)."""
    yield from _loaded_libraries()
    yield from _LIBRARY_NAMES
    found = ctypes.util.find_library("cublas")
    if found:
        yield found


def _loaded_libraries() -> list[str]:
    """Paths of the libcublas already mapped into this process (Linux), if any."""
    try:
        with open("/proc/self/maps") as maps:
            lines = maps.read().splitlines()
    except OSError:
        return []
    # libcublas.so.12, not libcublasLt.so.12.
    return sorted({line.split()[-1] for line in lines if re.search(r"/libcublas\.so[.\d]*$", line)})


def _declare(library) -> None:
    """Argument and result types of the calls :class:`StreamGemm` makes."""
    handle, pointer, status = ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int
    signatures = {
        "cublasCreate_v2": [ctypes.POINTER(handle)],
        "cublasSetStream_v2": [handle, pointer],
        "cublasSetWorkspace_v2": [handle, pointer, ctypes.c_size_t],
    }
    for name, scalar in (("cublasSgemm_v2", ctypes.c_float), ("cublasDgemm_v2", ctypes.c_double)):
        shape = [ctypes.c_int] * 5  # transa, transb, m, n, k
        signatures[name] = [
            handle, *shape, ctypes.POINTER(scalar), pointer, ctypes.c_int, pointer, ctypes.c_int,
            ctypes.POINTER(scalar), pointer, ctypes.c_int,
        ]  # fmt: skip
    for name, argtypes in signatures.items():
        function = getattr(library, name, None)
        if function is not None:  # cublasSetWorkspace_v2 is missing before CUDA 11
            function.argtypes = argtypes
            function.restype = status


def _check(status: int, call: str) -> None:
    if status != 0:
        raise CublasError(f"{call} returned cuBLAS status {status}")


def _pointer(array) -> int:
    """Device address of a C-contiguous GPU array (refused otherwise: cuBLAS reads it flat)."""
    interface = array.__cuda_array_interface__
    strides = interface.get("strides")
    if strides is not None:
        expected, step = [], np.dtype(interface["typestr"]).itemsize
        for extent in reversed(interface["shape"]):
            expected.insert(0, step)
            step *= extent
        if tuple(strides) != tuple(expected):
            raise ValueError(f"GEMM operands must be C-contiguous, got strides {strides}")
    return int(interface["data"][0])


class StreamGemm:
    """A cuBLAS handle of this project's, bound to one stream and one workspace.

    Parameters
    ----------
    stream_pointer : int
        The CUDA stream (``cupy.cuda.Stream.ptr``) the products are queued on.
    like : GPU array
        Where the workspace is allocated (once, here: never during a capture).
    library : ctypes library, optional
        :func:`load_cublas` when omitted.

    Notes
    -----
    The handle lives as long as the process (destroying it at exit could outlive the
    CUDA context); one is made per device (``diva_numba.gpu.launch_graphs``). Products run
    in the default math mode: no TF32, as CuPy's ``matmul`` without ``CUPY_TF32``.
    """

    def __init__(self, stream_pointer: int, *, like, library=None):
        self._library = library if library is not None else load_cublas()
        handle = ctypes.c_void_p()
        _check(self._library.cublasCreate_v2(ctypes.byref(handle)), "cublasCreate")
        self._handle = handle
        self._workspace = device_empty((WORKSPACE_BYTES,), np.uint8, like=like)
        self.bind(stream_pointer)

    def bind(self, stream_pointer: int) -> None:
        """Queue the following products on ``stream_pointer`` (not while it captures)."""
        library = self._library
        _check(
            library.cublasSetStream_v2(self._handle, ctypes.c_void_p(stream_pointer)),
            "cublasSetStream",
        )
        # cublasSetStream hands the handle back to cuBLAS's own workspace pool, which
        # may allocate during a capture: the project's workspace is set after it.
        set_workspace = getattr(library, "cublasSetWorkspace_v2", None)
        if set_workspace is not None:
            _check(
                set_workspace(self._handle, _pointer(self._workspace), WORKSPACE_BYTES),
                "cublasSetWorkspace",
            )

    def matmul(self, a, b, out, *, transpose_a: bool = False) -> None:
        """``out = op(a) @ b``, ``op(a) = a.T`` if ``transpose_a``, all C-contiguous, row-major.

        cuBLAS is column-major: a row-major ``(M, N)`` array is its transpose there, so
        the product computed is ``out^T = b^T op(a)^T``. ``b`` is read as it lies
        (``b^T``, leading dimension ``N``); ``a`` lies as ``a^T``, taken as it is for
        ``op(a) = a`` and transposed back for ``op(a) = a.T``.

        Parameters
        ----------
        a : float32 or float64 GPU array, shape (M, K), or (K, M) with ``transpose_a``
        b : array, shape (K, N), same dtype
        out : array, shape (M, N), same dtype; does not overlap ``a`` or ``b``
        transpose_a : bool
        """
        rows_a, cols_a = a.shape
        m, k = (cols_a, rows_a) if transpose_a else (rows_a, cols_a)
        n = b.shape[1]
        if b.shape[0] != k or tuple(out.shape) != (m, n):
            raise ValueError(
                f"GEMM shapes do not chain: {a.shape}{'^T' if transpose_a else ''} @ "
                f"{b.shape} -> {out.shape}"
            )
        if not a.dtype == b.dtype == out.dtype:
            raise ValueError(f"GEMM dtypes differ: {a.dtype}, {b.dtype}, {out.dtype}")
        if a.dtype == np.float32:
            gemm, scalar = self._library.cublasSgemm_v2, ctypes.c_float
        elif a.dtype == np.float64:
            gemm, scalar = self._library.cublasDgemm_v2, ctypes.c_double
        else:
            raise ValueError(f"GEMMs take float32 or float64, got {a.dtype}")
        one, zero = scalar(1), scalar(0)
        status = gemm(
            self._handle, _OP_N, _OP_T if transpose_a else _OP_N, n, m, k,
            ctypes.byref(one), _pointer(b), n, _pointer(a), cols_a,
            ctypes.byref(zero), _pointer(out), n,
        )  # fmt: skip
        _check(status, "cublasSgemm" if a.dtype == np.float32 else "cublasDgemm")
