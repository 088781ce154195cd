"""Faults a long run meets, continued: a full disk, signals, damaged work directories.

Like tests/test_cli_faults.py: the real command line on a tiny random-weight model,
the exit status, one `Error:` line with its advice, nothing half-written.
"""

import errno
import os
import resource
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
from cli_checks import assert_one_error, hidden_files
from click.testing import CliRunner
from clips import pan_frames, write_clip
from fault_clips import FAST_VIDEO, FRAMES, analogy, make_clip, transfer, write_pair

import diva_numba.run.analogy_files as analogy_io
import diva_numba.run.frame_loop as frame_loop
import diva_numba.run.transfer as transfer_module
from diva_numba.cli import cli
from diva_numba.images import load_image
from diva_numba.video import probe_video

# --- a full disk -------------------------------------------------------------------------------


class FileSizeLimit:
    """Make every write past ``limit`` bytes fail as a full disk does (EFBIG, not ENOSPC)."""

    def __init__(self, limit: int):
        self.limit = limit

    def __enter__(self):
        self.handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        self.soft, self.hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (self.limit, self.hard))

    def __exit__(self, *exc_info):
        resource.setrlimit(resource.RLIMIT_FSIZE, (self.soft, self.hard))
        signal.signal(signal.SIGXFSZ, self.handler)


linux_only = pytest.mark.skipif(sys.platform != "linux", reason="uses RLIMIT_FSIZE and SIGXFSZ")


@linux_only
def test_full_disk_while_saving_frames_then_resume(clip, tmp_path, tiny_model, monkeypatch):
    path, style = clip
    whole = tmp_path / "whole"
    assert transfer([str(style), str(path), "-o", str(tmp_path / "a.mp4"), "--keep-frames",
                     str(whole)], tiny_model).exit_code == 0  # fmt: skip
    largest_frame = max(p.stat().st_size for p in whole.iterdir())
    # Frames fit, the per-frame state (two raw frames and more) does not.
    limit = largest_frame + 1024
    assert 2 * 64 * 48 * 3 > limit

    real_stylise = transfer_module.stylise_frames

    def stylise_on_a_small_disk(*args, **kwargs):
        with FileSizeLimit(limit):
            return real_stylise(*args, **kwargs)

    monkeypatch.setattr(transfer_module, "stylise_frames", stylise_on_a_small_disk)
    out = tmp_path / "out.mp4"
    result = transfer([str(style), str(path), "-o", str(out)], tiny_model)
    line = assert_one_error(result, 5)
    assert "cannot write" in line and ".npz" in line and "--resume" in line
    work = tmp_path / "out.mp4.work"
    assert not out.exists() and hidden_files(work) == [] and hidden_files(tmp_path) == []

    monkeypatch.setattr(transfer_module, "stylise_frames", real_stylise)
    resumed = tmp_path / "resumed"
    result = transfer([str(style), str(path), "-o", str(out), "--resume", "--keep-frames",
                       str(resumed)], tiny_model)  # fmt: skip
    assert result.exit_code == 0, result.output
    for index in range(FRAMES):
        name = f"{index:06d}.png"
        np.testing.assert_array_equal(load_image(resumed / name), load_image(whole / name))


def test_no_space_left_is_called_a_full_disk(clip, tmp_path, tiny_model, monkeypatch):
    path, style = clip

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", no_space)
    result = transfer([str(style), str(path), "-o", str(tmp_path / "out.mp4")], tiny_model)
    line = assert_one_error(result, 5)
    assert "disk full" in line and "out.mp4.work" in line and "--resume" in line


@linux_only
def test_full_disk_while_encoding_keeps_the_frames(clip, tmp_path, tiny_model, monkeypatch):
    path, style = clip
    real_encode = transfer_module.encode_video

    def encode_on_a_full_disk(*args, **kwargs):
        with FileSizeLimit(2048):
            return real_encode(*args, **kwargs)

    monkeypatch.setattr(transfer_module, "encode_video", encode_on_a_full_disk)
    out = tmp_path / "out.mp4"
    result = transfer([str(style), str(path), "-o", str(out)], tiny_model)
    line = assert_one_error(result, 5)
    assert "cannot write" in line and "--resume" in line
    assert not out.exists() and hidden_files(tmp_path) == []
    work = tmp_path / "out.mp4.work"
    assert len(list((work / "frames").iterdir())) == FRAMES

    monkeypatch.setattr(transfer_module, "encode_video", real_encode)
    analogies = []
    monkeypatch.setattr(frame_loop, "analogy", lambda *a, **k: analogies.append(1))
    result = transfer([str(style), str(path), "-o", str(out), "--resume"], tiny_model)
    assert result.exit_code == 0, result.output
    assert analogies == []  # only the encoding was left to do
    assert probe_video(out).frame_count == FRAMES and not work.exists()


def test_unwritable_output_directory_is_refused_before_any_work(clip, tmp_path, tiny_model,
                                                                monkeypatch):  # fmt: skip
    path, style = clip
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda p, mode: False if p == locked else real_access(p, mode)
    )
    started = []
    monkeypatch.setattr(transfer_module, "stylise_frames", lambda *a, **k: started.append(1))
    result = transfer([str(style), str(path), "-o", str(locked / "out.mp4"), "--work-dir",
                       str(tmp_path / "work")], tiny_model)  # fmt: skip
    line = assert_one_error(result, 5)
    assert "not writable" in line and started == []


@pytest.fixture
def clip(tmp_path):
    return make_clip(tmp_path)


# --- signals -----------------------------------------------------------------------------------

# Restores Python's Ctrl-C handler even when the test runner was started with SIGINT
# ignored (as background jobs of non-interactive shells are).
CHILD = (
    "import signal, sys, runpy; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "sys.argv = ['diva-numba', *sys.argv[1:]]; runpy.run_module('diva_numba', run_name='__main__')"
)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_stops_within_seconds_and_resume_finishes(signum, tmp_path, tiny_model):
    count = 40
    frames = pan_frames(count, width=64, height=48)
    path, style, out = tmp_path / "clip.mp4", tmp_path / "style.png", tmp_path / "out.mp4"
    write_clip(path, frames, fps=25)
    cv2.imwrite(str(style), cv2.applyColorMap(frames[0][:, :, 1], cv2.COLORMAP_JET))
    args = [str(style), str(path), "-o", str(out), "--model", str(tiny_model), *FAST_VIDEO]
    process = subprocess.Popen(
        [sys.executable, "-c", CHILD, "transfer", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    state = tmp_path / "out.mp4.work" / "state.npz"
    deadline = time.monotonic() + 120
    while not state.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be interrupted"
    process.send_signal(signum)
    sent = time.monotonic()
    _, stderr = process.communicate(timeout=30)
    assert time.monotonic() - sent < 10
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert "--resume" in stderr and f"of {count} frames" in stderr
    assert not out.exists() and hidden_files(tmp_path) == []

    result = CliRunner().invoke(cli, ["transfer", *args, "--resume"])
    assert result.exit_code == 0, result.output
    assert "resuming after" in result.output
    assert probe_video(out).frame_count == count


# --- damaged or foreign work directories --------------------------------------------------------


@pytest.fixture
def interrupted(clip, tmp_path, tiny_model, monkeypatch):
    """A run stopped after 3 of 6 frames, with its work directory."""
    path, style = clip
    # Every frame, whatever its kind, is synthesised once.
    real_synthesize = frame_loop.synthesize
    calls = []

    def dying(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real_synthesize(*args, **kwargs)

    monkeypatch.setattr(frame_loop, "synthesize", dying)
    out = tmp_path / "out.mp4"
    assert transfer([str(style), str(path), "-o", str(out)], tiny_model).exit_code == 130
    monkeypatch.setattr(frame_loop, "synthesize", real_synthesize)
    return path, style, out, tmp_path / "out.mp4.work"


def damage_style(path, style, out, work):
    image = load_image(style)
    cv2.imwrite(str(style), cv2.cvtColor(255 - image, cv2.COLOR_RGB2BGR))
    return "different run", "style_sha256"


def damage_manifest(path, style, out, work):
    (work / "manifest.json").write_text("{ not json")
    return "damaged", "manifest.json"


def damage_state(path, style, out, work):
    state = work / "state.npz"
    state.write_bytes(state.read_bytes()[:100])
    return "damaged", "state.npz"


def lose_frames(path, style, out, work):
    (work / "frames" / "000001.png").unlink()
    return "missing finished frames", "remove it"


def damage_latent_b(path, style, out, work):
    latent = work / "latent_b.npz"
    latent.write_bytes(latent.read_bytes()[:100])
    return "damaged", "latent_b.npz"


def lose_latent_b(path, style, out, work):
    # Frame 0 saved B's latent features before its state; resuming without them would
    # make the later frames from a new B, unlike an uninterrupted run.
    (work / "latent_b.npz").unlink()
    return "missing", "latent_b.npz"


@pytest.mark.parametrize(
    "damage",
    [damage_style, damage_manifest, damage_state, lose_frames, damage_latent_b, lose_latent_b],
)
def test_damaged_or_foreign_work_directory_is_refused(damage, interrupted, tiny_model):
    path, style, out, work = interrupted
    expected = damage(path, style, out, work)
    result = transfer([str(style), str(path), "-o", str(out), "--resume"], tiny_model)
    line = assert_one_error(result, 2)
    assert all(text in line for text in expected), line
    assert str(work) in line and not out.exists()


def test_different_size_is_refused_and_resume_without_changes_works(interrupted, tiny_model):
    path, style, out, work = interrupted
    result = transfer([str(style), str(path), "-o", str(out), "--resume", "--size", "48"],
                      tiny_model)  # fmt: skip
    line = assert_one_error(result, 2)
    assert "size" in line and "params" in line
    result = transfer([str(style), str(path), "-o", str(out), "--resume"], tiny_model)
    assert result.exit_code == 0, result.output
    assert "resuming after 3 of 6 frames" in result.output


def test_interrupt_while_encoding_leaves_no_partial_video(clip, tmp_path, tiny_model,
                                                          monkeypatch):  # fmt: skip
    path, style = clip

    class InterruptedWriter(transfer_module.VideoWriter):
        def write(self, frame):
            if self.frames_written == 3:
                raise KeyboardInterrupt
            super().write(frame)

    monkeypatch.setattr(transfer_module, "VideoWriter", InterruptedWriter)
    out = tmp_path / "out.mp4"
    result = transfer([str(style), str(path), "-o", str(out)], tiny_model)
    line = assert_one_error(result, 130)
    assert f"interrupted after {FRAMES} of {FRAMES} frames" in line and "--resume" in line
    assert not out.exists() and hidden_files(tmp_path) == []

    monkeypatch.undo()
    result = transfer([str(style), str(path), "-o", str(out), "--resume"], tiny_model)
    assert result.exit_code == 0, result.output
    assert f"resuming after {FRAMES} of {FRAMES} frames" in result.output
    assert probe_video(out).frame_count == FRAMES


@linux_only
def test_full_disk_while_writing_an_analogy_leaves_nothing(tmp_path, rng, tiny_model,
                                                           monkeypatch):  # fmt: skip
    real_write = analogy_io.write_analogy

    def write_on_a_full_disk(*args, **kwargs):
        with FileSizeLimit(1024):
            return real_write(*args, **kwargs)

    monkeypatch.setattr(analogy_io, "write_analogy", write_on_a_full_disk)
    pair = write_pair(tmp_path, rng)
    out = tmp_path / "out"
    line = assert_one_error(analogy([*pair, "-o", str(out), "--device", "cpu"], tiny_model), 5)
    assert "cannot write" in line and "A_prime.png" in line
    assert not out.exists() and hidden_files(tmp_path) == []


def test_full_disk_while_saving_fields_leaves_nothing(tmp_path, rng, tiny_model, monkeypatch):
    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(analogy_io.np, "save", no_space)
    out = tmp_path / "out"
    result = analogy([*write_pair(tmp_path, rng), "-o", str(out), "--device", "cpu"], tiny_model)
    line = assert_one_error(result, 5)
    assert f"cannot write {out}: disk full" in line
    assert not out.exists() and hidden_files(tmp_path) == []
