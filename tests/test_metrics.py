"""The warping error and the ``metrics warp-error`` command."""

from __future__ import annotations

import gc
import json
import weakref

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from clips import pan_frames, random_origin, write_clip
from test_flow import bilinear_reference

from diva_numba.cli.metrics_command import metrics
from diva_numba.errors import InputError
from diva_numba.video import read_frames
from diva_numba.video.flow import flow_pair, occlusion_mask
from diva_numba.video.metrics import WarpError, video_warp_error, warp_error

WIDTH, HEIGHT, COUNT = 96, 64, 8


def warp_error_reference(output: np.ndarray, reference: np.ndarray) -> list[float]:
    """Per-pair error, spelled out: flow and mask of the reference, bilinear warp of O_{t-1}."""
    errors = []
    grid_y, grid_x = np.mgrid[0 : output.shape[1], 0 : output.shape[2]]
    for t in range(1, len(output)):
        forward, backward = flow_pair(reference[t - 1], reference[t])
        reliable = occlusion_mask(forward, backward) == 0
        warped = bilinear_reference(
            output[t - 1], grid_x + backward[..., 0], grid_y + backward[..., 1]
        )
        difference = np.abs(output[t].astype(np.float64) - warped).mean(axis=2)
        errors.append(difference[reliable].mean())
    return errors


@pytest.fixture
def pan(rng):
    step = (int(rng.integers(1, 4)), int(rng.integers(-2, 3)))
    origin = random_origin(rng, width=WIDTH, height=HEIGHT, count=COUNT, step=step)
    return pan_frames(COUNT, width=WIDTH, height=HEIGHT, step=step, origin=origin)


def flicker(frames: np.ndarray, rng) -> np.ndarray:
    """Frames whose brightness jumps by 10-25% from each frame to the next."""
    signs = np.where(np.arange(len(frames)) % 2 == 0, 1.0, -1.0)
    gains = 1 + signs * rng.uniform(0.1, 0.25, size=len(frames))
    return np.clip(frames * gains[:, None, None, None], 0, 255).astype(np.uint8)


def test_matches_the_reference_computation(pan, rng):
    output = flicker(pan, rng)
    result = warp_error(output, pan)
    assert result.output.shape == result.reference.shape == result.valid_fraction.shape
    assert result.output.shape == (COUNT - 1,) and result.output.dtype == np.float64
    assert (result.width, result.height) == (WIDTH, HEIGHT)
    # cv2.remap's 1/32-pixel weights against exact bilinear weights.
    np.testing.assert_allclose(result.output, warp_error_reference(output, pan), atol=0.05)
    np.testing.assert_allclose(result.reference, warp_error_reference(pan, pan), atol=0.05)
    assert result.output_mean == pytest.approx(result.output.mean())


def test_a_steady_pan_scores_low_and_flicker_high(pan, rng):
    steady = warp_error(pan, pan)
    np.testing.assert_array_equal(steady.output, steady.reference)
    assert steady.output_mean < 2.0
    assert (steady.valid_fraction > 0.7).all()
    flickering = warp_error(flicker(pan, rng), pan)
    assert flickering.reference_mean == pytest.approx(steady.reference_mean)
    assert flickering.output_mean > 5 * steady.output_mean
    assert (flickering.output > steady.output).all()


def test_output_size_is_the_measuring_size(pan):
    small = np.stack(
        [
            cv2.resize(frame, (WIDTH // 2, HEIGHT // 2), interpolation=cv2.INTER_AREA)
            for frame in pan
        ]
    )
    result = warp_error(small, pan)
    assert (result.width, result.height) == (WIDTH // 2, HEIGHT // 2)
    # The reference is shrunk the same way, so an output equal to it scores the same.
    np.testing.assert_allclose(result.output, result.reference)
    larger = warp_error(pan, small)
    assert (larger.width, larger.height) == (WIDTH, HEIGHT)


def test_frames_are_streamed_not_collected(pan):
    alive: list[weakref.ref] = []
    dead_when_yielded: list[bool] = []

    def frames():
        for frame in pan:
            copy = frame.copy()
            gc.collect()
            # When frame k is made, frames before k - 1 must already be gone.
            dead_when_yielded.append(all(ref() is None for ref in alive[:-1]))
            alive.append(weakref.ref(copy))
            yield copy
            del copy

    warp_error(frames(), iter(list(pan)))
    assert len(dead_when_yielded) == COUNT and all(dead_when_yielded)


def test_different_lengths_and_single_frames_are_input_errors(pan):
    with pytest.raises(InputError, match="differ in frame count: the reference"):
        warp_error(pan[:-1], pan)
    with pytest.raises(InputError, match="differ in frame count: the output"):
        warp_error(pan, pan[:-1])
    with pytest.raises(InputError, match="at least 2 frames"):
        warp_error(pan[:1], pan[:1])
    with pytest.raises(ValueError, match="uint8"):
        warp_error(pan.astype(np.float32), pan)


def test_means_skip_pairs_without_reliable_pixels():
    result = WarpError(
        output=np.array([1.0, np.nan, 3.0]),
        reference=np.array([np.nan, np.nan, np.nan]),
        valid_fraction=np.array([0.9, 0.0, 0.8]),
        width=2,
        height=2,
    )
    assert result.output_mean == 2.0
    assert np.isnan(result.reference_mean)


# --- files and the command line ------------------------------------------------------------------


@pytest.fixture
def clips(tmp_path, pan, rng):
    reference, output = tmp_path / "clip.mp4", tmp_path / "out.mp4"
    write_clip(reference, pan)
    write_clip(output, flicker(pan, rng))
    return output, reference


def test_video_files(clips):
    output, reference = clips
    seen = []
    result = video_warp_error(
        output, reference, progress=lambda frames, total: seen.append(total) or frames
    )
    assert seen == [COUNT]
    assert result.output.shape == (COUNT - 1,)
    assert result.output_mean > 3 * result.reference_mean


def test_video_files_with_different_counts(tmp_path, clips, pan):
    _, reference = clips
    shorter = tmp_path / "short.mp4"
    write_clip(shorter, pan[:-2])
    with pytest.raises(InputError, match=f"has {COUNT - 2} frames"):
        video_warp_error(shorter, reference)


def test_cli_table(clips):
    output, reference = clips
    result = CliRunner().invoke(metrics, ["warp-error", str(output), "--reference", str(reference)])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("warping error of")
    assert len(lines) == 2 + (COUNT - 1) + 1
    assert lines[2].split()[0] == "0-1"
    mean_line = lines[-1].split()
    assert mean_line[0] == "mean" and float(mean_line[1]) > float(mean_line[2])


def test_cli_json(clips):
    output, reference = clips
    result = CliRunner().invoke(
        metrics,
        ["warp-error", str(output), "-r", str(reference), "--json", "--flow-preset", "fast"],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["flow_preset"] == "fast"
    assert (report["width"], report["height"]) == (WIDTH, HEIGHT)
    assert [pair["frames"] for pair in report["pairs"]] == [[t, t + 1] for t in range(COUNT - 1)]
    expected = video_warp_error(output, reference, preset="fast")
    assert report["mean"]["output"] == pytest.approx(expected.output_mean, abs=1e-5)
    assert report["mean"]["reference"] == pytest.approx(expected.reference_mean, abs=1e-5)


def test_cli_reports_bad_input_in_one_line(tmp_path, clips, pan):
    _, reference = clips
    shorter = tmp_path / "short.mp4"
    write_clip(shorter, pan[:-2])
    result = CliRunner().invoke(metrics, ["warp-error", str(shorter), "-r", str(reference)])
    assert result.exit_code == InputError.exit_code
    assert result.stdout == ""
    assert "frames" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    missing = CliRunner().invoke(metrics, ["warp-error", str(tmp_path / "nope.mp4"), "-r", "x"])
    assert missing.exit_code == 2 and "does not exist" in missing.output


def test_an_output_of_part_of_the_clip_is_measured_against_that_part(tmp_path, clips, pan):
    output, reference = clips
    part = tmp_path / "part.mp4"
    write_clip(part, pan[2:6])  # frames 2-5 of the reference
    decoded = [frame for _, frame in read_frames(reference, start=2, end=6)]
    expected = warp_error([frame for _, frame in read_frames(part)], decoded)
    found = video_warp_error(part, reference, reference_start=2)
    np.testing.assert_allclose(found.reference, expected.reference, atol=1e-6)
    np.testing.assert_allclose(found.output, expected.output, atol=1e-6)
    table = CliRunner().invoke(
        metrics, ["warp-error", str(part), "-r", str(reference), "--reference-start", "2"]
    )
    assert table.exit_code == 0, table.output
    assert [line.split()[0] for line in table.stdout.splitlines()[2:5]] == ["2-3", "3-4", "4-5"]
    report = json.loads(
        CliRunner()
        .invoke(
            metrics,
            ["warp-error", str(part), "-r", str(reference), "--reference-start", "2", "--json"],
        )  # fmt: skip
        .stdout
    )
    assert report["pairs"][0]["frames"] == [2, 3]
    with pytest.raises(InputError, match="not 4 from frame 5"):
        video_warp_error(part, reference, reference_start=5)
