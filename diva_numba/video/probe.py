"""Reading videos with PyAV (FFmpeg bundled in its wheels).

Frames leave this module as RGB ``uint8`` arrays shaped ``(H, W, 3)``, one at a
time, so memory stays constant whatever the length of the video.

* :func:`probe_video` describes a file (:class:`VideoInfo`) and turns every way
  a file can be unusable into one :class:`~diva_numba.errors.InputError` line.
* :func:`read_frames` decodes frames in display orientation (the stream's
  rotation applied).
* :func:`frame_times` gives every frame's presentation time, for clips whose
  frame rate varies (phone cameras).
* :func:`even_size` picks the even output size that ``yuv420p`` needs.

The private helpers at the end (opening an input, finding its video stream and
frame rate, wording FFmpeg errors) are shared with :mod:`diva_numba.video.write`.
"""

from __future__ import annotations

import itertools
import os
import statistics
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from diva_numba.errors import InputError

#: Tolerance of the variable-frame-rate test, as a fraction of the median frame interval.
VFR_RELATIVE_TOLERANCE = 0.01


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe_video` found out about a video file.

    Attributes
    ----------
    path : str
    width, height : int
        Size of the frames :func:`read_frames` yields, i.e. after the rotation
        (a portrait phone clip stored as 1920x1080 with a 90 degree rotation
        reports 1080x1920).
    frame_count : int
        Number of video frames.
    frame_count_source : {"header", "decoded"}
        ``"header"``: the container records the count (MP4/MOV sample tables)
        and it was checked against the packets actually present;
        ``"decoded"``: the container does not record it (Matroska, WebM, ...)
        or an exact count was asked for, and every frame was decoded to count.
    fps : fractions.Fraction
        Average frame rate, exact (``30000/1001`` for NTSC rates).
    duration : float
        Seconds of video: ``frame_count / fps`` (exact, and what a copy at the
        same rate lasts); for a variable frame rate, the span of the
        timestamps plus the median frame interval, the end that
        :func:`frame_times` gives. (Recorded durations are not used: muxers
        guess the last frame's length, and some derive the whole duration
        from decoding timestamps.)
    codec : str
        FFmpeg name of the video codec (``"h264"``, ``"hevc"``, ...).
    has_audio : bool
    audio_codec : str or None
        FFmpeg name of the first audio stream's codec.
    rotation : int
        Counter-clockwise degrees the display matrix rotates the coded picture
        (0, 90, 180 or -90 in practice); :func:`read_frames` applies it. Flips
        in the display matrix are not applied.
    variable_frame_rate : bool
        True when presentation timestamps are not evenly spaced: some interval
        between consecutive timestamps (in presentation order) differs from
        the median interval by more than both 2 ticks of the stream's time
        base (timestamp rounding moves an interval by at most 2 ticks) and
        1% of the median. :func:`frame_times` gives the times of such a clip.
    """

    path: str
    width: int
    height: int
    frame_count: int
    frame_count_source: Literal["header", "decoded"]
    fps: Fraction
    duration: float
    codec: str
    has_audio: bool
    audio_codec: str | None
    rotation: int
    variable_frame_rate: bool


def probe_video(path: str | os.PathLike, *, exact_count: bool = False) -> VideoInfo:
    """Describe a video file, refusing anything the pipeline cannot read.

    Reads every video packet (cheap: no decoding) to check the frame count and
    timestamps, and decodes the first frame to check that it can be decoded.

    Parameters
    ----------
    path : str or os.PathLike
    exact_count : bool, optional
        Decode every frame to count them even when the container records the
        count; this also catches corrupt data anywhere in the stream, at the
        price of a full decode.

    Returns
    -------
    VideoInfo

    Raises
    ------
    InputError
        Missing file, directory, empty file, not a video, no video stream,
        no frames, unsupported codec, truncated or corrupt data.
    """
    path = str(path)
    with _open_input(path) as container:
        stream = _video_stream(container, path)
        header_count = stream.frames
        decode_all = exact_count or header_count <= 0
        timestamps: list[int] = []
        packet_count = decoded_count = 0
        rotation = None
        try:
            for packet in container.demux(stream):
                # The demuxer ends with an empty packet, which flushes the decoder.
                if packet.size:
                    packet_count += 1
                    if not decode_all:
                        timestamps.append(packet.pts)
                if decode_all or rotation is None:
                    for frame in stream.decode(packet):
                        decoded_count += 1
                        if rotation is None:
                            rotation = frame.rotation
                        if decode_all:
                            timestamps.append(frame.pts)
        except av.FFmpegError as exc:
            raise InputError(f"{path}: corrupt or truncated video data ({_reason(exc)})") from None
        if packet_count == 0:
            raise InputError(f"{path}: the video stream has no frames")
        if decoded_count == 0 or rotation is None:
            raise InputError(f"{path}: no frame of the video stream can be decoded")
        if not decode_all and packet_count < header_count:
            raise InputError(
                f"{path}: truncated: the header lists {header_count} frames "
                f"but only {packet_count} are present"
            )
        fps = _frame_rate(stream)
        frame_count = decoded_count if decode_all else header_count
        variable_rate = _is_variable_rate(timestamps)
        duration = float(frame_count / fps)
        if variable_rate:
            known = [t for t in timestamps if t is not None]
            duration = float(_bounds(known, Fraction(stream.time_base), fps)[-1])
        rotation = _right_angle(rotation)
        width, height = stream.codec_context.width, stream.codec_context.height
        if rotation in (90, -90):
            width, height = height, width
        audio_context = (
            container.streams.audio[0].codec_context if container.streams.audio else None
        )
        return VideoInfo(
            path=path,
            width=width,
            height=height,
            frame_count=frame_count,
            frame_count_source="decoded" if decode_all else "header",
            fps=fps,
            duration=duration,
            codec=stream.codec_context.name,
            has_audio=bool(container.streams.audio),
            audio_codec=audio_context.name if audio_context is not None else None,
            rotation=rotation,
            variable_frame_rate=variable_rate,
        )


def read_frames(
    path: str | os.PathLike, *, start: int = 0, end: int | None = None
) -> Iterator[tuple[int, np.ndarray]]:
    """Decode frames ``start <= index < end`` one at a time, in display orientation.

    Frames before ``start`` are decoded and dropped (exact for any stream,
    unlike seeking, which lands on key frames). An ``end`` past the last frame
    simply stops at the last frame.

    Parameters
    ----------
    path : str or os.PathLike
    start : int, optional
        Index of the first frame to yield.
    end : int or None, optional
        Index one past the last frame to yield; ``None`` reads to the end.

    Yields
    ------
    index : int
        Frame index in the file (0 for the first frame).
    frame : numpy.ndarray
        uint8 ``(H, W, 3)`` RGB, C-contiguous, rotation applied; colours
        converted with the matrix and range the stream is tagged with.

    Raises
    ------
    InputError
        The file is not a readable video, or its data is corrupt.
    """
    if start < 0 or (end is not None and end < start):
        raise ValueError(f"need 0 <= start <= end, got start={start}, end={end}")
    path = str(path)
    with _open_input(path) as container:
        stream = _video_stream(container, path)
        stream.thread_type = "AUTO"
        to_rgb = VideoReformatter()  # one conversion context for the whole stream
        index = 0
        frames = container.decode(stream)
        while end is None or index < end:
            try:
                frame = next(frames, None)
            except av.FFmpegError as exc:
                raise InputError(
                    f"{path}: corrupt video data after frame {index} ({_reason(exc)})"
                ) from None
            if frame is None:
                break
            if index >= start:
                rgb = to_rgb.reformat(frame, format="rgb24").to_ndarray()
                # Rows are padded for alignment, so even unrotated frames need a copy.
                yield index, np.ascontiguousarray(np.rot90(rgb, _right_angle(frame.rotation) // 90))
            index += 1
        promised = stream.frames  # 0 where the container does not record a count
        if index < promised and (end is None or index < end):
            raise InputError(
                f"{path}: truncated: the header lists {promised} frames "
                f"but the data ends after {index}"
            )


def frame_times(path: str | os.PathLike) -> list[Fraction]:
    """Presentation time of every frame, then the end of the last, in seconds from the first.

    Read from the packets' timestamps (cheap: no decoding), exact in the
    stream's time base. Frame ``i`` (as :func:`read_frames` counts) shows from
    ``times[i]`` to ``times[i + 1]``; the last frame lasts the median interval,
    since the length a container records for it is a muxer's guess. For a
    constant rate the times are ``i / fps`` up to the time base's rounding.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    list of fractions.Fraction
        ``frame_count + 1`` increasing times; the first is 0.

    Raises
    ------
    InputError
        The file is not a readable video, some frames have a timestamp and
        others none, or two frames share one. A stream without any
        timestamps (raw H.264) is taken to run at its average rate.
    """
    path = str(path)
    with _open_input(path) as container:
        stream = _video_stream(container, path)
        try:
            ticks = [packet.pts for packet in container.demux(stream) if packet.size]
        except av.FFmpegError as exc:
            raise InputError(f"{path}: corrupt or truncated video data ({_reason(exc)})") from None
        fps = _frame_rate(stream)
        time_base = Fraction(stream.time_base) if stream.time_base else None
    if not ticks:
        raise InputError(f"{path}: the video stream has no frames")
    known = [t for t in ticks if t is not None]
    if not known or time_base is None:
        return [i / fps for i in range(len(ticks) + 1)]
    if len(known) < len(ticks):
        raise InputError(
            f"{path}: {len(ticks) - len(known)} of {len(ticks)} frames have no timestamp"
        )
    times = _bounds(known, time_base, fps)
    for earlier, later in itertools.pairwise(times):
        if later <= earlier:
            raise InputError(f"{path}: two frames share the timestamp {float(later):.6f} s")
    return times


def even_size(width: int, height: int, long_side: int | None = None) -> tuple[int, int]:
    """Output size with both sides even, the long side as asked, the aspect kept.

    ``yuv420p`` stores colour at half resolution, so H.264 needs even sizes;
    the pipeline picks its output size with this function and the writer
    refuses odd sizes instead of cropping behind the caller's back.

    The long side becomes ``long_side`` (rounded down to even); the short side
    is the exact scaled value rounded to the nearest even number (at least 2).
    The short side is thus at most 1 pixel from exact, so the aspect ratio is
    off by at most ``1 / short_side`` relative (0.28% for a 360-pixel side).

    Parameters
    ----------
    width, height : int
        Size of the source, in pixels.
    long_side : int or None, optional
        Requested length of the longer side; ``None`` keeps the source's.

    Returns
    -------
    (width, height) : tuple of int
    """
    if width < 1 or height < 1:
        raise ValueError(f"size must be positive, got {width}x{height}")
    long_source = max(width, height)
    target = long_source if long_side is None else long_side
    target -= target % 2
    if target < 2:
        raise ValueError(f"long side must be at least 2, got {long_side}")
    short = min(width, height) * target / long_source
    short_even = max(2, 2 * round(short / 2))
    return (target, short_even) if width >= height else (short_even, target)


def clip_long_side(path: str | os.PathLike) -> int:
    """The long side of a video's frames in pixels, from its header alone.

    A rotation does not change it, and no packet is read: what a caller needs
    before :func:`probe_video`'s full check (which may decode every frame).

    Raises
    ------
    InputError
        The file cannot be opened as a video (as :func:`probe_video` says).
    """
    path = str(path)
    with _open_input(path) as container:
        context = _video_stream(container, path).codec_context
        return max(context.width, context.height)


def local_url(path: str | os.PathLike) -> str:
    """``path`` as FFmpeg should open it: always a local file.

    FFmpeg reads a name like ``take:1.mp4`` or ``http:x.mp4`` as a protocol and
    an address (failing, or going to the network); the ``file:`` protocol takes
    the rest as a file name, whatever it holds, and keeps its extension for the
    container's guess.
    """
    return f"file:{os.fspath(path)}"


def _open_input(path: str):
    """``av.open`` with every failure turned into an InputError."""
    if not os.path.exists(path):
        raise InputError(f"{path}: no such file")
    if os.path.isdir(path):
        raise InputError(f"{path} is a directory, not a video file")
    if os.path.getsize(path) == 0:
        raise InputError(f"{path} is empty")
    try:
        return av.open(local_url(path), mode="r")
    except (av.error.InvalidDataError, av.error.EOFError):
        raise InputError(f"{path}: not a video file, or truncated") from None
    except (OSError, av.FFmpegError) as exc:
        raise InputError(f"{path}: cannot open ({_reason(exc)})") from None


def _video_stream(container, path: str):
    """The first video stream, checked to be decodable."""
    if not container.streams.video:
        raise InputError(f"{path} has no video stream")
    stream = container.streams.video[0]
    if stream.codec_context is None:
        raise InputError(f"{path}: unsupported video codec (no decoder for it in this FFmpeg)")
    return stream


def _frame_rate(stream) -> Fraction:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate:
        raise InputError("the video stream has no frame rate")
    return Fraction(rate)


def _is_variable_rate(timestamps: list[int | None]) -> bool:
    """The rule of :attr:`VideoInfo.variable_frame_rate`, on timestamps in time-base ticks."""
    known = [t for t in timestamps if t is not None]
    if len(known) < 3:
        return False
    intervals = np.diff(np.sort(np.asarray(known, dtype=np.int64)))
    median = float(np.median(intervals))
    tolerance = max(2.0, VFR_RELATIVE_TOLERANCE * median)
    return bool(np.any(np.abs(intervals - median) > tolerance))


def _bounds(ticks: list[int], time_base: Fraction, fps: Fraction) -> list[Fraction]:
    """Start of every frame and the end of the last, seconds from the first start.

    ``ticks`` are timestamps in ``time_base`` units, in any order; the last
    frame lasts the (lower) median interval, which stays on the time base, or
    ``1 / fps`` for a single frame.
    """
    ordered = sorted(ticks)
    times = [(tick - ordered[0]) * time_base for tick in ordered]
    intervals = [later - earlier for earlier, later in itertools.pairwise(times)]
    last = statistics.median_low(intervals) if intervals else 1 / fps
    return [*times, times[-1] + last]


def _right_angle(degrees: float) -> int:
    """Rotation rounded to a multiple of 90 degrees, in (-180, 180]."""
    turns = round(degrees / 90) % 4
    return {0: 0, 1: 90, 2: 180, 3: -90}[turns]


def _reason(exc: BaseException) -> str:
    """The readable part of an FFmpeg or OS error, without file names or codes."""
    reason = getattr(exc, "strerror", None) or str(exc)
    return str(reason).strip() or exc.__class__.__name__


__all__ = [
    "VFR_RELATIVE_TOLERANCE",
    "VideoInfo",
    "even_size",
    "frame_times",
    "clip_long_side",
    "probe_video",
    "read_frames",
]
