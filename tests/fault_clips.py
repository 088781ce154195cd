"""A small clip and a fast transfer command shared by the fault tests."""

from fractions import Fraction

import cv2
import numpy as np
from click.testing import CliRunner
from clips import pan_frames, write_clip

from diva_numba.cli import cli

FAST = ["--iters", "2", "--lbfgs-iters", "2"]
FAST_VIDEO = [*FAST, "--guided-iters", "1", "--guided-lbfgs-iters", "1"]
FRAMES = 6


def make_clip(tmp_path):
    """A 6-frame 64x48 pan with audio, and a style image for it: ``(clip, style)``."""
    frames = pan_frames(FRAMES, width=64, height=48)
    path = tmp_path / "clip.mp4"
    write_clip(path, frames, fps=Fraction(25), audio_seconds=0.3)
    style = tmp_path / "style.png"
    cv2.imwrite(str(style), cv2.applyColorMap(frames[0][:, :, 1], cv2.COLORMAP_JET))
    return path, style


def transfer(args, model, **kwargs):
    return CliRunner().invoke(
        cli, ["transfer", *args, "--model", str(model), *FAST_VIDEO], **kwargs
    )


def write_pair(tmp_path, rng):
    a = cv2.GaussianBlur(rng.integers(0, 255, (48, 64, 3)).astype(np.uint8), (0, 0), 2)
    bp = cv2.GaussianBlur(rng.integers(0, 255, (40, 40, 3)).astype(np.uint8), (0, 0), 2)
    cv2.imwrite(str(tmp_path / "a.png"), a)
    cv2.imwrite(str(tmp_path / "bp.png"), bp)
    return [str(tmp_path / "a.png"), str(tmp_path / "bp.png")]


def analogy(args, model, **kwargs):
    return CliRunner().invoke(cli, ["analogy", *args, "--model", str(model), *FAST], **kwargs)
