"""Reading and writing videos with PyAV (FFmpeg bundled in its wheels).

Frames cross this package as RGB ``uint8`` arrays shaped ``(H, W, 3)``, one at a
time, so memory stays constant whatever the length of the video. It has two
halves:

* :mod:`diva_numba.video.probe` reads: :func:`probe_video` describes a file
  (:class:`VideoInfo`) and refuses anything unusable with one
  :class:`~diva_numba.errors.InputError` line; :func:`read_frames` decodes
  frames in display orientation; :func:`frame_times` gives every frame's
  presentation time, for clips whose frame rate varies; :func:`even_size`
  picks the even output size that ``yuv420p`` needs.
* :mod:`diva_numba.video.write` writes: :class:`VideoWriter` encodes H.264
  (libx264, ``yuv420p``, BT.709 tagged) at an exact frame rate or at given
  frame times, optionally copies a source file's audio, and only ever leaves a
  complete file under the final name.

The public names of both are re-exported here: import them from
``diva_numba.video``.
"""

from diva_numba.video.probe import (
    VFR_RELATIVE_TOLERANCE,
    VideoInfo,
    even_size,
    frame_times,
    probe_video,
    read_frames,
)
from diva_numba.video.write import (
    EDIT_LIST_FORMATS,
    FINEST_TIME_BASE,
    OUTPUT_FORMATS,
    VideoWriter,
)

__all__ = [
    "EDIT_LIST_FORMATS",
    "FINEST_TIME_BASE",
    "OUTPUT_FORMATS",
    "VFR_RELATIVE_TOLERANCE",
    "VideoInfo",
    "VideoWriter",
    "even_size",
    "frame_times",
    "probe_video",
    "read_frames",
]
