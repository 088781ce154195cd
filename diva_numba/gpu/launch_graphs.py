"""CUDA graphs of a fixed sequence of launches: captured once, replayed in one launch.

See docs/DESIGN.md section 2 ("Launches and the CUDA graph").

A pass that queues the same launches on the same buffers again and again (the
deconvolution's loss-and-gradient evaluation: ``2 n + p + 1`` Numba kernels and ``2 n``
GEMMs for ``n`` convs and ``p`` pools) pays the host's launch overhead for each of
them every time. Captured once as a CUDA graph, it costs one launch. What a capture
needs, and how this module meets it:

* *a stream that is not the legacy default stream* (CUDA cannot capture that one):
  one non-blocking CuPy stream per device, :class:`GraphCapture`. The graphs are
  launched on CuPy's current stream, the default stream everything else of this
  project is queued on, so a replay is ordered after the copies that load its inputs
  and before the kernels that read its outputs;
* *every launch of the pass on that stream*: a pass takes a :class:`LaunchQueue`, the
  stream its Numba kernels are launched on (``numba.cuda.external_stream`` of the CuPy
  stream) and the GEMM it calls; :func:`array_queue` is the eager one (the default
  stream, the array module's ``matmul``);
* *GEMMs that can be captured*: CuPy refuses cuBLAS calls on a capturing stream, so the
  captured GEMMs go to libcublas directly (:mod:`diva_numba.gpu.cublas_capture`), with a
  workspace of their own;
* *no allocation, transfer or synchronisation while capturing*: the pass writes only
  buffers made before (its workspace), its kernels take arrays wrapped once for Numba
  without the CUDA Array Interface's stream synchronisation
  (``targets.kernel_array``), and its kernels and cuBLAS's are loaded by an eager run
  before the capture (:meth:`GraphCapture.warm_up`);
* *inputs at fixed addresses*: a graph replays the pointers it captured, so the inputs
  that change between replays are copied into the pass's own buffers first.

A capture that fails (a driver or library that refuses it) raises here; the caller
falls back to eager launches. :func:`compare_replay` checks a first replay against an
eager evaluation, on the device, with one transfer.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from diva_numba.gpu.cublas_capture import StreamGemm
from diva_numba.gpu.device import array_module, to_host

#: A replay and the eager pass agree when the largest difference of each output is at
#: most this share of the eager output's largest magnitude (a GEMM of cuBLAS's own may
#: pick another algorithm than CuPy's, a few float32 roundings apart).
REPLAY_TOLERANCE = 1e-4


@dataclass(frozen=True)
class LaunchQueue:
    """Where a pass queues its work.

    Attributes
    ----------
    stream : Numba stream or 0
        The stream its Numba kernels are launched on (0: the default stream).
    matmul : callable ``(a, b, out, *, transpose_a=False) -> None``
        ``out = op(a) @ b`` (``op(a) = a.T`` if ``transpose_a``), queued on the same stream.
    """

    stream: object
    matmul: Callable


def array_queue(xp) -> LaunchQueue:
    """The eager queue of an array module: the default stream and its own ``matmul``."""

    def matmul(a, b, out, *, transpose_a: bool = False) -> None:
        xp.matmul(a.T if transpose_a else a, b, out=out)

    return LaunchQueue(0, matmul)


class GraphCapture:
    """A device's capture stream, the Numba view of it and a cuBLAS handle bound to it.

    Parameters
    ----------
    like : CuPy array
        On the device (where the cuBLAS workspace is allocated).
    """

    def __init__(self, like):
        import cupy
        from numba import cuda

        # Non-blocking: work on the legacy default stream neither waits for the capture
        # stream nor makes it wait, which a capture would refuse.
        self.stream = cupy.cuda.Stream(non_blocking=True)
        self.gemm = StreamGemm(self.stream.ptr, like=like)
        self.queue = LaunchQueue(cuda.external_stream(self.stream.ptr), self.gemm.matmul)

    def warm_up(self, enqueue: Callable[[LaunchQueue], None]) -> None:
        """Run ``enqueue`` eagerly on the default stream, with this capture's GEMMs.

        Every Numba kernel and every cuBLAS kernel that the capture will record is then
        loaded (a lazily loaded kernel would be loaded during the capture, which older
        drivers refuse), and the cuBLAS handle has run once outside any capture.
        """
        self.gemm.bind(0)
        try:
            enqueue(LaunchQueue(0, self.gemm.matmul))
        finally:
            self.gemm.bind(self.stream.ptr)

    def capture(self, enqueue: Callable[[LaunchQueue], None]):
        """The CUDA graph of ``enqueue(queue)``: recorded, not run; launch it to run it.

        Returns
        -------
        cupy.cuda.graph.Graph
            Instantiated; ``graph.launch()`` queues it on CuPy's current stream.

        Raises
        ------
        Exception
            Whatever the capture, the pass or the instantiation raised; the stream is out
            of capture mode again.
        """
        stream = self.stream
        with stream:
            stream.begin_capture()
            try:
                enqueue(self.queue)
            except BaseException:
                _end_abandoned(stream)
                raise
            return stream.end_capture()


def _end_abandoned(stream) -> None:
    """End a capture whose pass failed, dropping what it recorded."""
    try:
        stream.end_capture()
    except Exception:  # an invalidated capture ends with an error, out of capture mode
        pass


#: One capture per device, made on first use (a stream, a cuBLAS handle, its workspace).
_captures: dict[int, GraphCapture] = {}


def graph_capture(like) -> GraphCapture:
    """The :class:`GraphCapture` of ``like``'s device (CuPy's current device)."""
    import cupy

    device = cupy.cuda.Device().id
    if device not in _captures:
        _captures[device] = GraphCapture(like)
    return _captures[device]


@dataclass(frozen=True)
class ReplayCheck:
    """How a graph's replay compares with an eager run of the same pass.

    Attributes
    ----------
    loss_error, gradient_error : float
        Largest absolute difference of each output over the eager output's largest
        magnitude (NaN where either holds a NaN or an infinity).
    """

    loss_error: float
    gradient_error: float

    @property
    def passed(self) -> bool:
        return all(
            math.isfinite(error) and error <= REPLAY_TOLERANCE
            for error in (self.loss_error, self.gradient_error)
        )

    def __str__(self) -> str:
        return (
            f"loss {self.loss_error:.1e}, gradient {self.gradient_error:.1e} relative "
            f"(tolerance {REPLAY_TOLERANCE:.0e})"
        )


def compare_replay(reference_loss, reference_gradient, loss, gradient) -> ReplayCheck:
    """:class:`ReplayCheck` of a replay's outputs against the eager ones, on the device.

    Parameters
    ----------
    reference_loss, loss : one-element float64 GPU arrays
    reference_gradient, gradient : GPU arrays of one shape and dtype

    The four magnitudes are reduced on the device and read back in one transfer.
    """
    xp = array_module(gradient)
    magnitudes = to_host(
        xp.stack(
            [
                xp.abs(loss - reference_loss).max(),
                xp.abs(reference_loss).max(),
                xp.abs(gradient - reference_gradient).max().astype(xp.float64),
                xp.abs(reference_gradient).max().astype(xp.float64),
            ]
        )
    )
    loss_difference, loss_scale, gradient_difference, gradient_scale = (
        float(value) for value in magnitudes
    )
    return ReplayCheck(
        _relative(loss_difference, loss_scale), _relative(gradient_difference, gradient_scale)
    )


def _relative(difference: float, scale: float) -> float:
    if not (math.isfinite(difference) and math.isfinite(scale)):
        return math.nan
    return difference / scale if scale > 0 else difference
