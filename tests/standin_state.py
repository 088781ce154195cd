"""What the CuPy stand-in (:mod:`cupy_standin`) knows of CUDA stream capture and device memory.

The capture state (which stream captures, CuPy's stack of current streams) and the
refusal every stand-in operation makes while a capture runs; and the registry of live
device buffers, by which a graph or the stand-in cuBLAS, which hold addresses as the
real ones do, find the memory they point into (and notice when it was freed).
"""

from __future__ import annotations

import weakref

import numpy as np


class CaptureViolation(RuntimeError):
    """What a CUDA stream capture forbids (or would leave out of the graph) happened during one."""


class _CaptureState:
    """The stream that captures (at most one), and CuPy's stack of current streams."""

    def __init__(self):
        self.stream = None
        self.current: list = []


#: Capture state of this process (see :mod:`standin_capture`).
CAPTURE = _CaptureState()


def refuse_while_capturing(what: str) -> None:
    """Raise :class:`CaptureViolation` (and invalidate the capture) if a stream captures."""
    stream = CAPTURE.stream
    if stream is not None:
        message = (
            f"{what} while stream {stream.ptr:#x} captures a CUDA graph: a capture allows no "
            "allocation, transfer or synchronisation, and work outside the graph would run now"
        )
        stream.invalidate(message)
        raise CaptureViolation(message)


#: Live device buffers (the NumPy arrays that own stand-in memory), by id: a graph or
#: cuBLAS holds addresses, and :func:`owner_of` finds what they point into.
_BUFFERS: dict[int, weakref.ref] = {}


def root_buffer(array: np.ndarray) -> np.ndarray:
    """The NumPy array that owns ``array``'s memory."""
    while isinstance(array.base, np.ndarray):
        array = array.base
    return array


def register_buffer(array: np.ndarray) -> None:
    """Remember the buffer behind a new stand-in array (see :func:`owner_of`)."""
    root = root_buffer(array)
    key = id(root)
    if key not in _BUFFERS:
        _BUFFERS[key] = weakref.ref(root, lambda _, key=key: _BUFFERS.pop(key, None))


def owner_of(address: int, nbytes: int) -> np.ndarray | None:
    """The live device buffer holding ``[address, address + nbytes)``, if any."""
    for reference in list(_BUFFERS.values()):
        root = reference()
        if root is None:
            continue
        start = root.__array_interface__["data"][0]
        if start <= address and address + nbytes <= start + root.nbytes:
            return root
    return None
