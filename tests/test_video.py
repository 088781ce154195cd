"""Video probing, reading and writing (PyAV), on tiny synthetic clips."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest
from clips import NTSC, audio_span, sine_audio, write_clip
from video_checks import (
    CODEC_TOLERANCE,
    COUNT,
    HEIGHT,
    WIDTH,
    files_in,
    mean_abs,
    panning_frames,
    write_video,
)

from diva_numba.errors import OutputError
from diva_numba.video import VideoWriter, even_size, frame_times, probe_video, read_frames


@pytest.fixture
def frames(rng):
    return panning_frames(rng)


@pytest.fixture
def clip_with_audio(tmp_path, frames):
    path = tmp_path / "clip.mp4"
    write_clip(path, frames, audio_seconds=COUNT / float(NTSC) + 0.3)
    return path


# --- writing and reading back -------------------------------------------------------------


def test_round_trip_keeps_count_size_and_exact_ntsc_rate(tmp_path, frames):
    path = tmp_path / "out.mp4"
    writer = write_video(path, frames)
    assert writer.frames_written == COUNT
    info = probe_video(path)
    assert (info.width, info.height, info.frame_count) == (WIDTH, HEIGHT, COUNT)
    assert info.fps == Fraction(30000, 1001)
    assert info.frame_count_source == "header"
    assert info.codec == "h264"
    assert not info.has_audio and not info.variable_frame_rate
    assert info.duration == pytest.approx(COUNT * 1001 / 30000, abs=1e-6)
    decoded = list(read_frames(path))
    assert [index for index, _ in decoded] == list(range(COUNT))
    for (_, frame), original in zip(decoded, frames, strict=True):
        assert frame.shape == (HEIGHT, WIDTH, 3) and frame.dtype == np.uint8
        assert frame.flags.c_contiguous
        assert mean_abs(frame, original) < CODEC_TOLERANCE


def test_colours_survive_the_yuv_round_trip(tmp_path, rng):
    # Flat colours have no detail for 4:2:0 or the encoder to lose, so what is left is
    # the colour matrix: writing with one and reading with another shifts saturated
    # colours by 10 or more.
    colours = rng.integers(0, 256, size=(8, 3), dtype=np.uint8)
    flat = np.broadcast_to(colours[:, None, None, :], (8, HEIGHT, WIDTH, 3)).copy()
    path = tmp_path / "flat.mp4"
    write_video(path, flat, crf=0)
    for (_, frame), original in zip(read_frames(path), flat, strict=True):
        assert np.abs(frame.astype(int) - original.astype(int)).max() <= 3


@pytest.mark.parametrize("suffix", [".mkv", ".mov"])
def test_other_containers_round_trip(tmp_path, frames, suffix):
    path = tmp_path / f"out{suffix}"
    write_video(path, frames, fps=25)
    info = probe_video(path)
    assert info.frame_count == COUNT and info.fps == 25
    # Matroska does not record frame counts, so they are counted by decoding.
    assert info.frame_count_source == ("decoded" if suffix == ".mkv" else "header")


def test_integer_and_odd_fraction_rates_are_exact(tmp_path, frames):
    for rate in (Fraction(24000, 1001), Fraction(60), Fraction(25, 2)):
        path = tmp_path / f"rate{rate.numerator}_{rate.denominator}.mp4"
        write_video(path, frames[:6], fps=rate)
        assert probe_video(path).fps == rate


def test_read_range_matches_full_read(tmp_path, frames, rng):
    path = tmp_path / "out.mp4"
    write_video(path, frames)
    everything = [frame for _, frame in read_frames(path)]
    start = int(rng.integers(0, COUNT - 2))
    end = int(rng.integers(start + 1, COUNT + 1))
    part = list(read_frames(path, start=start, end=end))
    assert [index for index, _ in part] == list(range(start, end))
    for index, frame in part:
        np.testing.assert_array_equal(frame, everything[index])
    assert len(list(read_frames(path, start=COUNT - 1, end=COUNT + 10))) == 1
    with pytest.raises(ValueError):
        next(read_frames(path, start=3, end=2))


def test_frames_with_padded_rows_come_out_contiguous(tmp_path, rng):
    # 50 RGB pixels are 150 bytes, which FFmpeg pads to an aligned row length.
    frames = rng.integers(0, 256, size=(3, 30, 50, 3), dtype=np.uint8)
    path = tmp_path / "narrow.mp4"
    write_video(path, frames)
    for _, frame in read_frames(path):
        assert frame.shape == (30, 50, 3) and frame.flags.c_contiguous


def test_exact_count_decodes_every_frame(tmp_path, frames):
    path = tmp_path / "out.mp4"
    write_video(path, frames)
    info = probe_video(path, exact_count=True)
    assert info.frame_count == COUNT and info.frame_count_source == "decoded"


@pytest.mark.parametrize("rotation", [90, -90, 180])
def test_rotation_is_applied(tmp_path, frames, rotation):
    plain, rotated = tmp_path / "plain.mp4", tmp_path / "rotated.mp4"
    write_clip(plain, frames)
    write_clip(rotated, frames, rotation=rotation)
    info = probe_video(rotated)
    assert info.rotation == rotation
    expected_size = (WIDTH, HEIGHT) if rotation == 180 else (HEIGHT, WIDTH)
    assert (info.width, info.height) == expected_size
    # A display matrix rotating by +90 degrees turns the picture counter-clockwise,
    # which is what numpy.rot90 does for k = 1.
    for (_, upright), (_, turned) in zip(read_frames(plain), read_frames(rotated), strict=True):
        assert turned.shape == (info.height, info.width, 3)
        np.testing.assert_array_equal(turned, np.rot90(upright, rotation // 90))


def test_variable_frame_rate_is_detected(tmp_path, frames):
    ticks = np.cumsum([0, 33, 34, 33, 100, 33, 34, 200, 33, 33])
    path = tmp_path / "vfr.mkv"
    write_clip(path, frames[:10], fps=30, timestamps=list(ticks), time_base=Fraction(1, 1000))
    assert probe_video(path).variable_frame_rate


def test_rounded_constant_rate_is_not_variable(tmp_path, frames):
    # 29.97 fps in Matroska's millisecond ticks alternates 33 and 34 ms intervals.
    path = tmp_path / "cfr.mkv"
    write_clip(path, frames, fps=NTSC)
    info = probe_video(path)
    assert not info.variable_frame_rate
    assert info.fps == NTSC


# --- audio ----------------------------------------------------------------------------------


def test_audio_is_copied_over_the_whole_clip(tmp_path, frames, clip_with_audio):
    source = probe_video(clip_with_audio)
    assert source.has_audio and source.audio_codec == "aac"
    path = tmp_path / "out.mp4"
    writer = write_video(path, frames, audio_source=clip_with_audio)
    assert writer.has_audio
    info = probe_video(path)
    assert info.has_audio and info.audio_codec == "aac"
    start, seconds, _ = audio_span(path)
    # Cut on AAC packet boundaries: at most one 1024-sample packet too long.
    assert start == pytest.approx(0.0, abs=1e-3)
    video_seconds = COUNT / float(NTSC)
    assert video_seconds - 1e-3 <= seconds <= video_seconds + 1024 / 48000 + 1e-3


def test_audio_packets_are_copied_unchanged(tmp_path, frames, clip_with_audio):
    path = tmp_path / "out.mkv"
    write_video(path, frames, audio_source=clip_with_audio)
    with av.open(str(clip_with_audio)) as source, av.open(str(path)) as copy:
        originals = {bytes(p) for p in source.demux(source.streams.audio[0]) if p.size}
        copied = [bytes(p) for p in copy.demux(copy.streams.audio[0]) if p.size]
    assert copied and all(packet in originals for packet in copied)


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_audio_is_trimmed_to_the_frame_range(tmp_path, frames, clip_with_audio, rng, suffix):
    start = int(rng.integers(1, 6))
    end = int(rng.integers(start + 4, COUNT))
    path = tmp_path / f"part{suffix}"
    write_video(path, frames[start:end], audio_source=clip_with_audio, audio_frames=(start, end))
    assert probe_video(path).frame_count == end - start
    audio_start, seconds, _ = audio_span(path)
    packet = 1024 / 48000
    video_seconds = (end - start) / float(NTSC)
    if suffix == ".mp4":
        # The edit list makes the start exact; the end runs at most one packet long.
        assert audio_start == pytest.approx(0.0, abs=1e-3)
        assert video_seconds - 1e-3 <= seconds <= video_seconds + packet + 1e-3
    else:
        # Matroska starts at the first whole packet inside the range.
        assert 0.0 <= audio_start <= packet + 1e-3
        assert audio_start + seconds == pytest.approx(video_seconds, abs=packet + 1e-3)
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        assert (video.start_time or 0) == 0  # the video is never shifted to fit the audio


def test_audio_the_container_cannot_hold_is_an_output_error(tmp_path, frames):
    source = tmp_path / "ulaw.mov"
    write_clip(source, frames, audio_seconds=0.6, audio_codec="pcm_mulaw")
    with pytest.raises(OutputError, match="cannot hold the pcm_mulaw audio"):
        write_video(tmp_path / "out.mp4", frames, audio_source=source)
    assert files_in(tmp_path) == ["ulaw.mov"]
    write_video(tmp_path / "out.mov", frames, audio_source=source)
    assert probe_video(tmp_path / "out.mov").audio_codec == "pcm_mulaw"


def test_source_without_audio_gives_silent_output(tmp_path, frames):
    silent = tmp_path / "silent.mp4"
    write_clip(silent, frames)
    path = tmp_path / "out.mp4"
    writer = write_video(path, frames, audio_source=silent)
    assert not writer.has_audio and not probe_video(path).has_audio


def test_sine_helper_is_what_the_audio_tests_assume():
    samples = sine_audio(0.5)
    assert samples.shape == (1, 24000) and samples.dtype == np.float32
    assert np.abs(samples).max() == pytest.approx(0.3, abs=1e-3)


# --- variable frame rate -------------------------------------------------------------------

#: Frame intervals in milliseconds of a clip whose rate drops twice (a phone camera in dim
#: light); the lower median is 33 ms.
VFR_INTERVALS_MS = [33, 34, 33, 100, 33, 34, 200, 33, 33]


def _irregular_times(rng, count: int, clock: int) -> list[Fraction]:
    """``count + 1`` frame bounds on a ``1 / clock`` time base, one interval far off the rest."""
    ticks = rng.integers(clock // 100, clock // 25, size=count)
    ticks[rng.integers(count - 1)] = clock // 5  # at least twice any other interval
    return [Fraction(int(t), clock) for t in np.concatenate([[0], np.cumsum(ticks)])]


def _vfr_clip_with_audio(tmp_path, frames):
    path = tmp_path / "vfr.mp4"
    ticks = np.cumsum([0, *VFR_INTERVALS_MS])
    write_clip(path, frames[:10], fps=30, timestamps=list(ticks), time_base=Fraction(1, 1000),
               audio_seconds=1.0)  # fmt: skip
    return path


def test_frame_times_of_a_constant_rate_are_i_over_fps(tmp_path, frames):
    path = tmp_path / "out.mp4"
    write_video(path, frames)
    assert frame_times(path) == [i * Fraction(1001, 30000) for i in range(COUNT + 1)]


def test_frame_times_of_a_variable_rate_clip(tmp_path, frames):
    path = _vfr_clip_with_audio(tmp_path, frames)
    starts = np.cumsum([0, *VFR_INTERVALS_MS])
    expected = [Fraction(int(t), 1000) for t in [*starts, starts[-1] + 33]]
    assert frame_times(path) == expected
    info = probe_video(path)
    assert info.variable_frame_rate and info.frame_count == 10
    # The end is the last start plus the median interval, as frame_times gives it.
    assert info.duration == pytest.approx(0.566, abs=1e-9)


@pytest.mark.parametrize("suffix", [".mp4", ".mov", ".mkv"])
def test_irregular_frame_times_are_kept(tmp_path, frames, rng, suffix):
    times = _irregular_times(rng, COUNT, 600)
    path = tmp_path / f"vfr{suffix}"
    writer = write_video(path, frames, fps=COUNT / times[-1], frame_times=times)
    assert writer.frames_written == COUNT
    info = probe_video(path, exact_count=True)
    assert info.frame_count == COUNT and info.variable_frame_rate
    read_back = frame_times(path)[:-1]
    if suffix == ".mkv":
        # Matroska keeps milliseconds: each time is rounded to the nearest one.
        assert max(abs(a - b) for a, b in zip(read_back, times[:-1], strict=True)) <= 0.0005
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            packets = sorted((p for p in container.demux(stream) if p.size), key=lambda p: p.pts)
            lengths = [p.duration * stream.time_base for p in packets]
        # Every frame lasts until the next one, the last one until the end given, to the
        # clock's rounding: both ends and the stored duration are whole milliseconds, and
        # one random case in about forty was seen 1.33 ms off (1/600 s times).
        intervals = [b - a for a, b in zip(times, times[1:], strict=False)]
        assert max(abs(a - b) for a, b in zip(lengths, intervals, strict=True)) <= 0.0015
    else:
        # MP4 and MOV keep the 1/600 s clock (scaled up), so the times are exact.
        assert read_back == times[:-1]
    # The frames are all there, in order.
    for (_, frame), original in zip(read_frames(path), frames, strict=True):
        assert mean_abs(frame, original) < CODEC_TOLERANCE


def test_times_finer_than_90_khz_are_rounded(tmp_path, frames):
    times = [Fraction(i * i, 1_000_003) + Fraction(i, 30) for i in range(7)]
    path = tmp_path / "fine.mp4"
    write_video(path, frames[:6], fps=30, frame_times=times)
    read_back = frame_times(path)[:-1]
    assert all(
        abs(a - b) <= Fraction(1, 180000) for a, b in zip(read_back, times[:-1], strict=True)
    )


def test_audio_of_a_vfr_source_spans_the_frame_times(tmp_path, frames):
    source = _vfr_clip_with_audio(tmp_path, frames)
    times = frame_times(source)
    path = tmp_path / "out.mp4"
    writer = write_video(path, frames[:10], fps=probe_video(source).fps, audio_source=source,
                    frame_times=times)  # fmt: skip
    assert writer.has_audio
    start, seconds, _ = audio_span(path)
    assert start == pytest.approx(0.0, abs=1e-3)
    # Up to the end of the last frame (0.566 s), cut on an AAC packet boundary.
    assert float(times[-1]) - 1e-3 <= seconds <= float(times[-1]) + 1024 / 48000 + 1e-3


def test_audio_of_a_vfr_range_is_cut_on_the_frame_times(tmp_path, frames):
    source = _vfr_clip_with_audio(tmp_path, frames)
    times = frame_times(source)
    start, end = 2, 8  # spans the 100 ms and 200 ms gaps
    span = [t - times[start] for t in times[start : end + 1]]
    path = tmp_path / "part.mp4"
    write_video(path, frames[start:end], fps=probe_video(source).fps, audio_source=source,
           audio_frames=(start, end), frame_times=span)  # fmt: skip
    assert frame_times(path)[:-1] == span[:-1]
    audio_start, seconds, _ = audio_span(path)
    assert audio_start == pytest.approx(0.0, abs=1e-3)
    # times[8] - times[2] = 0.4 s; at the average rate 6 frames would be 0.34 s.
    assert float(span[-1]) - 1e-3 <= seconds <= float(span[-1]) + 1024 / 48000 + 1e-3


def test_writer_refuses_bad_frame_times(tmp_path, frames):
    for times in ([Fraction(1, 30), Fraction(2, 30)], [0, Fraction(1, 30), Fraction(1, 30)], [0]):
        with pytest.raises(ValueError, match="frame_times must"):
            VideoWriter(tmp_path / "out.mp4", width=WIDTH, height=HEIGHT, fps=30,
                        frame_times=times)  # fmt: skip
    times = [0, Fraction(1, 30), Fraction(3, 30)]
    with pytest.raises(ValueError, match="end after 2 frames"):
        write_video(tmp_path / "out.mp4", frames[:3], fps=20, frame_times=times)
    assert files_in(tmp_path) == []
    write_video(tmp_path / "out.mp4", frames[:2], fps=20, frame_times=times)
    assert frame_times(tmp_path / "out.mp4")[:-1] == times[:2]


# --- even sizes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "long_side", "expected"),
    [
        ((1920, 1080), 640, (640, 360)),
        ((1080, 1920), 640, (360, 640)),
        ((641, 361), None, (640, 360)),
        ((1920, 1080), 449, (448, 252)),
        ((100, 3), 10, (10, 2)),
    ],
)
def test_even_size_examples(source, long_side, expected):
    assert even_size(*source, long_side) == expected


def test_even_size_keeps_the_aspect_within_a_pixel(rng):
    for _ in range(200):
        width, height = (int(v) for v in rng.integers(2, 4000, size=2))
        long_side = int(rng.integers(2, 2000))
        new_width, new_height = even_size(width, height, long_side)
        assert new_width % 2 == 0 and new_height % 2 == 0
        assert max(new_width, new_height) == long_side - long_side % 2
        # Orientation is kept (a near-square source may come out square).
        assert not (width > height and new_width < new_height)
        assert not (width < height and new_width > new_height)
        if width >= height:
            exact_short, short = height * new_width / width, new_height
        else:
            exact_short, short = width * new_height / height, new_width
        assert abs(short - exact_short) <= 1 or (short == 2 and exact_short < 2)


def test_even_size_rejects_nonsense():
    with pytest.raises(ValueError):
        even_size(0, 10, 10)
    with pytest.raises(ValueError):
        even_size(10, 10, 1)


@pytest.mark.parametrize(("output", "magic"), [("res:1.mp4", b"ftyp"), ("http:x.mkv", b"\x1aE")])
def test_names_with_a_colon_are_local_files(tmp_path, frames, clip_with_audio, monkeypatch, output,
                                            magic):  # fmt: skip
    # FFmpeg would read "take:" or "http:" as a protocol; relative names show it.
    monkeypatch.chdir(tmp_path)
    clip_with_audio.rename(tmp_path / "take:1.mp4")
    source = probe_video("take:1.mp4")
    assert source.frame_count == COUNT and source.has_audio
    assert len(frame_times("take:1.mp4")) == COUNT + 1  # and the end
    assert len(list(read_frames("take:1.mp4", end=3))) == 3
    write_video(output, frames, audio_source="take:1.mp4")
    info = probe_video(output)
    assert info.frame_count == COUNT and info.has_audio
    # The container is still the one the extension names.
    assert magic in (tmp_path / output).read_bytes()[:8]
    assert files_in(tmp_path) == sorted([output, "take:1.mp4"])
