"""Planning a video run: the checked inputs, the working sizes, and what the output needs.

Everything here runs before the first frame is processed, so that a bad input
or an output that cannot be written fails in a second rather than after an
hour of work.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from diva_numba.errors import InputError, OutputError
from diva_numba.images import MAX_AREA, MIN_SIDE, load_image, resize
from diva_numba.video import (
    OUTPUT_FORMATS,
    VideoInfo,
    VideoWriter,
    even_size,
    frame_times,
    probe_video,
)

log = logging.getLogger("diva_numba")

#: What a finished frame costs on disk in the work directory, as a share of its
#: raw RGB bytes (PNG of stylised frames; an estimate on the safe side).
PNG_SHARE = 0.75


@dataclass(frozen=True)
class TransferPlan:
    """The checked inputs of a run and the sizes it works at.

    Attributes
    ----------
    info : VideoInfo
    start, end : int
        The frame range ``[start, end)`` of the clip.
    width, height : int
        Output frame size: the clip's own unless ``TransferParams.size`` asks
        for another.
    work_width, work_height : int
        Frame size of the deep analogy (never above the output size).
    style : numpy.ndarray
        uint8 ``(H, W, 3)`` style image at its working size.
    style_full : numpy.ndarray
        The style image at the size its pixels are copied from: its own, or
        less when the output could not resolve more (docs/DESIGN.md section 10).
    frame_times : tuple of fractions.Fraction or None
        For a variable frame rate: ``end - start + 1`` times in seconds, the
        start of every frame of the range from frame ``start`` on, then the
        end of the last (see :func:`~diva_numba.video.frame_times`); None for
        a constant rate, where frame ``i`` shows at ``i / info.fps``.
    """

    info: VideoInfo
    start: int
    end: int
    width: int
    height: int
    work_width: int
    work_height: int
    style: np.ndarray
    style_full: np.ndarray
    frame_times: tuple[Fraction, ...] | None = None

    @property
    def work_shape(self) -> tuple[int, int]:
        """(H, W) of the deep analogy's frames."""
        return self.work_height, self.work_width

    @property
    def output_shape(self) -> tuple[int, int]:
        """(H, W) of the output frames."""
        return self.height, self.width

    def writer_settings(
        self, clip: Path, *, crf: float, chroma: str, frames: int | None = None
    ) -> dict:
        """The :class:`~diva_numba.video.VideoWriter` settings of the output.

        The one description of how the run encodes, shared by the trial encode
        before the first frame (:func:`check_encoding`) and the real one, so the
        trial tests what the run will write.

        Parameters
        ----------
        clip : Path
            The clip, the audio's source.
        crf : float
        chroma : {"420", "444"}
        frames : int, optional
            Encode only the range's first ``frames`` frames (timing and audio
            cut to them); default all.

        Returns
        -------
        dict
            Keyword arguments of ``VideoWriter`` but ``path`` and ``overwrite``.
        """
        end = self.end if frames is None else self.start + frames
        return {
            "width": self.width,
            "height": self.height,
            "fps": self.info.fps,
            "crf": crf,
            "pixel_format": f"yuv{chroma}p",
            "audio_source": clip,
            "audio_frames": (self.start, end),
            "frame_times": (
                None if self.frame_times is None else self.frame_times[: end - self.start + 1]
            ),
        }


def plan_transfer(
    style_path: Path, clip_path: Path, params, *, start: int, end: int | None
) -> TransferPlan:
    """Probe the inputs, check the frame range, and choose the working sizes.

    Parameters
    ----------
    style_path, clip_path : Path
    params : TransferParams
        ``size`` sets the output's long side (default the clip's own),
        ``work_size`` the deep analogy's (never above the output's).
    start, end : int
        The frame range ``[start, end)``; ``end=None`` for the whole clip.

    Returns
    -------
    TransferPlan

    Raises
    ------
    InputError
        Unreadable inputs, no frames in the range, frames without usable
        timestamps in a variable-rate clip.
    """
    info = probe_video(clip_path)
    last = info.frame_count if end is None else min(end, info.frame_count)
    if start < 0 or start >= last:
        raise InputError(
            f"{clip_path}: frame range [{start}, {last}) is empty (the clip has "
            f"{info.frame_count} frames)"
        )
    times = None
    if info.variable_frame_rate:
        # Resampling to a constant rate would drop or repeat frames; each keeps its time.
        clip_times = frame_times(clip_path)
        if len(clip_times) <= last:
            raise InputError(
                f"{clip_path}: {len(clip_times) - 1} frames have timestamps, "
                f"but the clip has {info.frame_count}"
            )
        times = tuple(t - clip_times[start] for t in clip_times[start : last + 1])
        log.debug("%s: variable frame rate; every frame keeps its own time", clip_path)
    own_side = max(info.width, info.height)
    width, height = even_size(info.width, info.height, params.size or own_side)
    work_width, work_height = even_size(
        info.width, info.height, min(params.work_size, max(width, height))
    )
    if min(work_width, work_height) < 32:
        # The working size is at most the output's: frames too small at that size
        # need a larger --size; a larger --work-size cannot help them.
        larger = "--size" if min(width, height) < 32 else "--work-size"
        raise InputError(
            f"{clip_path}: {work_width}x{work_height} frames are too small (32 px minimum on "
            f"each side); ask for a larger {larger}"
        )
    style = load_image(style_path)
    style_size = style_working_size(
        *style.shape[:2], long_side=max(work_width, work_height), name=style_path
    )
    # The style's pixels are copied at the scale the output resolves, never enlarged.
    scale = min(
        1.0, max(width, height) / max(work_width, work_height) * style_size[0] / style.shape[0]
    )
    full_size = (max(style_size[0], round(style.shape[0] * scale)),
                 max(style_size[1], round(style.shape[1] * scale)))  # fmt: skip
    style_work = resize(style, *style_size)
    style_full = style if full_size == style.shape[:2] else resize(style, *full_size)
    return TransferPlan(
        info, start, last, width, height, work_width, work_height, style_work, style_full, times
    )


def style_working_size(
    height: int, width: int, *, long_side: int, name: str | os.PathLike = "style image"
) -> tuple[int, int]:
    """The (H, W) the style image is used at: aspect kept, long side as the frames'.

    Never enlarged, except that the short side is brought up to the network's
    minimum; an image so elongated that this would exceed the area limit is
    refused rather than squeezed (its strokes would be distorted).

    Raises
    ------
    InputError
        The style image is too elongated.
    """
    scale = min(long_side, max(height, width)) / max(height, width)
    scale = max(scale, MIN_SIDE / min(height, width))
    size = (max(MIN_SIDE, round(height * scale)), max(MIN_SIDE, round(width * scale)))
    if size[0] * size[1] > MAX_AREA:
        raise InputError(
            f"{name}: {width}x{height} is too elongated to use as a style (at least "
            f"{MIN_SIDE} px on the short side would make it {size[1]}x{size[0]}); crop it"
        )
    return size


def check_encoding(plan: TransferPlan, clip: Path, output: Path, *, crf: float, chroma: str):
    """Encode one frame (with the clip's audio) beside ``output``, and delete it.

    Container, codec, pixel format, frame size, timing and the audio copy all
    fail here, before any frame is processed, rather than after the last.

    Raises
    ------
    OutputError
    """
    suffix = output.suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise OutputError(
            f"{output}: cannot write '{suffix or 'no suffix'}' videos; "
            f"use {', '.join(OUTPUT_FORMATS)}"
        )
    trial = output.with_name(f".{output.stem}.trial-{os.getpid()}{output.suffix}")
    try:
        settings = plan.writer_settings(clip, crf=crf, chroma=chroma, frames=1)
        with VideoWriter(trial, **settings, overwrite=True) as writer:
            writer.write(np.zeros((plan.height, plan.width, 3), np.uint8))
    except OutputError as exc:
        raise OutputError(str(exc).replace(str(trial), str(output))) from None
    finally:
        trial.unlink(missing_ok=True)


def work_space_needed(plan: TransferPlan) -> int:
    """Bytes the work directory of ``plan`` needs at most, about."""
    frame_bytes = plan.width * plan.height * 3
    return int((plan.end - plan.start) * frame_bytes * PNG_SHARE) + 64 * frame_bytes
