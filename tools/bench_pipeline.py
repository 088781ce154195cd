"""Time the image analogy per stage and level, and the video transfer per frame.

    python tools/bench_pipeline.py analogy --size 224 --lbfgs-iters 0 5 20 [--device cpu]
    python tools/bench_pipeline.py video --size 192 [--frames 12] [--device cpu]

`analogy` runs the astronaut photo against a zoomed, shifted, recoloured copy of
itself (a pair whose true correspondence is known) and against the coffee
photo (a style pair), and prints for each L-BFGS iteration count: the time per
stage and level, the deconvolution's achieved GFLOP/s, the median error of
nnf_ab against the truth, and the colour distance of A' to B' (Lab mean and
std). `video` runs the bundled example clip and prints seconds per frame for
frame 0 and for the seeded frames, with the stage breakdown of a seeded frame.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np
from skimage import data

from diva_numba.analogy import AnalogyModel, AnalogyParams, Profile, analogy
from diva_numba.device import resolve_device
from diva_numba.weights.store import ensure_model

EXAMPLE = Path(__file__).resolve().parent / "example"


def known_pair(size: int):
    a = cv2.resize(data.astronaut()[30:330, 100:400], (size, size), interpolation=cv2.INTER_AREA)
    scale, shift = 1.15, np.array([0.09, -0.07]) * size
    centre = (size - 1) / 2
    to_bp = np.array(
        [[scale, 0, (1 - scale) * centre + shift[1]], [0, scale, (1 - scale) * centre + shift[0]]],
        np.float32,
    )
    bp = cv2.warpAffine(a, to_bp, (size, size), borderMode=cv2.BORDER_REFLECT)
    bp = np.clip(bp * np.array([0.7, 1.0, 1.25]) + np.array([30, 0, -10]), 0, 255).astype(np.uint8)
    ys, xs = np.mgrid[0:size, 0:size]
    truth = np.stack([scale * ys + (1 - scale) * centre + shift[0],
                      scale * xs + (1 - scale) * centre + shift[1]], axis=-1)  # fmt: skip
    return a, bp, truth


def field_error(field: np.ndarray, truth: np.ndarray) -> float:
    size = field.shape[0]
    margin = 0.05 * size
    inside = np.all((truth > margin) & (truth < size - 1 - margin), axis=-1)
    return float(np.median(np.linalg.norm(field - truth, axis=-1)[inside]))


def lab_distance(x: np.ndarray, y: np.ndarray) -> float:
    def stats(image):
        lab = cv2.cvtColor(image, cv2.COLOR_RGB2LAB).reshape(-1, 3).astype(float)
        return np.concatenate([lab.mean(axis=0), lab.std(axis=0)])

    return float(np.linalg.norm(stats(x) - stats(y)))


def bench_analogy(args) -> None:
    device = resolve_device(args.device)
    model = AnalogyModel(ensure_model(), device)
    a, bp_known, truth = known_pair(args.size)
    coffee = cv2.resize(
        data.coffee(), (args.size * 4 // 3, args.size), interpolation=cv2.INTER_AREA
    )
    analogy(model, a[:64, :64], bp_known[:64, :64], params=AnalogyParams(lbfgs_iterations=1))
    print(f"device: {device.description}; pair {args.size}x{args.size}")
    for iterations in args.lbfgs_iters:
        params = AnalogyParams(lbfgs_iterations=iterations)
        profile = Profile(device)
        started = time.perf_counter()
        known = analogy(model, a, bp_known, params=params, profile=profile)
        seconds = time.perf_counter() - started
        print(f"\n## --lbfgs-iters {iterations}: {seconds:.1f} s end to end")
        print(profile.table())
        print(f"nnf_ab median error {field_error(known.nnf_ab, truth):.2f} px")
        if not args.timing_only:
            styled = analogy(model, a, coffee, params=params)
            print(f"A'->B' Lab distance {lab_distance(styled.a_prime, coffee):.1f} "
                  f"(A->B' {lab_distance(a, coffee):.1f})")  # fmt: skip


def bench_video(args) -> None:
    from click.testing import CliRunner

    from diva_numba.cli import cli

    out = Path(args.output)
    command = ["transfer", str(EXAMPLE / "style.png"), str(EXAMPLE / "clip.mp4"), "-o", str(out),
               "--overwrite", "--end", str(args.frames), "--size", str(args.size),
               "--device", args.device, "--profile"]  # fmt: skip
    started = time.perf_counter()
    result = CliRunner().invoke(cli, command)
    print(result.output)
    print(f"{args.frames} frames in {time.perf_counter() - started:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    one = sub.add_parser("analogy")
    one.add_argument("--size", type=int, default=224)
    one.add_argument("--lbfgs-iters", type=int, nargs="+", default=[0, 5, 20])
    one.add_argument("--device", default="auto")
    one.add_argument("--timing-only", action="store_true", help="skip the style pair")
    video = sub.add_parser("video")
    video.add_argument("--size", type=int, default=192)
    video.add_argument("--frames", type=int, default=12)
    video.add_argument("--device", default="auto")
    video.add_argument("--output", default="diva-bench.mp4")
    args = parser.parse_args()
    bench_analogy(args) if args.what == "analogy" else bench_video(args)


if __name__ == "__main__":
    main()
