"""Progress that tells the truth: the stages of full analogies, a time left from seeded frames.

The reporters are checked on their own (a log-like stream, a terminal-like
one), then `transfer` and `analogy` end to end on the tiny model: the stage
lines, the closing summary, ``--json`` and ``-q``.
"""

from __future__ import annotations

import io
import json
from fractions import Fraction

import cv2
import pytest
from click.testing import CliRunner
from clips import pan_frames, write_clip

from diva_numba.cli import cli
from diva_numba.run.progress import AnalogyProgress, VideoProgress, clock, display_mode

FULL_STAGES = [("features", None)] + [
    (name, level)
    for level in (5, 4, 3, 2, 1)
    for name in ("normalize", "patchmatch", "deconvolution", "blend", "upsample")
    if not (level == 1 and name in ("deconvolution", "blend", "upsample"))
] + [("pixels", None), ("synthesis", None)]  # fmt: skip


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_one_line_per_main_stage_and_frame_without_carriage_returns():
    stream = io.StringIO()
    with VideoProgress(10, stream=stream) as progress:
        progress.stage(0, "prepare", "carrying the keyframes along the optical flow", None)
        for name, level in FULL_STAGES:
            progress.stage(0, "full", name, level)
        progress.frame(0, "full", 60.0)
        progress.stage(1, "seeded", "patchmatch", 5)
        progress.frame(1, "seeded", 2.0)
    text = stream.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert lines[0] == "transfer: carrying the keyframes along the optical flow"
    assert lines[1] == "transfer: frame 0, full analogy, features"
    assert "transfer: frame 0, full analogy, level 4: deconvolution" in lines
    assert "transfer: frame 0, full analogy, level 1: patchmatch" in lines
    assert not any("normalize" in line or "blend" in line for line in lines)
    assert lines[-3] == "transfer: frame 0, full analogy, synthesis"
    # Frame 0's minute is not extrapolated: the estimate waits for a seeded frame, then
    # counts the 8 frames to come at its 2 s.
    assert lines[-2] == "transfer: frame 0 (full) took 60.0 s; time left: after the next frame"
    assert lines[-1] == "transfer: frame 1 (seeded) took 2.0 s; about 0:16 left"
    assert len(lines) == 1 + 1 + 5 + 4 + 1 + 2


def test_the_time_left_follows_the_latest_seeded_frames():
    progress = VideoProgress(100, mode="off")
    progress.frame(0, "full", 300.0)
    assert progress.time_left() is None
    for index in range(1, 25):
        progress.frame(index, "seeded", 1.0 if index <= 10 else 3.0)
    progress.frame(25, "full", 300.0)  # a shot cut
    assert progress.time_left() == pytest.approx((100 - 26) * 3.0)


def test_a_terminal_gets_the_stages_on_the_bar():
    stream = Terminal()
    with VideoProgress(4, mode="bar", stream=stream) as progress:
        progress.stage(0, "full", "deconvolution", 3)
    assert "frame 0, full analogy, level 3: deconvolution" in stream.getvalue()
    assert "time left: after the next frame" in stream.getvalue()
    assert display_mode(stream) == "bar"
    assert display_mode(io.StringIO()) == "lines"
    assert display_mode(stream, quiet=True) == "off"


def test_quiet_writes_nothing():
    stream = io.StringIO()
    with VideoProgress(3, mode="off", stream=stream) as progress:
        progress.stage(0, "full", "features", None)
        progress.frame(0, "full", 5.0)
    with AnalogyProgress(mode="off", stream=stream) as progress:
        progress.stage("features", None)
    assert stream.getvalue() == ""


def test_the_analogy_bar_moves_with_the_levels():
    stream = Terminal()
    with AnalogyProgress(mode="bar", stream=stream) as progress:
        for name, level in FULL_STAGES:
            progress.stage(name, level)
            assert progress.display.bar.n < AnalogyProgress.STEPS
        assert progress.display.bar.n == AnalogyProgress.STEPS - 1
    assert "level 2: deconvolution" in stream.getvalue()


def test_clock():
    assert clock(5) == "0:05"
    assert clock(65.4) == "1:05"
    assert clock(3723) == "1:02:03"


# --- end to end ---------------------------------------------------------------------------

FAST = ["--iters", "2", "--guided-iters", "1", "--lbfgs-iters", "2", "--guided-lbfgs-iters", "1"]


@pytest.fixture
def clip(tmp_path):
    frames = pan_frames(4, width=64, height=48)
    path = tmp_path / "clip.mp4"
    write_clip(path, frames, fps=Fraction(25))
    style = tmp_path / "style.png"
    cv2.imwrite(str(style), cv2.applyColorMap(frames[0][:, :, 1], cv2.COLORMAP_JET))
    return path, style


def test_transfer_reports_stages_then_a_summary_and_json(clip, tmp_path, tiny_model):
    path, style = clip
    out = tmp_path / "out.mp4"
    args = ["transfer", str(style), str(path), "-o", str(out), "--model", str(tiny_model), *FAST]
    result = CliRunner().invoke(cli, [*args, "--preview", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["output"] == str(out) and out.is_file()
    assert summary["preview"] == str(out) + ".preview.png"
    assert (summary["frames"], summary["frames_computed"]) == (4, 4)
    assert (summary["width"], summary["height"]) == (64, 48)
    assert summary["seconds"] > 0 and summary["seconds_per_frame"] > 0
    assert summary["warp_error"] >= 0 and summary["input_warp_error"] >= 0
    stderr = result.stderr
    assert "\r" not in stderr
    assert "transfer: frame 0, full analogy, level 5: patchmatch" in stderr
    assert "transfer: frame 1 (carried)" in stderr
    assert "diva-numba: done in " in stderr and f"{out} (64 x 48, 4 frames)" in stderr
    assert "preview: " in stderr and "flicker: warping error" in stderr

    quiet = CliRunner().invoke(cli, [*args, "--overwrite", "-q"])
    assert quiet.exit_code == 0, quiet.output
    assert quiet.stderr == ""
    assert quiet.stdout.strip() == str(out)


def test_analogy_reports_its_stages(clip, tmp_path, tiny_model):
    _, style = clip
    out = tmp_path / "pair"
    args = ["analogy", str(style), str(style), "-o", str(out), "--model", str(tiny_model)]
    result = CliRunner().invoke(cli, [*args, "--iters", "1", "--lbfgs-iters", "1"])
    assert result.exit_code == 0, result.output
    assert "analogy: level 3: deconvolution" in result.stderr
    assert "analogy: synthesis" in result.stderr
    assert "diva-numba: done in " in result.stderr
    assert result.stdout.strip() == str(out)
    quiet = CliRunner().invoke(cli, [*args, "--overwrite", "-q", "--iters", "1"])
    assert quiet.exit_code == 0 and quiet.stderr == ""
