"""A mask video whose white region moves: exact pass-through outside it, and its errors."""

from fractions import Fraction

import cv2
import numpy as np
import pytest
from cli_checks import assert_one_error
from click.testing import CliRunner
from clips import pan_frames, write_clip

import diva_numba.run.frame_loop as frame_loop
from diva_numba import InputError, TransferParams, transfer_video
from diva_numba.cli import cli
from diva_numba.image_analogy.deep_analogy import AnalogyParams
from diva_numba.images import load_image, save_image
from diva_numba.video import read_frames

WIDTH, HEIGHT, FRAMES = 64, 48, 6
PARAMS = TransferParams.for_device(
    "cpu",
    analogy=AnalogyParams.for_device("cpu", patchmatch_iterations=1, lbfgs_iterations=1),
    guided_patchmatch_iterations=1,
    guided_lbfgs_iterations=0,
)


def moving_box(count: int, width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    """White box a third of the frame wide, moving right by 1/16 of the width a frame."""
    masks = np.zeros((count, height, width, 3), np.uint8)
    for t in range(count):
        x0 = (t * width) // 16 + width // 8
        masks[t, height // 4 : 3 * height // 4, x0 : x0 + width // 3] = 255
    return masks


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    folder = tmp_path_factory.mktemp("masked")
    path = folder / "clip.mp4"
    write_clip(path, pan_frames(FRAMES, width=WIDTH, height=HEIGHT), fps=Fraction(24), crf=0)
    style = folder / "style.png"
    save_image(style, cv2.applyColorMap(pan_frames(1, width=96, height=96)[0],
                                        cv2.COLORMAP_OCEAN))  # fmt: skip
    mask = folder / "mask.mp4"
    write_clip(mask, moving_box(FRAMES), fps=Fraction(24), crf=0)
    return {"clip": path, "style": style, "mask": mask, "folder": folder,
            "frames": np.stack([f for _, f in read_frames(path)])}  # fmt: skip


def outside(mask_path) -> np.ndarray:
    """Where each decoded mask frame is black (what :class:`Mask` thresholds at 128)."""
    grey = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for _, f in read_frames(mask_path)]
    return np.stack(grey) < 128


def kept(folder) -> np.ndarray:
    return np.stack([load_image(folder / f"{t:06d}.png") for t in range(FRAMES)])


def test_a_moving_mask_video_passes_the_input_through_exactly_outside(clip, tmp_path,
                                                                      tiny_model):  # fmt: skip
    transfer_video(clip["style"], clip["clip"], tmp_path / "out.mp4", PARAMS, device="cpu",
                   model=tiny_model, keep_frames=tmp_path / "lib", mask=clip["mask"])  # fmt: skip
    out, frames, black = kept(tmp_path / "lib"), clip["frames"], outside(clip["mask"])
    assert black[0].mean() > 0.5 and not np.array_equal(black[0], black[-1])  # it moves
    for t in range(FRAMES):
        assert np.array_equal(out[t][black[t]], frames[t][black[t]]), t
        # Well inside the white box the style shows.
        inner = cv2.erode((~black[t]).astype(np.uint8), np.ones((19, 19), np.uint8)) > 0
        assert np.abs(out[t][inner].astype(int) - frames[t][inner]).mean() > 5, t
    # The command line, the same mask: the same frames.
    args = ["transfer", str(clip["style"]), str(clip["clip"]), "-o", str(tmp_path / "cli.mp4"),
            "--model", str(tiny_model), "--device", "cpu", "--iters", "1", "--lbfgs-iters", "1",
            "--guided-iters", "1", "--guided-lbfgs-iters", "0", "--mask", str(clip["mask"]),
            "--keep-frames", str(tmp_path / "cli")]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert np.array_equal(kept(tmp_path / "cli"), out)


def no_analogy(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a frame was processed before the mask was checked")

    monkeypatch.setattr(frame_loop, "analogy", refuse)


@pytest.mark.parametrize(
    "masks, expected",
    [
        (moving_box(FRAMES - 2), f"has {FRAMES - 2} frames, the clip {FRAMES}"),
        (moving_box(FRAMES + 3), f"has {FRAMES + 3} frames, the clip {FRAMES}"),
        (moving_box(FRAMES, width=48, height=48), "the mask is 48x48, the clip 64x48"),
    ],
    ids=["short", "long", "square"],
)
def test_a_mask_video_that_does_not_fit_is_one_error_before_any_frame(
    clip, tmp_path, tiny_model, monkeypatch, masks, expected
):
    bad = tmp_path / "bad.mp4"
    write_clip(bad, masks, fps=Fraction(24), crf=0)
    no_analogy(monkeypatch)
    with pytest.raises(InputError, match=expected):
        transfer_video(clip["style"], clip["clip"], tmp_path / "out.mp4", PARAMS, device="cpu",
                       model=tiny_model, mask=bad)  # fmt: skip
    assert not (tmp_path / "out.mp4").exists()
    args = ["transfer", str(clip["style"]), str(clip["clip"]), "-o", str(tmp_path / "cli.mp4"),
            "--model", str(tiny_model), "--device", "cpu", "--mask", str(bad),
            "--work-dir", str(tmp_path / "cli-work")]  # fmt: skip
    line = assert_one_error(CliRunner().invoke(cli, args), 2)
    assert expected in line and str(bad) in line
    assert not list((tmp_path / "cli-work" / "frames").glob("*.png"))


def test_a_mask_of_the_clips_shape_at_another_size_is_scaled(clip, tmp_path, tiny_model):
    big = tmp_path / "big.mp4"
    write_clip(big, moving_box(FRAMES, width=2 * WIDTH, height=2 * HEIGHT), fps=Fraction(24),
               crf=0)  # fmt: skip
    transfer_video(clip["style"], clip["clip"], tmp_path / "out.mp4", PARAMS, device="cpu",
                   model=tiny_model, keep_frames=tmp_path / "big", mask=big)  # fmt: skip
    out, frames = kept(tmp_path / "big"), clip["frames"]
    # Black well away from the box's edge (scaling blurs it by a pixel).
    black = np.stack([cv2.erode(b.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
                      for b in outside(clip["mask"])])  # fmt: skip
    assert all(np.array_equal(out[t][black[t]], frames[t][black[t]]) for t in range(FRAMES))


def test_after_a_mask_that_does_not_fit_the_fixed_command_runs(clip, tmp_path, tiny_model):
    bad = tmp_path / "bad.mp4"
    write_clip(bad, moving_box(FRAMES - 2), fps=Fraction(24), crf=0)
    out = tmp_path / "out.mp4"
    with pytest.raises(InputError):
        transfer_video(clip["style"], clip["clip"], out, PARAMS, device="cpu", model=tiny_model,
                       mask=bad)  # fmt: skip
    transfer_video(clip["style"], clip["clip"], out, PARAMS, device="cpu", model=tiny_model,
                   mask=clip["mask"])  # fmt: skip
    assert out.exists()


def test_the_analogy_sees_no_content_outside_the_mask(tmp_path):
    """Masked-out pixels are filled from the mask's surroundings before the analogy."""
    from diva_numba.finishing.compositing import Mask
    from diva_numba.finishing.finisher import Finisher

    box = moving_box(1)[0]
    save_image(tmp_path / "mask.png", box)
    frame = pan_frames(1, width=WIDTH, height=HEIGHT)[0].copy()
    frame[:, :4] = (255, 0, 0)  # a stripe far outside the mask, whose colour must not survive
    finisher = Finisher(None, Mask(tmp_path / "mask.png", feather=2), keep_colour=False)
    seen = finisher.analogy_input(0, frame)
    inside = box[..., 0] > 0
    np.testing.assert_array_equal(seen[inside], frame[inside])
    assert not (seen[:, :4] == (255, 0, 0)).all(axis=-1).any()
    plain = Finisher(None, None, keep_colour=False)
    assert plain.analogy_input(0, frame) is frame
