"""Writing videos with PyAV: H.264 encoding and the audio copy.

* :class:`VideoWriter` encodes RGB ``uint8`` frames shaped ``(H, W, 3)``, one at
  a time, to H.264 (libx264, ``yuv420p``, BT.709 tagged) at an exact frame rate
  or at given frame times, optionally copies a source file's audio, and only
  ever leaves a complete file under the final name.
  The same frames always give the same file (:mod:`diva_numba.video.x264`).
* ``_AudioCopy`` streams the audio packets of a source file, cut to the frames
  the output shows, into the output container without re-encoding them.

Reading the source file (its frame rate, frame times and streams) goes through
:mod:`diva_numba.video.probe`.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Literal

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from diva_numba.errors import OutputError
from diva_numba.outputs import AtomicFile, check_target
from diva_numba.video.probe import (
    _frame_rate,
    _open_input,
    _reason,
    _video_stream,
    frame_times,
    local_url,
    probe_video,
)
from diva_numba.video.x264 import x264_options

#: Containers the writer produces, by file suffix.
OUTPUT_FORMATS: dict[str, str] = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}

#: Containers that can mark leading audio as not to be played (an edit list), which
#: lets the audio copy start exactly on the first frame.
EDIT_LIST_FORMATS = frozenset({"mp4", "mov"})

#: Finest time base the writer uses for frame times (MPEG's 90 kHz clock); times that
#: need a finer one are rounded to it.
FINEST_TIME_BASE = Fraction(1, 90000)


class VideoWriter:
    """Encode RGB frames to H.264, leaving either a complete file or nothing.

    Use as a context manager::

        with VideoWriter("out.mp4", width=640, height=360, fps=info.fps,
                         audio_source="clip.mp4") as writer:
            for frame in frames:
                writer.write(frame)

    Frames go to a hidden temporary file beside ``path``; it is renamed to
    ``path`` only when the block ends normally with at least one frame
    written. Any exception (Ctrl-C too) deletes the temporary file and leaves
    ``path`` untouched.

    Parameters
    ----------
    path : str or os.PathLike
        Output file; the suffix picks the container (.mp4, .m4v, .mov, .mkv).
    width, height : int
        Frame size; both must be even (see :func:`even_size`).
    fps : fractions.Fraction or int
        Exact frame rate; frame ``i`` is stamped ``i / fps``. With
        ``frame_times``, the average rate (recorded in the stream, and x264's
        rate control uses it).
    crf : float, optional
        x264 constant rate factor: 0 lossless, 18 visually lossless, 23 x264's
        default, 51 worst.
    preset : str, optional
        x264 speed preset (``ultrafast`` .. ``veryslow``).
    audio_source : str or os.PathLike or None, optional
        Copy the first audio stream of this file, packets unchanged (no
        re-encode). Nothing happens when it has no audio.
    audio_frames : (int, int or None), optional
        The frame range ``[start, end)`` of ``audio_source`` that the output
        shows; audio is cut to the same time span (``end`` None: to the last
        frame), measured at the source's frame rate, or with ``frame_times``
        on the source's own frame times (:func:`frame_times`). Audio packets
        are kept whole, so the cut falls on packet boundaries and the end can
        run up to one packet long (AAC: 1024 samples, 21 ms at 48 kHz). In MP4
        and MOV the start is exact: the packet straddling it and one before it
        (the decoder needs it to prime) get negative timestamps, which the
        muxer turns into an edit list that players skip. Matroska cannot skip, so there the audio
        starts at the first packet inside the range, in sync but up to one
        packet late, and the first packet decodes without its priming.
    overwrite : bool, optional
        Replace an existing ``path``; otherwise an existing file is an error.
    pixel_format : {"yuv420p", "yuv444p"}, optional
        ``yuv420p`` (the default) plays everywhere but stores colour at half
        resolution, which smears saturated colour edges; ``yuv444p`` keeps
        full-resolution colour (H.264 High 4:4:4, which fewer players decode).
    frame_times : sequence of fractions.Fraction or None, optional
        Variable frame rate: the start of every frame in seconds, from 0 on,
        increasing, then the end of the last frame (what :func:`frame_times`
        returns, or a slice of it shifted to start at 0): at least one entry
        more than the frames written. Frame ``i`` is stamped
        ``frame_times[i]`` and lasts until ``frame_times[i + 1]``, on the
        coarsest time base that holds every time exactly (times read from a
        container on a clock of up to 90 kHz do), else on a 90 kHz clock;
        Matroska stores milliseconds whatever the time base.

    Raises
    ------
    OutputError
        Unsupported suffix, odd size, missing or unwritable directory,
        existing file, disk full, or audio the container cannot hold.
    ValueError
        ``frame_times`` that do not start at 0 and increase, or a frame
        written beyond the last end they give.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        width: int,
        height: int,
        fps: Fraction | int,
        crf: float = 18,
        preset: str = "medium",
        audio_source: str | os.PathLike | None = None,
        audio_frames: tuple[int, int | None] = (0, None),
        overwrite: bool = False,
        pixel_format: Literal["yuv420p", "yuv444p"] = "yuv420p",
        frame_times: Sequence[Fraction] | None = None,
    ):
        self.path = Path(path)
        self.width, self.height = int(width), int(height)
        self.fps = Fraction(fps)
        self.crf, self.preset = crf, preset
        self.audio_source = None if audio_source is None else str(audio_source)
        self.audio_frames = audio_frames
        self.overwrite = overwrite
        self.pixel_format = pixel_format
        self.frame_times = None if frame_times is None else [Fraction(t) for t in frame_times]
        # Frame i is stamped at ticks[i] of the time base; a constant rate counts frames.
        self._time_base: Fraction | None = None
        self._ticks: list[int] | None = None
        self._tick_index: dict[int, int] = {}
        self.frames_written = 0
        self.has_audio = False
        self._temp_path: Path | None = None
        self._container = None
        self._stream = None
        self._audio: _AudioCopy | None = None
        self._to_yuv = VideoReformatter()
        self._check_arguments()

    def _check_arguments(self) -> None:
        suffix = self.path.suffix.lower()
        if suffix not in OUTPUT_FORMATS:
            raise OutputError(
                f"{self.path}: cannot write '{suffix or 'no suffix'}' videos; "
                f"use {', '.join(OUTPUT_FORMATS)}"
            )
        if self.pixel_format not in ("yuv420p", "yuv444p"):
            raise OutputError(f"{self.path}: unsupported pixel format {self.pixel_format!r}")
        if self.width < 2 or self.height < 2 or self.width % 2 or self.height % 2:
            raise OutputError(
                f"{self.path}: H.264 yuv420p needs an even width and height, "
                f"got {self.width}x{self.height}"
            )
        if self.fps <= 0:
            raise OutputError(f"{self.path}: frame rate must be positive, got {self.fps}")
        self._time_base = 1 / self.fps
        if self.frame_times is not None:
            self._time_base = _time_base(self.frame_times)
            self._ticks = [round(time / self._time_base) for time in self.frame_times]
            self._tick_index = {tick: index for index, tick in enumerate(self._ticks)}
            if len(self._ticks) < 2 or self._ticks[0] != 0:
                raise ValueError("frame_times must start at 0 and end after the first frame")
            if any(later <= earlier for earlier, later in itertools.pairwise(self._ticks)):
                raise ValueError(
                    f"frame_times must increase by at least {self._time_base} s per frame"
                )
        check_target(self.path, overwrite=self.overwrite)

    def __enter__(self) -> VideoWriter:
        # FFmpeg creates the file itself (honouring the umask); the random name
        # keeps concurrent writers to the same directory apart.
        self._file = AtomicFile(self.path)
        self._temp_path = self._file.temp
        try:
            self._container = av.open(
                local_url(self._temp_path),
                mode="w",
                format=OUTPUT_FORMATS[self.path.suffix.lower()],
            )
            self._add_video_stream()
            if self.audio_source is not None:
                self._audio = _AudioCopy.open(
                    self.audio_source,
                    self._container,
                    frames=self.audio_frames,
                    own_times=self.frame_times is not None,
                )
                self.has_audio = self._audio is not None
            # Creating the file now reports an unwritable directory before any work.
            self._container.start_encoding()
        except BaseException as exc:
            self._abort()
            if isinstance(exc, OSError | av.FFmpegError):
                raise OutputError(f"cannot write {self.path}: {_reason(exc)}") from None
            raise
        return self

    def _add_video_stream(self) -> None:
        stream = self._container.add_stream("libx264", rate=self.fps)
        stream.width, stream.height = self.width, self.height
        stream.pix_fmt = self.pixel_format
        stream.codec_context.time_base = self._time_base
        stream.time_base = self._time_base
        # Tag what write() converts to, so that players do not guess the matrix.
        stream.codec_context.colorspace = 1  # BT.709
        stream.codec_context.color_primaries = 1
        stream.codec_context.color_trc = 1
        stream.codec_context.color_range = 1  # limited ("MPEG") range
        # The same frames must give the same file: x264_options() keeps x264 off the
        # routines whose output depends on the process's history.
        stream.options = {"crf": str(self.crf), "preset": self.preset, **x264_options()}
        self._stream = stream

    def write(self, frame: np.ndarray) -> None:
        """Append one frame.

        Parameters
        ----------
        frame : numpy.ndarray
            uint8 ``(height, width, 3)`` RGB.
        """
        if self._container is None:
            raise RuntimeError("VideoWriter.write() outside its with-block")
        frame = np.asarray(frame)
        if frame.shape != (self.height, self.width, 3) or frame.dtype != np.uint8:
            raise ValueError(
                f"expected uint8 ({self.height}, {self.width}, 3), got {frame.dtype} {frame.shape}"
            )
        if self._ticks is not None and self.frames_written + 1 >= len(self._ticks):
            raise ValueError(
                f"frame_times end after {len(self._ticks) - 1} frames; "
                f"cannot write frame {self.frames_written}"
            )
        video_frame = self._to_yuv.reformat(
            av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24"),
            format=self.pixel_format,
            dst_colorspace="ITU709",
            dst_color_range="MPEG",
        )
        video_frame.pts = self._tick(self.frames_written)
        video_frame.time_base = self._stream.codec_context.time_base
        try:
            self._mux_video(self._stream.encode(video_frame))
            self.frames_written += 1
            if self._audio is not None:
                self._audio.copy_until(self._tick(self.frames_written) * self._time_base)
        except (OSError, av.FFmpegError) as exc:
            self._abort()
            raise OutputError(f"cannot write {self.path}: {_reason(exc)}") from None

    def _tick(self, index: int) -> int:
        """Timestamp of frame ``index`` (or end of frame ``index - 1``) in time-base ticks."""
        return index if self._ticks is None else self._ticks[index]

    def _mux_video(self, packets) -> None:
        for packet in packets:
            if self._ticks is not None:
                # Muxers guess a frame's length from the timestamps around it, which at a
                # variable rate mis-times the last frame and with it the file's duration.
                index = self._tick_index.get(packet.pts)
                if index is not None:
                    packet.duration = self._ticks[index + 1] - self._ticks[index]
            self._container.mux(packet)

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is not None:
            self._abort()
            return
        self._finish()

    def _finish(self) -> None:
        if self.frames_written == 0:
            self._abort()
            raise OutputError(f"{self.path}: no frames were written, so no video was saved")
        try:
            self._mux_video(self._stream.encode(None))
            if self._audio is not None:
                self._audio.copy_until(math.inf)
                self._audio.close()
                self._audio = None
            self._container.close()
            self._container = None
            self._file.commit()
        except (OSError, av.FFmpegError) as exc:
            self._abort()
            raise OutputError(f"cannot write {self.path}: {_reason(exc)}") from None
        except BaseException:
            self._abort()
            raise
        self._temp_path = None

    def _abort(self) -> None:
        """Close everything, ignoring further errors, and delete the temporary file."""
        if self._audio is not None:
            self._audio.close()
            self._audio = None
        if self._container is not None:
            try:
                self._container.close()
            except (OSError, av.FFmpegError):
                pass  # the file is deleted below; its trailer does not matter
            self._container = None
        if self._temp_path is not None:
            self._file.discard()
            self._temp_path = None


class _AudioCopy:
    """Streams the audio packets of a source file into an output container."""

    def __init__(
        self,
        source,
        source_stream,
        output_stream,
        *,
        window: tuple[Fraction, Fraction],
        preroll: bool,
    ):
        self._source = source
        self._preroll = preroll
        self._source_stream = source_stream
        self._output_stream = output_stream
        self._window_start, self._window_end = window
        self._packets = source.demux(source_stream)
        self._held = None  # the packet before the window, kept to prime the decoder
        self._started = False
        self._done = False

    @classmethod
    def open(
        cls, path: str, output, *, frames: tuple[int, int | None], own_times: bool = False
    ) -> _AudioCopy | None:
        """Set up copying, or return None when ``path`` has no audio.

        ``frames`` are timed at the source's average rate, or with ``own_times``
        on its frame times (:func:`frame_times`).
        """
        start, end = frames
        times = frame_times(path) if own_times else None
        if end is None:
            end = len(times) - 1 if times is not None else probe_video(path).frame_count
        source = _open_input(path)
        try:
            if not source.streams.audio:
                source.close()
                return None
            video = _video_stream(source, path)
            audio = source.streams.audio[0]
            fps = _frame_rate(video)
            video_start = (video.start_time or 0) * video.time_base
            if times is None:
                window = (video_start + start / fps, video_start + end / fps)
            else:
                last = len(times) - 1
                window = (
                    video_start + times[min(start, last)],
                    video_start + times[min(end, last)],
                )
            try:
                output_stream = output.add_stream_from_template(audio)
            except ValueError:
                codec = audio.codec_context.name if audio.codec_context else "unknown"
                raise OutputError(
                    f"a {output.format.name} file cannot hold the {codec} audio of {path}; "
                    f"write another of {', '.join(OUTPUT_FORMATS)}, or leave the audio out"
                ) from None
            preroll = output.format.name in EDIT_LIST_FORMATS
            return cls(source, audio, output_stream, window=window, preroll=preroll)
        except BaseException:
            source.close()
            raise

    def copy_until(self, output_time: Fraction | float) -> None:
        """Mux the source packets that start before ``output_time`` (seconds)."""
        source_time = self._window_start + output_time
        while not self._done:
            packet = next(self._packets, None)
            if packet is None or packet.pts is None:
                self._done = packet is None
                continue
            begin = packet.pts * packet.time_base
            if begin >= self._window_end:
                self._done = True
                break
            end = begin + (packet.duration or 0) * packet.time_base
            if (end <= self._window_start) if self._preroll else (begin < self._window_start):
                self._held = packet if self._preroll else None
                continue
            if not self._started:
                self._started = True
                if self._held is not None:
                    self._mux(self._held)
            self._mux(packet)
            if begin >= source_time:
                break

    def _mux(self, packet) -> None:
        shift = round(self._window_start / packet.time_base)
        packet.pts -= shift
        packet.dts = None if packet.dts is None else packet.dts - shift
        packet.stream = self._output_stream
        self._output_stream.container.mux(packet)

    def close(self) -> None:
        self._source.close()


def _time_base(times: Sequence[Fraction]) -> Fraction:
    """The coarsest time base that holds every time exactly, or FINEST_TIME_BASE."""
    denominator = 1
    for time in times:
        denominator = math.lcm(denominator, Fraction(time).denominator)
        if denominator > FINEST_TIME_BASE.denominator:
            return FINEST_TIME_BASE
    return Fraction(1, denominator)


__all__ = [
    "EDIT_LIST_FORMATS",
    "FINEST_TIME_BASE",
    "OUTPUT_FORMATS",
    "VideoWriter",
]
