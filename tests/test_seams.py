"""Where two paintings meet: the seam of the plain average, and of the gradient-domain blend.

The clip pans across a photograph; frame 0 is painted in one palette (A), the
last frame in another (B), and a third painting (C, another palette again)
stands in for the deep analogy where neither keyframe reaches. Every painting
moved along the known motion is exact ground truth where it alone is
visible. The seam metric is the Lab gradient of the output across the
places where the weights switch, against the gradient far from them.
"""

from fractions import Fraction

import cv2
import numpy as np
import pytest
from clips import pan_frames, photo, write_clip

from diva_numba.finishing.keyframes import (
    Keyframe,
    KeyframeParams,
    KeyframeSet,
    composite_keys,
    propagate_all,
)
from diva_numba.images import save_image
from diva_numba.video import read_frames

SCALE, FRAMES = 2, 18
WIDTH, HEIGHT, STEP, ORIGIN = 96 * SCALE, 64 * SCALE, (4 * SCALE, 2 * SCALE), (40, 40)


def painting(image: np.ndarray, colour_map: int) -> np.ndarray:
    flat = cv2.stylization(image, sigma_s=30 * SCALE, sigma_r=0.3)
    mapped = cv2.applyColorMap(cv2.cvtColor(flat, cv2.COLOR_RGB2GRAY), colour_map)
    return cv2.addWeighted(mapped[:, :, ::-1], 0.6, flat, 0.4, 0)


def windows(image: np.ndarray) -> np.ndarray:
    return pan_frames(FRAMES, width=WIDTH, height=HEIGHT, step=STEP, origin=ORIGIN, image=image)


def visible(t: int):
    """Pixels of frame t that frame 0 shows, and that the last frame shows."""
    ys, xs = np.indices((HEIGHT, WIDTH))
    x, y = xs + t * STEP[0], ys + t * STEP[1]
    last = FRAMES - 1
    return (x < WIDTH) & (y < HEIGHT), (x >= last * STEP[0]) & (y >= last * STEP[1])


def to_lab(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)


def seam_ratio(image: np.ndarray, weights, span: int = 2, far: float = 6.0) -> float:
    """Lab change across weight switches over the change far from them.

    Over ``2 * span`` px along each axis: the mean at pixels where some
    weight changes by more than 0.3 there, over the mean at pixels more
    than ``far`` px from any of them. About 1 for a seamless picture.
    """
    lab = to_lab(image)

    def across(array, axis):
        out = np.zeros_like(array)
        inner = [slice(None)] * array.ndim
        inner[axis] = slice(span, -span)
        out[tuple(inner)] = np.take(array, range(2 * span, array.shape[axis]), axis) - np.take(
            array, range(array.shape[axis] - 2 * span), axis
        )
        return out

    pairs = []
    for axis in (1, 0):
        change = np.linalg.norm(across(lab, axis), axis=2)
        switch = np.max([np.abs(across(w, axis)) for w in weights], axis=0) > 0.3
        pairs.append((change, switch))
    boundary = pairs[0][1] | pairs[1][1]
    if not boundary.any():
        return float("nan")
    interior = cv2.distanceTransform((~boundary).astype(np.uint8), cv2.DIST_L2, 5) > far
    at_seams = np.concatenate([change[switch] for change, switch in pairs])
    elsewhere = np.concatenate([change[interior] for change, _ in pairs])
    return float(at_seams.mean() / elsewhere.mean())


def thirds(values) -> list[float]:
    third = len(values) // 3
    return [round(float(np.nanmean(values[i * third : (i + 1) * third])), 2) for i in range(3)]


def lab_distance(a, b, where) -> float:
    return float(np.linalg.norm(to_lab(a) - to_lab(b), axis=2)[where].mean()) if where.any() \
        else float("nan")  # fmt: skip


@pytest.fixture(scope="module")
def two_palettes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("seams")
    # The part of the photograph the pan crosses (and a margin), enlarged.
    source = cv2.resize(photo()[100:300, 100:340], None, fx=SCALE, fy=SCALE,
                        interpolation=cv2.INTER_CUBIC)  # fmt: skip
    a, b, c = (windows(painting(source, m)) for m in
               (cv2.COLORMAP_TWILIGHT, cv2.COLORMAP_OCEAN, cv2.COLORMAP_PINK))  # fmt: skip
    clip = folder / "pan.mp4"
    write_clip(clip, windows(source), fps=Fraction(24), crf=0)
    frames = np.stack([f for _, f in read_frames(clip)])
    save_image(folder / "a.png", a[0])
    save_image(folder / "b.png", b[-1])
    keys = [Keyframe(0, folder / "a.png"), Keyframe(FRAMES - 1, folder / "b.png")]
    keyset = KeyframeSet(keys, {k.index: frames[k.index] for k in keys}, (HEIGHT, WIDTH),
                         KeyframeParams())  # fmt: skip
    found = {}
    propagate_all(keyset, frames, 0, 0, FRAMES, lambda i, p: found.setdefault(i, []).append(p))
    layers = [keyset.layers(t, found[t]) for t in range(FRAMES)]
    return {"layers": layers, "a": a, "b": b, "c": c}


def measure(two_palettes, params: KeyframeParams) -> dict:
    import time

    seams, to_a, to_b, to_c, seconds = [], [], [], [], []
    for t, layers in enumerate(two_palettes["layers"]):
        start = time.perf_counter()
        out = composite_keys(layers, two_palettes["c"][t], params)
        seconds.append(time.perf_counter() - start)
        weights = [layers.coverage * w for w in layers.weights] + [1 - layers.coverage]
        seams.append(seam_ratio(out, weights))
        first, last = visible(t)
        to_a.append(lab_distance(out, two_palettes["a"][t], first & ~last))
        to_b.append(lab_distance(out, two_palettes["b"][t], last & ~first))
        to_c.append(lab_distance(out, two_palettes["c"][t], ~first & ~last))
    return {"seam": thirds(seams), "a": thirds(to_a), "b": thirds(to_b), "c": thirds(to_c),
            "ms": 1000 * float(np.mean(seconds))}  # fmt: skip


def test_two_paintings_meet_without_a_seam(two_palettes):
    """The default blend has (almost) no seam where the average has a strong one."""
    assert KeyframeParams().blend == "poisson"
    plain = measure(two_palettes, KeyframeParams(blend="average"))
    poisson = measure(two_palettes, KeyframeParams())
    held = measure(two_palettes, KeyframeParams(hold=0.04))
    weights = [[layers.coverage] for layers in two_palettes["layers"]]
    clean = thirds([seam_ratio(a, w) for a, w in zip(two_palettes["a"], weights, strict=True)])
    for name, result in (("average", plain), ("poisson", poisson), ("poisson hold 0.04", held)):
        print(f"{name}: seam ratio by third {result['seam']}; Lab distance to A where only A "
              f"shows {result['a']}, to B where only B does {result['b']}, to the analogy "
              f"where neither does {result['c']}; {result['ms']:.1f} ms a frame")  # fmt: skip
    print(f"one painting, same places: seam ratio {clean}")
    assert min(plain["seam"]) > 2.0 * max(clean)  # the case has a seam to remove
    assert max(poisson["seam"]) < 0.65 * min(plain["seam"])
    assert max(poisson["seam"]) < 1.7 * max(clean)
    # The colours stay the paintings' where each is the only one (first and
    # last thirds), within about the step spread near the seams.
    assert poisson["a"][0] < plain["a"][0] + 1.2 and poisson["b"][2] < plain["b"][2] + 1.2
    assert max(held["seam"]) <= max(poisson["seam"])
    assert held["a"][0] < poisson["a"][0] and held["b"][2] < poisson["b"][2]
