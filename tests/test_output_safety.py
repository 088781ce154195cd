"""Outputs never destroy inputs, and everything about them is checked before any work.

Each case is tried through the library (:func:`diva_numba.transfer_video`,
:func:`diva_numba.analogy_files`) and through the command line, and each must
fail before the first frame (or the analogy) is computed.
"""

import os
import re
import shutil
from collections import namedtuple
from fractions import Fraction

import cv2
import pytest
from cli_checks import assert_one_error
from click.testing import CliRunner
from clips import pan_frames, write_clip

import diva_numba.outputs as outputs
import diva_numba.run.analogy_files as analogy_io
import diva_numba.run.frame_loop as frame_loop
from diva_numba import OutputError, analogy_files, transfer_video
from diva_numba.cli import cli

FAST = ["--iters", "1", "--lbfgs-iters", "0", "--guided-iters", "1", "--guided-lbfgs-iters", "0"]

Case = namedtuple("Case", "clip style original")


@pytest.fixture
def case(tmp_path, monkeypatch):
    """A clip and a style image, in the current directory, with the analogy forbidden."""
    frames = pan_frames(3, width=64, height=48)
    clip = tmp_path / "clip.mp4"
    write_clip(clip, frames, fps=Fraction(25), audio_seconds=0.2)
    style = tmp_path / "style.png"
    cv2.imwrite(str(style), cv2.applyColorMap(frames[0][:, :, 1], cv2.COLORMAP_JET))
    monkeypatch.chdir(tmp_path)

    def no_work(*args, **kwargs):
        raise AssertionError("a frame was processed before the output was checked")

    monkeypatch.setattr(frame_loop, "analogy", no_work)
    monkeypatch.setattr(analogy_io, "analogy", no_work)
    return Case(clip, style, clip.read_bytes())


def transfer_cli(args, model):
    return CliRunner().invoke(cli, ["transfer", *args, "--model", str(model), *FAST])


def spellings(case, tmp_path):
    """The clip itself, named four other ways."""
    link = tmp_path / "link.mp4"
    link.symlink_to(case.clip)
    hard = tmp_path / "hard.mp4"
    os.link(case.clip, hard)
    (tmp_path / "sub").mkdir()
    return {
        "relative": "./clip.mp4",
        "dotted": "sub/../clip.mp4",
        "symlink": str(link),
        "hard link": str(hard),
    }


@pytest.mark.parametrize("spelling", ["relative", "dotted", "symlink", "hard link"])
def test_output_that_is_the_input_clip_is_refused_even_with_overwrite(spelling, case, tmp_path,
                                                                       tiny_model):  # fmt: skip
    output = spellings(case, tmp_path)[spelling]
    result = transfer_cli(["style.png", "clip.mp4", "-o", output, "--overwrite"], tiny_model)
    line = assert_one_error(result, 5)
    assert "is an input of this run" in line
    assert case.clip.read_bytes() == case.original
    with pytest.raises(OutputError, match="is an input of this run"):
        transfer_video(case.style, case.clip, output, device="cpu", model=tiny_model,
                       overwrite=True)  # fmt: skip
    assert case.clip.read_bytes() == case.original


def test_output_that_is_the_style_or_the_model_is_refused(case, tmp_path, tiny_model):
    copied_model = tmp_path / "model.mp4"  # a model file may have any name
    shutil.copyfile(tiny_model, copied_model)
    for output, model in (("style.png", tiny_model), (str(copied_model), copied_model)):
        result = transfer_cli(["style.png", "clip.mp4", "-o", output, "--overwrite"], model)
        assert "is an input of this run" in assert_one_error(result, 5)
    assert copied_model.read_bytes() == tiny_model.read_bytes()


def test_work_directory_may_not_be_an_input(case, tiny_model):
    result = transfer_cli(["style.png", "clip.mp4", "-o", "out.mp4", "--work-dir", "."],
                          tiny_model)  # fmt: skip
    assert "is an input of this run" in assert_one_error(result, 5)
    assert case.clip.read_bytes() == case.original


@pytest.mark.parametrize(
    ("output", "message"),
    [
        ("out.avi", "cannot write '.avi' videos"),
        ("out.png", "cannot write '.png' videos"),
        ("out", "cannot write 'no suffix' videos"),
        ("missing/out.mp4", "directory missing does not exist"),
    ],
)
def test_unusable_output_fails_before_any_frame(output, message, case, tiny_model):
    line = assert_one_error(transfer_cli(["style.png", "clip.mp4", "-o", output], tiny_model), 5)
    assert message in line
    with pytest.raises(OutputError, match=message):
        transfer_video(case.style, case.clip, output, device="cpu", model=tiny_model)
    assert sorted(os.listdir()) == ["clip.mp4", "style.png"]


def test_unwritable_output_directory_fails_before_any_frame(case, tiny_model, monkeypatch):
    # CI runs as root, which may write anywhere; the check itself is os.access.
    real_access = os.access
    monkeypatch.setattr(
        outputs.os, "access", lambda path, mode: mode != os.W_OK and real_access(path, mode)
    )
    line = assert_one_error(transfer_cli(["style.png", "clip.mp4", "-o", "o.mp4"], tiny_model), 5)
    assert "is not writable" in line


def test_too_little_space_for_the_work_directory_fails_before_any_frame(case, tiny_model,
                                                                        monkeypatch):  # fmt: skip
    usage = shutil.disk_usage(".")
    monkeypatch.setattr(outputs.shutil, "disk_usage", lambda path: usage._replace(free=10_000))
    line = assert_one_error(transfer_cli(["style.png", "clip.mp4", "-o", "o.mp4"], tiny_model), 5)
    assert "not enough free space" in line and "o.mp4.work" in line and "10 kB are free" in line
    assert sorted(os.listdir()) == ["clip.mp4", "style.png"]


def test_audio_the_container_cannot_hold_fails_before_any_frame(tmp_path, case, tiny_model):
    # FFmpeg's MOV muxer takes no Opus; the old code found out after the last frame.
    clip = tmp_path / "opus.mkv"
    write_clip(clip, pan_frames(3, width=64, height=48), fps=Fraction(25), audio_seconds=0.2,
               audio_codec="libopus")  # fmt: skip
    line = assert_one_error(transfer_cli(["style.png", str(clip), "-o", "o.mov"], tiny_model), 5)
    assert "cannot write o.mov" in line
    assert not [name for name in os.listdir() if name.startswith(".") or name.startswith("o.")]


def test_the_trial_encode_leaves_nothing_behind(case, tiny_model):
    # It runs on the real settings (here 4:4:4 in Matroska) and then the frame loop starts.
    result = transfer_cli(["style.png", "clip.mp4", "-o", "ok.mkv", "--chroma", "444"],
                          tiny_model)  # fmt: skip
    assert "a frame was processed" in repr(result.exception)
    assert not [name for name in os.listdir() if "trial" in name or name.startswith(".")]


@pytest.mark.parametrize("inside", ["image", "hard link"])
def test_analogy_output_directory_holding_an_input_is_refused(inside, case, tmp_path,
                                                              tiny_model):  # fmt: skip
    folder = tmp_path / "pair"
    folder.mkdir()
    a = folder / "a.png"
    shutil.copyfile(case.style, a)
    if inside == "hard link":
        a = tmp_path / "a.png"
        os.link(folder / "a.png", a)
    args = ["analogy", str(a), "style.png", "-o", str(folder), "--overwrite", "--model",
            str(tiny_model)]  # fmt: skip
    line = assert_one_error(CliRunner().invoke(cli, args), 5)
    assert "is an input of this run" in line
    with pytest.raises(OutputError, match="is an input of this run"):
        analogy_files(a, case.style, folder, device="cpu", model=tiny_model, overwrite=True)
    assert (folder / "a.png").read_bytes() == case.style.read_bytes()


def test_a_directory_that_refuses_new_files_is_called_unwritable(tmp_path, monkeypatch):
    # /proc exists but answers "no such file" when a file is created in it.
    def refuse(path, flags, mode=0o777):
        raise FileNotFoundError(2, "No such file or directory", str(path))

    monkeypatch.setattr(outputs.os, "open", refuse)
    with pytest.raises(OutputError, match=re.escape(f"directory {tmp_path} is not writable")):
        outputs.AtomicFile(tmp_path / "out.mp4")
    with pytest.raises(OutputError, match="directory .*missing does not exist"):
        outputs.AtomicFile(tmp_path / "missing" / "out.mp4")
