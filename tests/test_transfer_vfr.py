"""`diva-numba transfer` on variable-frame-rate clips: every frame keeps its own time."""

from fractions import Fraction

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from clips import audio_span, pan_frames, write_clip

from diva_numba.cli import cli
from diva_numba.video import frame_times, probe_video

FAST = ["--iters", "2", "--guided-iters", "1", "--lbfgs-iters", "2", "--guided-lbfgs-iters", "1"]
#: Frame intervals in milliseconds: the rate drops for one long frame, as a phone camera's
#: does when the light changes. The lower median is 34 ms.
INTERVALS_MS = [33, 67, 33, 200, 34]
#: One AAC packet: how far past the video's end the copied audio may run.
AAC_PACKET = 1024 / 48000


@pytest.fixture
def vfr_clip(tmp_path):
    frames = pan_frames(6, width=64, height=48)
    path = tmp_path / "vfr.mp4"
    ticks = np.cumsum([0, *INTERVALS_MS])
    write_clip(path, frames, fps=30, timestamps=list(ticks), time_base=Fraction(1, 1000),
               audio_seconds=0.8)  # fmt: skip
    style = tmp_path / "style.png"
    cv2.imwrite(str(style), cv2.applyColorMap(frames[0][:, :, 1], cv2.COLORMAP_JET))
    assert probe_video(path).variable_frame_rate
    return path, style


def run(args, tiny_model):
    return CliRunner().invoke(
        cli, ["transfer", *args, "--model", str(tiny_model), "--device", "cpu", *FAST]
    )


def test_vfr_clip_keeps_every_frame_at_its_time(vfr_clip, tmp_path, tiny_model):
    path, style = vfr_clip
    out = tmp_path / "out.mp4"
    result = run([str(style), str(path), "-o", str(out)], tiny_model)
    assert result.exit_code == 0, result.output
    made = probe_video(out)
    assert made.frame_count == 6 and made.variable_frame_rate and made.has_audio
    source_times = frame_times(path)
    assert frame_times(out)[:-1] == source_times[:-1]
    # Audio to the end of the last frame: its start (0.367 s) plus the median interval.
    assert source_times[-1] == Fraction(401, 1000)
    audio_start, seconds, _ = audio_span(out)
    assert audio_start == pytest.approx(0.0, abs=1e-3)
    assert 0.401 - 1e-3 <= seconds <= 0.401 + AAC_PACKET + 1e-3


def test_vfr_range_keeps_its_times_from_the_first_frame(vfr_clip, tmp_path, tiny_model):
    path, style = vfr_clip
    out = tmp_path / "part.mp4"
    result = run([str(style), str(path), "-o", str(out), "--start", "1", "--end", "5"], tiny_model)
    assert result.exit_code == 0, result.output
    assert probe_video(out).frame_count == 4
    source_times = frame_times(path)
    assert frame_times(out)[:-1] == [t - source_times[1] for t in source_times[1:5]]
    # Frames 1..4 span 33 ms to 367 ms of the clip: 0.334 s of audio (at the clip's
    # average rate, 4 frames would last about 0.27 s).
    audio_start, seconds, _ = audio_span(out)
    assert audio_start == pytest.approx(0.0, abs=1e-3)
    assert 0.334 - 1e-3 <= seconds <= 0.334 + AAC_PACKET + 1e-3
