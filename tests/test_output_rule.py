"""One rule for every file the tool writes, tried once per writer.

Never replace an existing output without ``--overwrite``; never write over an
input of the run, even with it; ``--overwrite`` on a directory replaces only
what the tool made there (its marker file says what). Every refusal is one
line, before any frame or analogy is computed. Numeric options are finite and
in range, and the directories the tool creates follow the umask.
"""

import json
import os

import cv2
import numpy as np
import pytest
from cli_checks import assert_one_error, hidden_files
from click.testing import CliRunner
from fault_clips import analogy, make_clip, transfer, write_pair

import diva_numba.run.analogy_files as analogy_io
import diva_numba.run.frame_loop as frame_loop
from diva_numba import TransferParams
from diva_numba.cli import cli
from diva_numba.cli.bench_command import bench
from diva_numba.outputs import MARKER, check_target, made_here

# --- the primitive -----------------------------------------------------------------------------


def test_overwrite_replaces_a_directory_only_when_the_tool_made_all_of_it(tmp_path):
    made = tmp_path / "made"
    made.mkdir()
    (made / "A_prime.png").write_bytes(b"old")
    (made / MARKER).write_text(json.dumps({"files": ["A_prime.png"]}))
    check_target(made, overwrite=True, directory=True)
    (made / "notes.txt").write_text("mine")
    with pytest.raises(Exception, match="did not write.*notes.txt"):
        check_target(made, overwrite=True, directory=True)
    assert made_here(made) == {"A_prime.png"}


def test_a_kept_directory_may_exist_but_its_files_follow_the_rule(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    (folder / "holiday.jpg").write_bytes(b"photo")
    check_target(folder, overwrite=False, directory=True, members=["000000.png"])
    (folder / "000000.png").write_bytes(b"someone's")
    with pytest.raises(Exception, match="pass --overwrite"):
        check_target(folder, overwrite=False, directory=True, members=["000000.png"])
    with pytest.raises(Exception, match="did not write"):
        check_target(folder, overwrite=True, directory=True, members=["000000.png"])


# --- transfer: --keep-frames, --preview, --work-dir --------------------------------------------


@pytest.fixture
def run(tmp_path, monkeypatch):
    """A clip, its style image, and the frame loop forbidden (checks come first)."""
    clip, style = make_clip(tmp_path)
    computed = []
    real_analogy = frame_loop.analogy

    def counting(*args, **kwargs):
        computed.append(1)
        return real_analogy(*args, **kwargs)

    monkeypatch.setattr(frame_loop, "analogy", counting)
    return clip, style, computed


def test_keep_frames_never_writes_over_an_input_even_with_overwrite(run, tmp_path, tiny_model):
    clip, style, computed = run
    folder = tmp_path / "keep"
    folder.mkdir()
    inside = folder / "000000.png"
    os.replace(style, inside)
    original = inside.read_bytes()
    for extra in ([], ["--overwrite"]):
        args = [str(inside), str(clip), "-o", str(tmp_path / "o.mp4"), "--keep-frames", str(folder)]
        line = assert_one_error(transfer([*args, *extra], tiny_model), 5)
        assert "input of this run" in line
    assert inside.read_bytes() == original and computed == []
    assert not (tmp_path / "o.mp4.work").exists()


def test_keep_frames_replaces_only_frames_it_kept_before(run, tmp_path, tiny_model):
    clip, style, computed = run
    folder = tmp_path / "keep"
    folder.mkdir()
    (folder / "000001.png").write_bytes(b"a frame of someone else's")
    args = [str(style), str(clip), "-o", str(tmp_path / "o.mp4"), "--keep-frames", str(folder),
            "--end", "2"]  # fmt: skip
    assert "pass --overwrite" in assert_one_error(transfer(args, tiny_model), 5)
    assert "did not write" in assert_one_error(transfer([*args, "--overwrite"], tiny_model), 5)
    assert computed == []
    (folder / "000001.png").unlink()
    (folder / "notes.txt").write_text("kept")
    assert transfer(args, tiny_model).exit_code == 0
    assert made_here(folder) == {"000000.png", "000001.png"}
    frame = cv2.imread(str(folder / "000001.png"))
    assert frame.shape == (48, 64, 3)
    (tmp_path / "o.mp4").unlink()
    assert "pass --overwrite" in assert_one_error(transfer(args, tiny_model), 5)
    assert transfer([*args, "--overwrite"], tiny_model).exit_code == 0
    assert (folder / "notes.txt").read_text() == "kept" and hidden_files(folder) == [MARKER]


def test_overwrite_leaves_nothing_of_an_earlier_run_behind(run, tmp_path, tiny_model):
    clip, style, _ = run
    out, folder = tmp_path / "j.mp4", tmp_path / "kf"
    preview = tmp_path / "j.mp4.preview.png"
    args = [str(style), str(clip), "-o", str(out), "--keep-frames", str(folder)]
    assert transfer([*args, "--end", "4", "--preview"], tiny_model).exit_code == 0
    (folder / "000009.png").write_bytes(b"a frame the tool did not keep")
    assert preview.exists() and made_here(folder) == {f"{i:06d}.png" for i in range(4)}
    result = transfer([*args, "--end", "2", "--overwrite"], tiny_model)
    assert result.exit_code == 0, result.output
    # This run's frames, and a file the tool never wrote; no earlier frame, no preview.
    assert sorted(p.name for p in folder.iterdir()) == [MARKER, "000000.png", "000001.png",
                                                        "000009.png"]  # fmt: skip
    assert made_here(folder) == {"000000.png", "000001.png"}
    assert not preview.exists()
    # A preview that is an input of the run is never removed.
    os.replace(style, preview)
    args = [str(preview), str(clip), "-o", str(out), "--end", "2", "--overwrite"]
    assert transfer(args, tiny_model).exit_code == 0 and preview.exists()


def test_keep_frames_in_an_unusable_place_fails_before_any_frame(run, tmp_path, tiny_model):
    clip, style, computed = run
    (tmp_path / "a-file").write_text("not a directory")
    folder = tmp_path / "a-file" / "frames"
    args = [str(style), str(clip), "-o", str(tmp_path / "o.mp4"), "--keep-frames", str(folder)]
    line = assert_one_error(transfer(args, tiny_model), 5)
    assert "a-file is not a directory" in line
    assert computed == [] and not (tmp_path / "o.mp4").exists()


def test_preview_follows_the_rule(run, tmp_path, tiny_model):
    clip, style, computed = run
    out = tmp_path / "o.mp4"
    preview = tmp_path / "o.mp4.preview.png"
    preview.write_bytes(b"an earlier preview")
    args = [str(style), str(clip), "-o", str(out), "--preview", "--end", "2"]
    line = assert_one_error(transfer(args, tiny_model), 5)
    assert "o.mp4.preview.png exists" in line and computed == []
    assert preview.read_bytes() == b"an earlier preview"
    assert transfer([*args, "--overwrite"], tiny_model).exit_code == 0
    assert cv2.imread(str(preview)).shape == (2 * 48, 2 * 64, 3)
    # An input named like the preview is never written over.
    os.replace(style, preview)
    args = [str(preview), str(clip), "-o", str(out), "--preview", "--overwrite"]
    assert "input of this run" in assert_one_error(transfer(args, tiny_model), 5)


@pytest.mark.parametrize(
    "layout",
    ["work dir is the output", "output inside the work dir", "keep-frames is the work dir"],
)
def test_work_dir_conflicts_are_found_before_frame_0(layout, run, tmp_path, tiny_model):
    clip, style, computed = run
    out, work = tmp_path / "o.mp4", tmp_path / "o.mp4"
    extra = []
    if layout == "output inside the work dir":
        work = tmp_path / "scratch"
        out = work / "o.mp4"
        work.mkdir()
    elif layout == "keep-frames is the work dir":
        work = tmp_path / "scratch"
        extra = ["--keep-frames", str(work)]
    args = [str(style), str(clip), "-o", str(out), "--work-dir", str(work), *extra]
    line = assert_one_error(transfer(args, tiny_model), 5)
    assert "overlap" in line and "--work-dir" in line
    assert computed == []


def test_a_work_dir_of_someone_elses_files_is_left_alone(run, tmp_path, tiny_model):
    clip, style, computed = run
    folder = tmp_path / "documents"
    folder.mkdir()
    (folder / "letter.txt").write_text("dear")
    args = [str(style), str(clip), "-o", str(tmp_path / "o.mp4"), "--work-dir", str(folder)]
    for extra in ([], ["--resume"]):
        line = assert_one_error(transfer([*args, *extra], tiny_model), 5)
        assert "not diva-numba's" in line
    assert sorted(p.name for p in folder.iterdir()) == ["letter.txt"] and computed == []


# --- analogy -o DIR ----------------------------------------------------------------------------


@pytest.fixture
def pair(tmp_path, rng, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return write_pair(tmp_path, rng)


def test_analogy_overwrite_never_deletes_files_it_did_not_write(pair, tmp_path, tiny_model,
                                                                monkeypatch):  # fmt: skip
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "thesis.odt").write_text("three years")
    line = assert_one_error(analogy([*pair, "-o", str(folder), "--overwrite"], tiny_model), 5)
    assert "did not write" in line and "thesis.odt" in line
    assert (folder / "thesis.odt").read_text() == "three years"
    # Nor the directory the user stands in.
    made = tmp_path / "made"
    assert analogy([*pair, "-o", str(made)], tiny_model).exit_code == 0
    (made / "here").mkdir()
    monkeypatch.chdir(made / "here")
    line = assert_one_error(analogy([*pair, "-o", str(made), "--overwrite"], tiny_model), 5)
    assert "current directory" in line or "did not write" in line
    assert (made / "here").is_dir()


def test_analogy_overwrite_replaces_its_own_output(pair, tmp_path, tiny_model):
    made = tmp_path / "made"
    assert analogy([*pair, "-o", str(made)], tiny_model).exit_code == 0
    assert {"A_prime.png", "B.png", "nnf_ab.npy", "nnf_ba.npy"} <= made_here(made)
    assert "pass --overwrite" in assert_one_error(analogy([*pair, "-o", str(made)], tiny_model), 5)
    assert analogy([*pair, "-o", str(made), "--overwrite"], tiny_model).exit_code == 0


def test_analogy_output_directory_follows_the_umask(pair, tmp_path, tiny_model):
    previous = os.umask(0o022)
    try:
        assert analogy([*pair, "-o", str(tmp_path / "made")], tiny_model).exit_code == 0
    finally:
        os.umask(previous)
    assert (tmp_path / "made").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "made" / "A_prime.png").stat().st_mode & 0o777 == 0o644


@pytest.mark.slow
def test_analogy_of_a_large_image_is_written_at_its_own_size(tmp_path, rng, tiny_model,
                                                             monkeypatch):  # fmt: skip
    """Decoded in full although above the size that is decoded reduced for the analogy."""
    a = cv2.GaussianBlur(rng.integers(0, 255, (2400, 3600, 3)).astype(np.uint8), (0, 0), 3)
    cv2.imwrite(str(tmp_path / "a.png"), a)
    cv2.imwrite(str(tmp_path / "bp.png"), a[:40, :40])
    captured = {}

    def write(output, result, **kwargs):
        captured["shape"] = result.a_prime.shape

    monkeypatch.setattr(analogy_io, "write_analogy", write)
    args = [str(tmp_path / "a.png"), str(tmp_path / "bp.png"), "-o", str(tmp_path / "made"),
            "--work-size", "64"]  # fmt: skip
    assert analogy(args, tiny_model).exit_code == 0
    assert captured["shape"] == (2400, 3600, 3)


# --- bench --json ------------------------------------------------------------------------------


def test_bench_json_is_not_replaced_without_overwrite(tmp_path, monkeypatch):
    import diva_numba.cli.bench_command as cli_bench

    def no_timing(*args, **kwargs):
        raise AssertionError("timed before the output was checked")

    monkeypatch.setattr(cli_bench, "run_benchmarks", no_timing)
    report = tmp_path / "report.json"
    report.write_text('{"precious": true}')
    args = ["--device", "cpu", "--size", "small", "--json", str(report)]
    result = CliRunner().invoke(bench, args)
    assert "pass --overwrite" in assert_one_error(result, 5)
    assert report.read_text() == '{"precious": true}'


# --- numeric options ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--mask-feather", "nan"),
        ("--mask-feather", "inf"),
        ("--temporal-weight", "inf"),
        ("--temporal-weight", "nan"),
        ("--temporal-weight", "1e30"),
        ("--crf", "nan"),
        ("--mask-feather", "1e999"),
        ("--anchor-coverage", "nan"),
        ("--temporal-loss-weight", "inf"),
    ],
)
def test_numeric_options_must_be_finite_and_in_range(option, value, run, tmp_path, tiny_model):
    clip, style, computed = run
    args = [str(style), str(clip), "-o", str(tmp_path / "o.mp4"), option, value]
    line = assert_one_error(transfer(args, tiny_model), 2)
    assert option in line and computed == []


def test_every_float_option_of_every_command_refuses_non_finite_numbers():
    import click

    from diva_numba.cli.common import FiniteFloat

    def float_options(command, path):
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                yield from float_options(sub, [*path, name])
            return
        for param in command.params:
            if isinstance(param.type, click.types.FloatParamType):
                yield " ".join(path), param.name, param.type

    found = list(float_options(cli, []))
    assert found  # the walk reached the commands
    assert [item for item in found if not isinstance(item[2], FiniteFloat)] == []


def test_analogy_ratio_must_be_finite(pair, tmp_path, tiny_model):
    line = assert_one_error(analogy([*pair, "-o", "made", "--ratio", "nan"], tiny_model), 2)
    assert "--ratio" in line


@pytest.mark.parametrize("name", ["mask_feather", "temporal_weight", "crf"])
def test_transfer_params_refuse_non_finite_numbers(name):
    with pytest.raises(ValueError, match=name):
        TransferParams(**{name: float("nan")})
    with pytest.raises(ValueError, match=name):
        TransferParams(**{name: float("inf")})


def test_help_of_every_command_still_renders():
    for command in (["transfer"], ["analogy"], ["bench"]):
        result = CliRunner().invoke(cli, [*command, "--help"])
        assert result.exit_code == 0 and "--overwrite" in result.output
