"""libx264 settings that make the same frames give the same file, run after run.

x264 picks its assembly routines from the CPU it runs on. Its AVX-512 routines
make the bitstream depend on what the process did before the encode: with them,
the same frames fed to a fresh encoder in one process came out differently on
some encodes (after unrelated allocations, or on the n-th encode of a process),
in decoded frames that differed by up to 30 grey levels from the frame where it
first happened onwards, single-threaded or not. With AVX-512 left out (or no
assembly at all) every encode of those frames was identical. The output of a
run is therefore encoded with the routines x264 detects on this CPU, less
AVX-512: the AVX2 ones, on the machines that have AVX-512, cost a few per cent
of encoding speed, which is a small part of a stylised frame's time.

:func:`x264_options` gives the options to add to the encoder's; the CPU's
routines are read from x264's own report when it opens, once per process.
"""

from __future__ import annotations

import functools

import av
import av.logging

#: x264 routine sets never used: their output depends on memory the encoder did not
#: write (see the module docstring).
EXCLUDED_ROUTINES = frozenset({"AVX512"})

_CAPABILITIES_PREFIX = "using cpu capabilities:"


@functools.cache
def x264_options() -> dict[str, str]:
    """Encoder options that keep libx264 off :data:`EXCLUDED_ROUTINES`.

    Returns
    -------
    dict of str to str
        ``{"x264-params": "asm=..."}`` naming the routine sets x264 detects on
        this CPU less the excluded ones; empty when it detects none of those (or
        does not say which it uses), so that x264 chooses as usual.
    """
    detected = detected_routines()
    if not EXCLUDED_ROUTINES & set(detected):
        return {}
    kept = [name for name in detected if name not in EXCLUDED_ROUTINES]
    return {"x264-params": "asm=" + ",".join(kept) if kept else "asm=0"}


def detected_routines() -> list[str]:
    """The routine sets libx264 chooses on this CPU, as it reports them when opened.

    Returns
    -------
    list of str
        x264's names (``"SSE4.2"``, ``"AVX2"``, ``"AVX512"``, ...); empty when
        it reports none.
    """
    context = av.CodecContext.create("libx264", "w")
    context.width = context.height = 16
    context.pix_fmt = "yuv420p"
    context.time_base = 1
    previous = av.logging.get_level()
    av.logging.set_level(av.logging.INFO)
    try:
        with av.logging.Capture() as messages:
            context.open()
    finally:
        av.logging.set_level(previous)
    for _level, _name, message in messages:
        if message.startswith(_CAPABILITIES_PREFIX):
            return message[len(_CAPABILITIES_PREFIX) :].split()
    return []


__all__ = ["EXCLUDED_ROUTINES", "detected_routines", "x264_options"]
