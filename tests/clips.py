"""Tiny synthetic clips for the video, flow and metrics tests.

A clip is a window panning across a real photograph, so the true motion is
known exactly. The photograph is a micrograph with texture everywhere: optical
flow is well-posed on every window, which keeps randomised tests from landing
on a flat wall or a long straight edge, where any flow method guesses.
"""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
from skimage import data

NTSC = Fraction(30000, 1001)


def random_origin(rng, *, width: int, height: int, count: int, step=(3, 3)) -> tuple[int, int]:
    """A random window origin such that ``count`` frames moving by up to ``step`` stay inside.

    The margin of 8 pixels leaves room for subpixel shifts and negative steps.
    """
    margin_x = 8 + count * abs(step[0])
    margin_y = 8 + count * abs(step[1])
    x = int(rng.integers(margin_x, 512 - margin_x - width))
    y = int(rng.integers(margin_y, 512 - margin_y - height))
    return x, y


def photo() -> np.ndarray:
    """A 512x512 RGB uint8 photograph with texture everywhere."""
    return data.immunohistochemistry()


def pan_frames(
    count: int,
    *,
    width: int = 64,
    height: int = 48,
    step: tuple[int, int] = (2, 1),
    origin: tuple[int, int] = (200, 200),
    image: np.ndarray | None = None,
) -> np.ndarray:
    """``count`` RGB frames of a window moving ``step`` = (dx, dy) pixels per frame.

    The window starts with its top-left corner at ``origin`` = (x, y) of the
    photograph (or of ``image``). The content moves by ``-step`` on screen: frame t
    at x shows what frame t-1 showed at ``x + step``.
    """
    image = photo() if image is None else image
    dx, dy = step
    x0, y0 = origin
    frames = [
        image[y0 + t * dy : y0 + t * dy + height, x0 + t * dx : x0 + t * dx + width]
        for t in range(count)
    ]
    return np.ascontiguousarray(np.stack(frames))


def sine_audio(seconds: float, *, rate: int = 48000, pitch: float = 440.0) -> np.ndarray:
    """Mono float32 ``(1, samples)`` sine wave."""
    t = np.arange(round(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * pitch * t)).astype(np.float32)[None, :]


def write_clip(
    path,
    frames: np.ndarray,
    *,
    fps: Fraction | int = NTSC,
    audio_seconds: float | None = None,
    rotation: int | None = None,
    timestamps: list[int] | None = None,
    time_base: Fraction | None = None,
    crf: int = 12,
    audio_codec: str = "aac",
) -> None:
    """Encode ``frames`` (N, H, W, 3) uint8 with libx264, plus optional sine audio.

    ``rotation`` sets a display matrix (counter-clockwise degrees);
    ``timestamps`` with ``time_base`` stamp frames irregularly (for VFR).
    """
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf)}
        if time_base is not None:
            stream.codec_context.time_base = time_base
        if rotation is not None:
            stream.set_display_rotation(rotation)
        audio = None
        if audio_seconds is not None:
            audio = container.add_stream(audio_codec, rate=48000)
            audio.layout = "mono"
        for index, frame in enumerate(frames):
            video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
            if timestamps is not None:
                video_frame.pts = timestamps[index]
                video_frame.time_base = time_base
            for packet in stream.encode(video_frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
        if audio is not None:
            samples = sine_audio(audio_seconds)
            for start in range(0, samples.shape[1], 1024):
                chunk = np.ascontiguousarray(samples[:, start : start + 1024])
                audio_frame = av.AudioFrame.from_ndarray(chunk, format="flt", layout="mono")
                audio_frame.sample_rate = 48000
                audio_frame.pts = start
                for packet in audio.encode(audio_frame):
                    container.mux(packet)
            for packet in audio.encode(None):
                container.mux(packet)


def audio_span(path) -> tuple[float, float, int]:
    """(start seconds, duration seconds, decoded samples) of the first audio stream.

    Samples the container marks as not to be played (encoder priming, edit
    lists) are left out, as a player would.
    """
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        samples = 0
        first = None
        for frame in container.decode(stream):
            if first is None:
                first = float(frame.pts * frame.time_base)
            samples += frame.samples
        return first, samples / stream.rate, samples
