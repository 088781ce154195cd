"""Video writing that fails or is interrupted, and inputs that are not videos.

The writer never leaves a broken file (an exception or an interruption inside the
block, a failed overwrite, a full disk); bad inputs are one-line input errors.
"""

from __future__ import annotations

import os
import resource
import signal
import sys

import av
import numpy as np
import pytest
from clips import NTSC, sine_audio, write_clip
from video_checks import COUNT, HEIGHT, WIDTH, files_in, panning_frames, write_video

from diva_numba.errors import InputError, OutputError
from diva_numba.video import VideoWriter, frame_times, probe_video, read_frames


@pytest.fixture
def frames(rng):
    return panning_frames(rng)


# --- the writer never leaves a broken file --------------------------------------------------


@pytest.mark.parametrize("interruption", [RuntimeError, KeyboardInterrupt])
def test_exception_inside_the_block_leaves_no_file(tmp_path, frames, interruption):
    path = tmp_path / "out.mp4"
    with pytest.raises(interruption):
        with VideoWriter(path, width=WIDTH, height=HEIGHT, fps=NTSC) as writer:
            writer.write(frames[0])
            writer.write(frames[1])
            assert len(files_in(tmp_path)) == 1  # the hidden temporary file
            raise interruption
    assert files_in(tmp_path) == []


def test_a_writer_without_frames_saves_nothing(tmp_path):
    with pytest.raises(OutputError, match="no frames"):
        with VideoWriter(tmp_path / "out.mp4", width=WIDTH, height=HEIGHT, fps=NTSC):
            pass
    assert files_in(tmp_path) == []


def test_failed_overwrite_keeps_the_old_file(tmp_path, frames):
    path = tmp_path / "out.mp4"
    path.write_bytes(b"previous result")
    with pytest.raises(RuntimeError):
        with VideoWriter(path, width=WIDTH, height=HEIGHT, fps=NTSC, overwrite=True) as writer:
            writer.write(frames[0])
            raise RuntimeError
    assert path.read_bytes() == b"previous result"
    assert files_in(tmp_path) == ["out.mp4"]
    write_video(path, frames, overwrite=True)
    assert probe_video(path).frame_count == COUNT


def test_bad_frames_are_refused(tmp_path, frames):
    with VideoWriter(tmp_path / "out.mp4", width=WIDTH, height=HEIGHT, fps=NTSC) as writer:
        with pytest.raises(ValueError, match="expected uint8"):
            writer.write(frames[0][:, :-2])
        with pytest.raises(ValueError, match="expected uint8"):
            writer.write(frames[0].astype(np.float32))
        writer.write(frames[0])
    with pytest.raises(RuntimeError):
        writer.write(frames[0])


@pytest.mark.parametrize(
    ("size", "name", "message"),
    [
        ((63, 48), "out.mp4", "even width and height"),
        ((64, 47), "out.mp4", "even width and height"),
        ((64, 48), "out.avi", "cannot write '.avi'"),
        ((64, 48), "missing/out.mp4", "does not exist"),
    ],
)
def test_writer_refuses_bad_requests(tmp_path, size, name, message):
    width, height = size
    with pytest.raises(OutputError, match=message):
        VideoWriter(tmp_path / name, width=width, height=height, fps=NTSC)
    assert files_in(tmp_path) == []


def test_existing_file_is_not_replaced_without_overwrite(tmp_path):
    path = tmp_path / "out.mp4"
    path.write_bytes(b"keep me")
    with pytest.raises(OutputError, match="exists; pass --overwrite"):
        VideoWriter(path, width=WIDTH, height=HEIGHT, fps=NTSC)
    assert path.read_bytes() == b"keep me"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only directories")
def test_unwritable_directory(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(OutputError, match="cannot write"):
            with VideoWriter(locked / "out.mp4", width=WIDTH, height=HEIGHT, fps=NTSC):
                pass
    finally:
        locked.chmod(0o700)


@pytest.mark.skipif(sys.platform != "linux", reason="uses RLIMIT_FSIZE and SIGXFSZ")
def test_full_disk_is_an_output_error_and_leaves_nothing(tmp_path, rng):
    # A file-size limit makes writes fail the way a full disk does (EFBIG, not ENOSPC).
    noise = rng.integers(0, 256, size=(20, HEIGHT, WIDTH, 3), dtype=np.uint8)
    previous_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (16384, hard))
        with pytest.raises(OutputError, match="cannot write"):
            write_video(tmp_path / "out.mp4", noise, crf=0)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous_handler)
    assert files_in(tmp_path) == []


# --- bad inputs --------------------------------------------------------------------------------


def _audio_only(path):
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("aac", rate=48000)
        stream.layout = "mono"
        samples = sine_audio(0.1)
        for start in range(0, samples.shape[1], 1024):
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(samples[:, start : start + 1024]), format="flt", layout="mono"
            )
            frame.sample_rate, frame.pts = 48000, start
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def _video_track_without_frames(path):
    with av.open(str(path), mode="w") as container:
        video = container.add_stream("libx264", rate=30)
        video.width, video.height, video.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        audio = container.add_stream("aac", rate=48000)
        audio.layout = "mono"
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, 1024), np.float32), format="flt", layout="mono"
        )
        frame.sample_rate, frame.pts = 48000, 0
        for packet in [*audio.encode(frame), *audio.encode(None)]:
            container.mux(packet)


def _make_bad_input(kind, tmp_path, frames):
    """A file (or directory) of the given kind of badness, and the expected message."""
    path = tmp_path / f"{kind}.mp4"
    if kind == "missing":
        return path, "no such file"
    if kind == "directory":
        path.mkdir()
        return path, "is a directory"
    if kind == "empty":
        path.touch()
        return path, "is empty"
    if kind == "text":
        path.write_text("this is not a video\n" * 20)
        return path, "not a video file"
    if kind == "audio_only":
        path = tmp_path / "audio_only.m4a"
        _audio_only(path)
        return path, "has no video stream"
    if kind == "no_frames":
        path = tmp_path / "no_frames.mkv"
        _video_track_without_frames(path)
        return path, "has no frames"
    good = tmp_path / "good.mp4"
    if kind == "truncated_index_first":
        # MP4 with its index at the front: the header promises frames that are missing.
        with av.open(str(good), mode="w", options={"movflags": "+faststart"}) as container:
            stream = container.add_stream("libx264", rate=30)
            stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
            for frame in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode(None):
                container.mux(packet)
        data = good.read_bytes()
        path.write_bytes(data[: len(data) * 2 // 3])
        return path, "truncated"
    write_clip(good, frames)
    data = good.read_bytes()
    if kind == "truncated_index_last":
        # PyAV writes the index at the end: a cut file has none at all.
        path.write_bytes(data[: len(data) * 2 // 3])
        return path, "not a video file, or truncated"
    if kind == "unknown_codec":
        # Rename the H.264 sample entry: the demuxer then knows no codec for the track.
        path.write_bytes(data.replace(b"avc1", b"zzzz"))
        return path, "unsupported video codec"
    raise AssertionError(kind)


BAD_INPUTS = [
    "missing",
    "directory",
    "empty",
    "text",
    "audio_only",
    "no_frames",
    "truncated_index_first",
    "truncated_index_last",
    "unknown_codec",
]


@pytest.mark.parametrize("kind", BAD_INPUTS)
def test_bad_inputs_are_one_line_input_errors(tmp_path, frames, kind):
    path, message = _make_bad_input(kind, tmp_path, frames)
    with pytest.raises(InputError, match=message) as caught:
        probe_video(path)
    assert "\n" not in str(caught.value)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize("kind", ["missing", "text", "audio_only", "truncated_index_first"])
def test_reading_bad_inputs_raises_input_errors(tmp_path, frames, kind):
    path, _ = _make_bad_input(kind, tmp_path, frames)
    with pytest.raises(InputError):
        for _ in read_frames(path):
            pass


@pytest.mark.parametrize("kind", ["missing", "text", "audio_only"])
def test_frame_times_of_bad_inputs_are_input_errors(tmp_path, frames, kind):
    path, message = _make_bad_input(kind, tmp_path, frames)
    with pytest.raises(InputError, match=message):
        frame_times(path)
