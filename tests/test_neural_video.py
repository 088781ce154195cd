"""`transfer --method neural-style`: temporal targets, the frame loop, resume, options."""

import dataclasses
from fractions import Fraction

import cv2
import numpy as np
import pytest
from cli_checks import assert_one_error
from click.testing import CliRunner
from clips import pan_frames, write_clip

import diva_numba.run.neural_frame_loop as neural_video
from diva_numba.cli import cli
from diva_numba.images import load_image
from diva_numba.neural_style.params import NeuralStyleParams
from diva_numba.run.neural_frame_loop import Previous, carry_previous, moved_outputs
from diva_numba.video import probe_video
from diva_numba.video.metrics import video_warp_error

FAST = ["--method", "neural-style", "--first-iters", "4", "--later-iters", "2"]


@pytest.fixture
def clip(tmp_path):
    frames = pan_frames(5, width=64, height=48)
    path = tmp_path / "clip.mp4"
    write_clip(path, frames, fps=Fraction(25), audio_seconds=0.3)
    style = tmp_path / "style.png"
    cv2.imwrite(str(style), cv2.applyColorMap(frames[0][:, :, 1], cv2.COLORMAP_JET))
    return path, style


def run(args, tiny_model, fast=FAST):
    return CliRunner().invoke(cli, ["transfer", *args, "--model", str(tiny_model), *fast])


def test_moved_outputs_follow_the_flow_and_share_pixels_out():
    frames = pan_frames(3, width=64, height=48, step=(2, 0))
    # Outputs that move with the frames: the frames themselves, shifted in value.
    outputs = [frame.transpose(2, 0, 1).astype(np.float32) - 100.0 for frame in frames[:2]]
    history = [Previous(1, frames[1], outputs[1]), Previous(0, frames[0], outputs[0])]
    moved = moved_outputs(history, 2, frames[2], NeuralStyleParams(long_term=(2,)))
    assert len(moved) == 2
    (short, short_weight), (long, long_weight) = moved
    # The pan moves content 2 px left per frame: pixel x of frame 2 was at x + 2 in frame 1.
    inside = short_weight[8:-8, 8:-12] == 1
    assert inside.mean() > 0.9
    expected = frames[2].transpose(2, 0, 1).astype(np.float32) - 100.0
    difference = np.abs(short - expected)[:, 8:-8, 8:-12][:, inside]
    assert np.median(difference) < 1.0 and difference.mean() < 3.0
    # The pixels the previous frame shows are not held to the one before.
    assert long_weight[short_weight == 1].max() == 0
    # The right border came into the picture: no earlier frame shows it.
    assert short_weight[:, -1].max() == 0 and long_weight[:, -1].max() == 0
    # Without the long-term option only the previous frame is used.
    assert len(moved_outputs(history, 2, frames[2], NeuralStyleParams())) == 1


def test_a_later_output_is_the_previous_output_moved_at_the_output_size():
    frames = pan_frames(2, width=96, height=64, step=(2, 1))
    # An output that moves with its frame: here the frame's negative.
    delivered = 255 - frames[0]
    previous = Previous(0, frames[0][::2, ::2], np.zeros((3, 32, 48), np.float32), frames[0],
                        delivered)  # fmt: skip
    carried = carry_previous(previous, frames[1], (32, 48), NeuralStyleParams())
    expected = (255 - frames[1]).astype(np.float32)
    inside = (slice(6, -6), slice(6, -6))
    # The optimisation starts from the moved output, at the working size.
    np.testing.assert_allclose(carried.start, cv2.resize(carried.moved, (48, 32),
                               interpolation=cv2.INTER_AREA), atol=1e-3)  # fmt: skip
    assert carried.held[3:-3, 3:-3].min() > 0.99 and carried.trusted[inside].min() == 1.0
    # (the optimisation's change, the temporal loss' hold, the change the output shows)
    for change, hold, shown in ((0.0, 1.0, 0.0), (12.0, 1.0, 12.0), (12.0, 0.0, 0.0)):
        held = dataclasses.replace(carried, held=np.full((32, 48), hold, np.float32))
        output = held.deliver(carried.start + change)
        difference = output.astype(np.float32)[inside] - expected[inside]
        # Moved at the output size, not enlarged from the working size: the frame's
        # detail is kept, and where the temporal loss held the optimisation its
        # change is added; where the loss let it paint afresh but the flow at the
        # output size follows the content, the previous output stands.
        assert abs(np.median(difference) - shown) <= 1.0
        assert np.abs(difference - shown).mean() < 4.0


def test_neural_transfer_keeps_frames_timing_and_audio(clip, tmp_path, tiny_model):
    path, style = clip
    out = tmp_path / "out.mp4"
    frames_dir = tmp_path / "frames"
    result = run([str(style), str(path), "-o", str(out), "--keep-frames", str(frames_dir),
                  "--start", "1", "--preserve-colour", "--long-term", "2"], tiny_model)  # fmt: skip
    assert result.exit_code == 0, result.output
    made = probe_video(out)
    assert made.frame_count == 4 and made.fps == Fraction(25)
    assert (made.width, made.height) == (64, 48) and made.has_audio
    kept = sorted(p.name for p in frames_dir.iterdir() if not p.name.startswith("."))
    assert kept == [f"{i:06d}.png" for i in range(1, 5)]
    assert not (tmp_path / "out.mp4.work").exists()


def test_the_temporal_loss_steadies_the_frames(clip, tmp_path, tiny_model):
    path, style = clip
    errors = {}
    for name, extra in (("independent", ["--independent"]), ("temporal", [])):
        out = tmp_path / f"{name}.mp4"
        args = [str(style), str(path), "-o", str(out), "--crf", "0", "--chroma", "444", *extra]
        fast = [*FAST[:-1], "6", "--temporal-loss-weight", "2000"]
        result = run(args, tiny_model, fast)
        assert result.exit_code == 0, result.output
        errors[name] = video_warp_error(out, path).output_mean
    assert errors["temporal"] < 0.6 * errors["independent"]


def test_interrupted_run_resumes_to_the_same_frames(clip, tmp_path, tiny_model, monkeypatch):
    path, style = clip
    whole = tmp_path / "whole"
    args = ["--long-term", "2"]
    assert run([str(style), str(path), "-o", str(tmp_path / "a.mp4"), "--keep-frames",
                str(whole), *args], tiny_model).exit_code == 0  # fmt: skip

    real = neural_video.NeuralStyler.optimise
    calls = []

    def dying(self, *a, **kw):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(self, *a, **kw)

    out = tmp_path / "b.mp4"
    monkeypatch.setattr(neural_video.NeuralStyler, "optimise", dying)
    result = run([str(style), str(path), "-o", str(out), *args], tiny_model)
    assert result.exit_code == 130
    assert "--resume" in result.output and "3 of 5" in result.output
    monkeypatch.setattr(neural_video.NeuralStyler, "optimise", real)
    resumed = tmp_path / "resumed"
    result = run([str(style), str(path), "-o", str(out), "--resume", "--keep-frames",
                  str(resumed), *args], tiny_model)  # fmt: skip
    assert result.exit_code == 0, result.output
    for index in range(5):
        np.testing.assert_array_equal(
            load_image(resumed / f"{index:06d}.png"), load_image(whole / f"{index:06d}.png")
        )
    # Another method's work directory is not continued.
    monkeypatch.setattr(neural_video.NeuralStyler, "optimise", dying)
    calls.clear()
    run([str(style), str(path), "-o", str(tmp_path / "c.mp4")], tiny_model)
    result = CliRunner().invoke(cli, ["transfer", str(style), str(path), "-o",
                                      str(tmp_path / "c.mp4"), "--resume", "--model",
                                      str(tiny_model), "--iters", "1"])  # fmt: skip
    assert "different run" in assert_one_error(result, result.exit_code)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method", "neural-style", "--alpha", "high"], "--alpha applies to --method analogy"),
        (["--method", "neural-style", "--key", "3:{style}"], "--key applies to --method analogy"),
        (["--method", "neural-style", "--workers", "2"], "--workers applies to --method analogy"),
        (["--style-weight", "5"], "--style-weight applies to --method neural-style"),
        (["--long-term", "2"], "--long-term applies to --method neural-style"),
    ],
)
def test_options_of_the_other_method_are_refused(clip, tmp_path, args, message):
    path, style = clip
    args = [arg.format(style=style) for arg in args]
    out = tmp_path / "out.mp4"
    result = CliRunner().invoke(cli, ["transfer", str(style), str(path), "-o", str(out), *args])
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output
    assert not out.exists()


def test_help_says_which_method_each_option_belongs_to():
    result = CliRunner().invoke(cli, ["transfer", "--help"])
    assert result.exit_code == 0
    text = result.output
    both = text.index("Options (both methods)")
    analogy = text.index("Analogy options (--method analogy)")
    neural = text.index("Neural-style options (--method neural-style)")
    assert both < text.index("--preserve-colour") < analogy
    assert analogy < text.index("--alpha") < neural
    assert analogy < text.index("--guided-iters") < neural
    assert neural < text.index("--style-weight") and neural < text.index("--temporal-loss-weight")
    assert "--help" in text[both:analogy]


def test_a_weight_that_overflows_the_loss_is_one_error(clip, tmp_path, tiny_model):
    path, style = clip
    out = tmp_path / "out.mp4"
    fast = [*FAST, "--tv-weight", "1e308"]
    result = run([str(style), str(path), "-o", str(out), "--end", "2"], tiny_model, fast)
    assert "loss is not finite" in assert_one_error(result, 1)
    assert not out.exists()
