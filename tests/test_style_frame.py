"""The style's own frame: a painting of a frame of the clip makes that frame's photograph B."""

import shutil

import cv2
import numpy as np
import pytest
from clips import pan_frames, write_clip
from skimage import data

import diva_numba.run.frame_loop as frame_loop
from diva_numba import AnalogyParams, TransferParams, resolve_device
from diva_numba.finishing.keyframes import Keyframe
from diva_numba.image_analogy.deep_analogy import WarmStart, analogy, load_model
from diva_numba.images import save_image
from diva_numba.run.anchor_frames import AnchorParams
from diva_numba.run.planning import plan_transfer
from diva_numba.run.spec import RunSpec


def paint(image: np.ndarray) -> np.ndarray:
    """A pixel-wise painting: posterised, its colours mapped (so a copy of A's own look fails)."""
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    levels = (grey // 48) * 48 + 24
    return np.ascontiguousarray(
        cv2.applyColorMap(levels.astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
    )


def test_style_frame_is_the_keyframe_holding_the_style_image(tmp_path):
    style, other = tmp_path / "style.png", tmp_path / "other.png"
    save_image(style, paint(data.astronaut()[:64, :96]))
    save_image(other, paint(data.coffee()[:64, :96]))
    shutil.copy(style, tmp_path / "copy.png")
    spec = RunSpec.make(style, tmp_path / "clip.mp4", device="cpu",
                        keys=[Keyframe(9, other), Keyframe(4, tmp_path / "copy.png")])  # fmt: skip
    assert spec.style_frame() == 4  # by content, under any name
    assert (
        RunSpec.make(
            style, tmp_path / "c.mp4", device="cpu", keys=[Keyframe(9, other)]
        ).style_frame()
        is None
    )
    assert RunSpec.make(style, tmp_path / "c.mp4", device="cpu").style_frame() is None


@pytest.mark.model
def test_the_photograph_as_b_matches_photo_to_photo(model_path):
    """A' of a shifted view of B's photograph, with B known and with B reconstructed.

    The painting is pixel-wise, so the exact A' is the painting of A. Known, B is
    matched photo to photo; reconstructed from the painting it is not.
    """
    photo = data.astronaut()[40:200, 120:360]
    photo = cv2.resize(photo, (120, 80), interpolation=cv2.INTER_AREA)
    image_b, image_a = photo[:, :96], photo[6:, 18:114]
    image_b = np.ascontiguousarray(image_b[:74])
    image_a = np.ascontiguousarray(image_a)
    painting_b, ideal = paint(image_b), paint(image_a).astype(np.float32)
    model = load_model(model_path, resolve_device("cpu"))
    params = AnalogyParams.for_device("cpu", lbfgs_iterations=5)
    features = model.features(image_b)
    photo_as_b = WarmStart(latent_b={level: features[level] for level in (1, 2, 3, 4, 5)})
    known = analogy(model, image_a, painting_b, params=params, warm_start=photo_as_b)
    unknown = analogy(model, image_a, painting_b, params=params)
    error_known = np.abs(known.a_prime.astype(np.float32) - ideal).mean()
    error_unknown = np.abs(unknown.a_prime.astype(np.float32) - ideal).mean()
    print(f"mean |A' - ideal|: B known {error_known:.2f}, reconstructed {error_unknown:.2f}")
    assert known.b is None  # B was not reconstructed
    assert error_known < 0.7 * error_unknown


def test_the_frame_loop_gives_every_analogy_the_photograph(tmp_path, tiny_model, monkeypatch):
    frames = pan_frames(3, width=64, height=48)
    write_clip(tmp_path / "clip.mp4", frames, crf=4)
    save_image(tmp_path / "style.png", paint(frames[1]))
    params = TransferParams.for_device(
        "cpu", analogy=AnalogyParams.for_device("cpu", lbfgs_iterations=1, patchmatch_iterations=1),
        guided_lbfgs_iterations=1, anchors=AnchorParams(enabled=False),  # every frame an analogy
    )  # fmt: skip
    seen = []
    real = frame_loop.analogy

    def spy(model, image_a, image_bp, **kwargs):
        seen.append(kwargs.get("warm_start"))
        return real(model, image_a, image_bp, **kwargs)

    monkeypatch.setattr(frame_loop, "analogy", spy)
    model = load_model(tiny_model, resolve_device("cpu"))
    plan = plan_transfer(tmp_path / "style.png", tmp_path / "clip.mp4", params, start=0, end=3)
    photo = np.ascontiguousarray(plan.style)  # any picture of the style's working size
    loop = frame_loop.FrameLoop(model, params, plan, None, style_photo=photo)
    expected = model.features(photo)
    outcomes = [loop.frame(index, frame) for index, frame in enumerate(frames)]
    assert len(seen) == 3
    for warm_start in seen:
        assert sorted(warm_start.latent_b) == [1, 2, 3, 4, 5]
        for level, value in warm_start.latent_b.items():
            np.testing.assert_array_equal(np.asarray(value), np.asarray(expected[level]))
    assert all(outcome.latent_b is None for outcome in outcomes)  # nothing to save: it is known
    without = frame_loop.FrameLoop(model, params, plan, None)
    seen.clear()
    without.frame(0, frames[0])
    assert seen == [None]
