"""Painted keyframes, masks and colour preservation, on pans whose ideal output is known.

The clip is a window panning across a photograph; the "painting" is a
stylisation of the whole photograph, so the ideal output of every frame is the
same window of the painting (the painting moved along the true motion).
"""

from fractions import Fraction

import cv2
import numpy as np
import pytest
from cli_checks import assert_one_error
from click.testing import CliRunner
from clips import pan_frames, photo, write_clip

import diva_numba.run.frame_loop as frame_loop
from diva_numba import Interrupted, TransferParams, transfer_video
from diva_numba.cli import cli
from diva_numba.finishing.compositing import preserve_colour
from diva_numba.finishing.keyframes import (
    Keyframe,
    KeyframeParams,
    KeyframeSet,
    parse_key,
    propagate_all,
)
from diva_numba.image_analogy.deep_analogy import AnalogyParams
from diva_numba.images import load_image, save_image
from diva_numba.video import read_frames
from diva_numba.video.flow import compose


def lab_chroma(rgb: np.ndarray) -> np.ndarray:
    """a* and b* of an RGB uint8 image, float32 ``(H, W, 2)`` (CIE L*a*b*, D65)."""
    return cv2.cvtColor(rgb.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)[..., 1:]


WIDTH, HEIGHT, FRAMES, STEP, ORIGIN = 96, 64, 18, (4, 2), (120, 120)
PARAMS = TransferParams.for_device(
    "cpu",
    analogy=AnalogyParams.for_device("cpu", patchmatch_iterations=1, lbfgs_iterations=1),
    guided_patchmatch_iterations=1,
    guided_lbfgs_iterations=0,
)


def painting_of(image: np.ndarray) -> np.ndarray:
    """A non-trivial stylisation: edge-preserving flattening, remapped colours."""
    flat = cv2.stylization(image, sigma_s=30, sigma_r=0.3)
    mapped = cv2.applyColorMap(cv2.cvtColor(flat, cv2.COLOR_RGB2GRAY), cv2.COLORMAP_TWILIGHT)
    return cv2.addWeighted(mapped[:, :, ::-1], 0.6, flat, 0.4, 0)


def windows(image: np.ndarray) -> np.ndarray:
    return pan_frames(FRAMES, width=WIDTH, height=HEIGHT, step=STEP, origin=ORIGIN, image=image)


@pytest.fixture(scope="module")
def pan(tmp_path_factory):
    """The clip (lossless-ish H.264), its frames as decoded, the ideal outputs, two paintings."""
    folder = tmp_path_factory.mktemp("pan")
    source = photo()
    frames, ideal = windows(source), windows(painting_of(source))
    clip = folder / "pan.mp4"
    write_clip(clip, frames, fps=Fraction(24), crf=0)
    decoded = np.stack([f for _, f in read_frames(clip)])
    first, last = folder / "first.png", folder / "last.png"
    save_image(first, ideal[0])
    save_image(last, ideal[-1])
    return {"clip": clip, "frames": decoded, "ideal": ideal, "first": first, "last": last}


def lab_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean CIE76 distance of two RGB uint8 images."""
    to_lab = lambda x: cv2.cvtColor(x.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)  # noqa: E731
    return float(np.linalg.norm(to_lab(a) - to_lab(b), axis=2).mean())


def thirds(values) -> list[float]:
    third = len(values) // 3
    return [float(np.mean(values[i * third : (i + 1) * third])) for i in range(3)]


def test_key_syntax():
    assert parse_key("40:a.png") == Keyframe(40, __import__("pathlib").Path("a.png"))
    for bad in ("a.png", "x:a.png", "3:"):
        with pytest.raises(ValueError, match="FRAME:IMAGE"):
            parse_key(bad)


def test_compose_chains_two_flows():
    rng = np.random.default_rng(0)
    first = np.full((8, 9, 2), 1.0, np.float32)
    second = rng.uniform(-1, 1, (8, 9, 2)).astype(np.float32)
    composed = compose(first, second)
    # x + (1, 1), then second sampled there (inside: exact integer positions).
    np.testing.assert_allclose(composed[:-1, :-1], 1.0 + second[1:, 1:], rtol=0, atol=1e-6)


def propagate(pan, keys):
    keyset = KeyframeSet(keys, {k.index: pan["frames"][k.index] for k in keys},
                         (HEIGHT, WIDTH), KeyframeParams())  # fmt: skip
    got = {}
    propagate_all(keyset, pan["frames"], 0, 0, FRAMES, lambda i, p: got.setdefault(i, []).append(p))
    return [keyset.combine(t, got[t]) for t in range(FRAMES)]


def test_re_anchored_propagation_is_close_to_the_moved_painting(pan):
    """The keyframes' picture alone, against the painting moved along the true motion."""
    one = propagate(pan, [Keyframe(0, pan["first"])])
    two = propagate(pan, [Keyframe(0, pan["first"]), Keyframe(FRAMES - 1, pan["last"])])

    def distance(pictures):
        return thirds([lab_distance(np.clip(p, 0, 255).astype(np.uint8), pan["ideal"][t])
                       for t, (p, _) in enumerate(pictures)])  # fmt: skip

    one_thirds, two_thirds = distance(one), distance(two)
    unmoved = thirds([lab_distance(pan["ideal"][0], pan["ideal"][t]) for t in range(FRAMES)])
    print(f"keyframe picture Lab distance by third: one key {one_thirds}, two keys {two_thirds}, "
          f"unmoved keyframe {unmoved}")  # fmt: skip
    assert two_thirds[2] < 0.5 * one_thirds[2]
    assert two_thirds[0] <= one_thirds[0] + 0.25
    assert max(two_thirds) < 0.25 * min(unmoved[1:])
    # Coverage: a keyframe's own frame is covered whole; the pan uncovers new content.
    assert one[0][1].min() > 0.99 and (one[-1][1] < 0.5).mean() > 0.2


def run(pan, tmp_path, tiny_model, name, **kwargs):
    out = tmp_path / f"{name}.mp4"
    frames = tmp_path / name
    transfer_video(pan["first"], pan["clip"], out, kwargs.pop("params", PARAMS), device="cpu",
                   model=tiny_model, keep_frames=frames, **kwargs)  # fmt: skip
    return np.stack([load_image(frames / f"{t:06d}.png") for t in range(FRAMES)])


@pytest.mark.slow
def test_a_second_keyframe_brings_the_end_of_the_clip_to_its_painting(pan, tmp_path, tiny_model):
    analogies = []
    real = frame_loop.analogy

    def counting(*args, **kwargs):
        analogies.append(1)
        return real(*args, **kwargs)

    frame_loop.analogy = counting
    try:
        one = run(pan, tmp_path, tiny_model, "one", keys=[Keyframe(0, pan["first"])])
        one_analogies = len(analogies)
        two = run(pan, tmp_path, tiny_model, "two",
                  keys=[Keyframe(0, pan["first"]), Keyframe(FRAMES - 1, pan["last"])])  # fmt: skip
    finally:
        frame_loop.analogy = real
    one_thirds = thirds([lab_distance(one[t], pan["ideal"][t]) for t in range(FRAMES)])
    two_thirds = thirds([lab_distance(two[t], pan["ideal"][t]) for t in range(FRAMES)])
    inputs = thirds([lab_distance(pan["frames"][t], pan["ideal"][t]) for t in range(FRAMES)])
    print(f"output Lab distance by third: one key {one_thirds}, two keys {two_thirds}, "
          f"input frames {inputs}; analogies run {one_analogies} and "
          f"{len(analogies) - one_analogies} of {FRAMES} frames")  # fmt: skip
    assert two_thirds[2] < 0.6 * one_thirds[2]
    assert two_thirds[0] <= one_thirds[0] * 1.05 + 0.1
    assert np.array_equal(two[0], pan["ideal"][0]) or lab_distance(two[0], pan["ideal"][0]) < 0.5
    # The analogy runs only on frames with new content, and never on a keyframe's own frame.
    assert len(analogies) - one_analogies < FRAMES


def test_outside_the_mask_the_input_passes_through_exactly(pan, tmp_path, tiny_model):
    mask = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    mask[:, : WIDTH // 2] = 255
    save_image(tmp_path / "mask.png", mask)
    out = run(pan, tmp_path, tiny_model, "masked", mask=tmp_path / "mask.png")
    outside = mask[..., 0] == 0
    assert np.array_equal(out[:, outside], pan["frames"][:, outside])
    inside = mask[..., 0] == 255
    assert np.abs(out[:, inside].astype(int) - pan["frames"][:, inside]).mean() > 5


def test_colour_preservation_keeps_the_frames_chrominance(pan, tmp_path, tiny_model):
    kept = run(pan, tmp_path, tiny_model, "kept",
               params=TransferParams(**{**PARAMS.__dict__, "preserve_colour": True}))  # fmt: skip
    plain = run(pan, tmp_path, tiny_model, "plain")

    def change(out):
        pairs = zip(out, pan["frames"], strict=True)
        return float(np.mean([np.abs(lab_chroma(o) - lab_chroma(f)).mean() for o, f in pairs]))

    print(
        f"a*b* change against the frames: preserved {change(kept):.2f}, plain {change(plain):.2f}"
    )
    assert change(kept) < 1.0 and change(plain) > 10 * change(kept)
    stylised = pan["ideal"][0]
    assert np.abs(lab_chroma(preserve_colour(stylised, pan["frames"][0]))
                  - lab_chroma(pan["frames"][0])).mean() < 1.0  # fmt: skip


def test_keyframe_run_resumes_to_the_same_frames(pan, tmp_path, tiny_model, monkeypatch):
    keys = [Keyframe(0, pan["first"]), Keyframe(FRAMES - 1, pan["last"])]
    whole = run(pan, tmp_path, tiny_model, "whole", keys=keys)
    real, calls = frame_loop.analogy, []

    def dying(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(frame_loop, "analogy", dying)
    out = tmp_path / "again.mp4"
    with pytest.raises(Interrupted):
        transfer_video(pan["first"], pan["clip"], out, PARAMS, device="cpu", model=tiny_model,
                       keys=keys)  # fmt: skip
    monkeypatch.setattr(frame_loop, "analogy", real)
    transfer_video(pan["first"], pan["clip"], out, PARAMS, device="cpu", model=tiny_model,
                   keys=keys, resume=True, keep_frames=tmp_path / "again")  # fmt: skip
    again = np.stack([load_image(tmp_path / "again" / f"{t:06d}.png") for t in range(FRAMES)])
    assert np.array_equal(again, whole)


def test_command_line_keyframes_and_their_errors(pan, tmp_path, tiny_model):
    args = ["transfer", str(pan["first"]), str(pan["clip"]), "--model", str(tiny_model),
            "--device", "cpu", "--iters", "1", "--lbfgs-iters", "1", "--guided-iters", "1",
            "--guided-lbfgs-iters", "0"]  # fmt: skip
    out = tmp_path / "cli.mp4"
    ok = CliRunner().invoke(cli, [*args, "-o", str(out), "--style-frame", "0", "--key",
                                  f"{FRAMES - 1}:{pan['last']}", "--preserve-colour"])  # fmt: skip
    assert ok.exit_code == 0, ok.output
    bad = CliRunner().invoke(cli, [*args, "-o", str(tmp_path / "b.mp4"), "--key", "x.png"])
    assert "FRAME:IMAGE" in assert_one_error(bad, 2)
    far = CliRunner().invoke(cli, [*args, "-o", str(tmp_path / "c.mp4"), "--style-frame", "99"])
    assert "outside the clip" in assert_one_error(far, 2)
