"""Texture retention and the ``metrics texture`` command, on exemplars with known answers."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from clips import write_clip

from diva_numba.cli.metrics_command import metrics
from diva_numba.errors import InputError
from diva_numba.images import save_image
from diva_numba.video.texture import mean_gradient, style_at_scale, texture_retention


def ramp(height: int, width: int, slope_x: float, slope_y: float = 0.0) -> np.ndarray:
    """A grey RGB ramp whose luma rises by ``slope_x`` a column and ``slope_y`` a row."""
    ys, xs = np.mgrid[0:height, 0:width]
    grey = 8 + slope_x * xs + slope_y * ys
    assert grey.max() <= 255
    return np.repeat(np.rint(grey)[..., None], 3, axis=2).astype(np.uint8)


def stripes(height: int, width: int, period: int, contrast: int) -> np.ndarray:
    """Vertical stripes: ``period`` columns dark, ``period`` light, ``contrast`` apart."""
    column = np.where((np.arange(width) // period) % 2 == 0, 100, 100 + contrast)
    return np.repeat(np.broadcast_to(column, (height, width))[..., None], 3, axis=2).astype(
        np.uint8
    )


def test_mean_gradient_of_a_ramp_is_its_slope():
    assert mean_gradient(ramp(20, 30, 3.0)) == pytest.approx(3.0)
    assert mean_gradient(ramp(20, 30, 3.0, 4.0)) == pytest.approx(5.0)
    assert mean_gradient(np.full((5, 5, 3), 77, np.uint8)) == 0.0


def test_colour_gradient_is_luma_weighted():
    image = np.zeros((10, 12, 3), np.uint8)
    image[..., 1] = np.arange(12, dtype=np.uint8)[None, :] * 10
    assert mean_gradient(image) == pytest.approx(0.587 * 10)


def test_half_the_contrast_keeps_half_the_texture():
    style = stripes(40, 64, 4, 80)
    result = texture_retention([stripes(40, 64, 4, 40)] * 3, style)
    assert result.retention == pytest.approx(0.5)
    assert texture_retention([style], style).retention == pytest.approx(1.0)


def test_averaged_patches_lose_texture():
    # A 3x3 box average of the stripes (what a patch vote of an incoherent field
    # does) keeps the stripes' area but not their edges' strength.
    style = stripes(40, 64, 3, 90)
    blurred = cv2.blur(style, (3, 3))
    result = texture_retention([blurred], style).retention
    assert 0.3 < result < 0.8


def test_style_is_taken_at_the_outputs_scale():
    # The style at twice the output's size: shrunk, a ramp of slope 1 has slope 2.
    style = ramp(60, 100, 1.0)
    scaled = style_at_scale(style, (30, 50))
    assert scaled.shape[:2] == (30, 50)
    output = ramp(30, 50, 1.0)
    assert texture_retention([output], style).retention == pytest.approx(0.5, abs=0.02)
    # A smaller style is never enlarged.
    assert style_at_scale(ramp(20, 30, 1.0), (60, 90)).shape[:2] == (20, 30)


def test_bad_frames():
    with pytest.raises(ValueError, match="at least one frame"):
        texture_retention([], ramp(10, 10, 1.0))
    with pytest.raises(ValueError, match="uint8"):
        texture_retention([np.zeros((8, 8), np.uint8)], ramp(10, 10, 1.0))
    assert np.isnan(texture_retention([ramp(8, 8, 1.0)], np.full((8, 8, 3), 9, np.uint8)).retention)


@pytest.fixture
def video_and_style(tmp_path):
    style = stripes(64, 96, 4, 120)
    frames = np.stack([stripes(64, 96, 4, 60)] * 4)
    clip = tmp_path / "out.mp4"
    write_clip(clip, frames, crf=4)
    save_image(tmp_path / "style.png", style)
    return clip, tmp_path / "style.png"


def test_cli_texture(video_and_style):
    clip, style = video_and_style
    result = CliRunner().invoke(metrics, ["texture", str(clip), "--style", str(style)])
    assert result.exit_code == 0, result.output
    line = [row for row in result.stdout.splitlines() if row.split()[0] == "retention"][0]
    # Half the contrast; the encode softens the stripes' edges a little.
    assert 0.4 < float(line.split()[1]) < 0.55
    report = json.loads(
        CliRunner().invoke(metrics, ["texture", str(clip), "-s", str(style), "--json"]).stdout
    )
    assert len(report["frames"]) == 4
    assert report["retention"] == pytest.approx(float(line.split()[1]), abs=1e-3)


def test_cli_warp_error_reports_texture(video_and_style):
    clip, style = video_and_style
    result = CliRunner().invoke(
        metrics, ["warp-error", str(clip), "-r", str(clip), "--style", str(style)]
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1].startswith("texture retention against")


def test_cli_bad_style_in_one_line(video_and_style, tmp_path):
    clip, _ = video_and_style
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    result = CliRunner().invoke(metrics, ["texture", str(clip), "--style", str(broken)])
    assert result.exit_code == InputError.exit_code
    assert len(result.stderr.strip().splitlines()) == 1
