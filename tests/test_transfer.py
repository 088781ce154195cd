"""`diva-numba transfer`: the frame loop, resume, outputs, and temporal coherence."""

from fractions import Fraction

import cv2
import numpy as np
import pytest
from cli_checks import assert_one_error
from click.testing import CliRunner
from clips import audio_span, pan_frames, write_clip

import diva_numba.run.frame_loop as frame_loop
from diva_numba.cli import cli
from diva_numba.images import load_image
from diva_numba.video import probe_video, read_frames
from diva_numba.video.metrics import video_warp_error

FAST = ["--iters", "2", "--guided-iters", "1", "--lbfgs-iters", "2", "--guided-lbfgs-iters", "1"]


@pytest.fixture
def clip(tmp_path):
    frames = pan_frames(6, width=64, height=48)
    path = tmp_path / "clip.mp4"
    write_clip(path, frames, fps=Fraction(30000, 1001), audio_seconds=0.6)  # outlasts the video
    style = tmp_path / "style.png"
    cv2.imwrite(str(style), cv2.applyColorMap(frames[0][:, :, 1], cv2.COLORMAP_JET))
    return path, style


def run(args, tiny_model):
    return CliRunner().invoke(cli, ["transfer", *args, "--model", str(tiny_model), *FAST])


def test_transfer_keeps_frames_rate_and_audio(clip, tmp_path, tiny_model):
    path, style = clip
    out = tmp_path / "out.mp4"
    frames_dir = tmp_path / "frames"
    result = run([str(style), str(path), "-o", str(out), "--keep-frames", str(frames_dir),
                  "--preview"], tiny_model)  # fmt: skip
    assert result.exit_code == 0, result.output
    source, made = probe_video(path), probe_video(out)
    assert made.frame_count == source.frame_count == 6
    assert made.fps == Fraction(30000, 1001)
    assert (made.width, made.height) == (64, 48)
    assert made.has_audio
    # The audio is copied for the span the video shows (0.6 s of it in the source).
    assert audio_span(out)[1] == pytest.approx(6 * 1001 / 30000, abs=0.03)
    kept = sorted(p.name for p in frames_dir.iterdir())
    assert kept == [".diva-numba-output", *(f"{i:06d}.png" for i in range(6))]
    assert (tmp_path / "out.mp4.preview.png").is_file()
    assert not (tmp_path / "out.mp4.work").exists()


def test_frame_range_trims_video_and_audio(clip, tmp_path, tiny_model):
    path, style = clip
    out = tmp_path / "part.mp4"
    result = run([str(style), str(path), "-o", str(out), "--start", "2", "--end", "5"], tiny_model)
    assert result.exit_code == 0, result.output
    assert probe_video(out).frame_count == 3
    assert audio_span(out)[1] == pytest.approx(3 * 1001 / 30000, abs=0.03)


def test_existing_output_is_refused(clip, tmp_path, tiny_model):
    path, style = clip
    out = tmp_path / "out.mp4"
    out.write_bytes(b"precious")
    result = run([str(style), str(path), "-o", str(out)], tiny_model)
    assert result.exit_code != 0
    assert "exists" in result.output and "--overwrite" in result.output
    assert out.read_bytes() == b"precious"


@pytest.mark.parametrize(
    "mode",
    [
        [],  # the default, anchor frames by coverage: frame 0 the anchor of the rest
        ["--anchor-spacing", "2"],  # anchors 0, 2, 4: frame 3 resumes from 2's state
        ["--no-anchors"],  # every frame seeded from the one before
    ],
)
def test_interrupted_run_resumes_to_the_same_frames(clip, tmp_path, tiny_model, monkeypatch, mode):
    path, style = clip
    whole = tmp_path / "whole"
    assert run([str(style), str(path), "-o", str(tmp_path / "a.mp4"), "--keep-frames",
                str(whole), *mode], tiny_model).exit_code == 0  # fmt: skip

    real_synthesize = frame_loop.synthesize
    calls = []

    def dying_synthesize(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real_synthesize(*args, **kwargs)

    out = tmp_path / "b.mp4"
    monkeypatch.setattr(frame_loop, "synthesize", dying_synthesize)
    result = run([str(style), str(path), "-o", str(out), *mode], tiny_model)
    assert result.exit_code == 130
    assert "--resume" in result.output and "3 of 6" in result.output
    assert not out.exists()
    work = tmp_path / "b.mp4.work"
    assert work.is_dir()
    anchors = sorted(p.name for p in (work / "anchors").glob("*.npz"))
    assert anchors == {0: ["000000.npz"], 2: ["000002.npz"], 1: []}[len(mode)]

    monkeypatch.setattr(frame_loop, "synthesize", real_synthesize)
    resumed = tmp_path / "resumed"
    result = run([str(style), str(path), "-o", str(out), "--resume", "--keep-frames",
                  str(resumed), *mode], tiny_model)  # fmt: skip
    assert result.exit_code == 0, result.output
    for index in range(6):
        np.testing.assert_array_equal(
            load_image(resumed / f"{index:06d}.png"), load_image(whole / f"{index:06d}.png")
        )


def test_work_directory_of_another_run_is_refused(clip, tmp_path, tiny_model, monkeypatch):
    path, style = clip
    out = tmp_path / "out.mp4"

    real_analogy = frame_loop.analogy
    calls = []

    def dying_analogy(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_analogy(*args, **kwargs)

    # After one finished frame: a run that finished none leaves no work directory.
    monkeypatch.setattr(frame_loop, "analogy", dying_analogy)
    assert run([str(style), str(path), "-o", str(out)], tiny_model).exit_code == 130
    monkeypatch.undo()
    result = run([str(style), str(path), "-o", str(out), "--resume", "--alpha", "high"],
                 tiny_model)  # fmt: skip
    assert result.exit_code != 0
    assert "different run" in result.output and "params" in result.output
    result = run([str(style), str(path), "-o", str(out)], tiny_model)
    assert result.exit_code != 0 and "--resume" in result.output


def test_bad_inputs_are_one_line_errors(clip, tmp_path, tiny_model):
    path, style = clip
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    for args in (
        [str(style), str(text), "-o", str(tmp_path / "x.mp4")],
        [str(text), str(path), "-o", str(tmp_path / "x.mp4")],
        [str(style), str(path), "-o", str(tmp_path / "missing" / "x.mp4")],
        [str(style), str(path), "-o", str(tmp_path / "x.mp4"), "--start", "9"],
    ):
        result = run(args, tiny_model)
        assert_one_error(result, result.exit_code or 1)


@pytest.mark.model
@pytest.mark.slow
def test_temporal_coherence_halves_flicker(tmp_path, model_path):
    """On a pan across a photo, seeded frames flicker far less than independent ones."""
    frames = pan_frames(8, width=96, height=64, step=(2, 1))
    path = tmp_path / "pan.mp4"
    write_clip(path, frames, fps=25)
    style = tmp_path / "style.png"
    painted = cv2.stylization(np.ascontiguousarray(frames[0][:, :, ::-1]), sigma_s=30, sigma_r=0.4)
    cv2.imwrite(str(style), cv2.applyColorMap(cv2.cvtColor(painted, cv2.COLOR_BGR2GRAY),
                                              cv2.COLORMAP_AUTUMN))  # fmt: skip
    # 4:4:4 colour: at this tiny size 4:2:0's half-resolution chroma alone would put a
    # floor of about 3 under any stylised output's warping error.
    common = ["--model", str(model_path), "--lbfgs-iters", "5", "--guided-lbfgs-iters", "2",
              "--chroma", "444"]  # fmt: skip
    runner = CliRunner()
    coherent, independent = tmp_path / "coherent.mp4", tmp_path / "independent.mp4"
    for out, extra in ((coherent, []), (independent, ["--independent"])):
        result = runner.invoke(cli, ["transfer", str(style), str(path), "-o", str(out), *common,
                                     *extra])  # fmt: skip
        assert result.exit_code == 0, result.output
    with_coherence = video_warp_error(coherent, path)
    without = video_warp_error(independent, path)
    assert with_coherence.output_mean <= 0.5 * without.output_mean
    assert with_coherence.output_mean <= 3 * with_coherence.reference_mean
    style_look = load_image(style).reshape(-1, 3).mean(axis=0)
    clip_look = frames.reshape(-1, 3).mean(axis=0)
    for _, frame in read_frames(coherent):
        look = frame.reshape(-1, 3).mean(axis=0)
        assert np.linalg.norm(look - style_look) < np.linalg.norm(look - clip_look)
