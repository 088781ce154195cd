"""Neural style on a clip: warping error per-frame vs temporal, seconds per frame, Gram loss.

    python tools/bench_neural.py warp STYLE CLIP [--frames 12] [--work-size 128]
        [--only per-frame|temporal]
    python tools/bench_neural.py time STYLE CLIP [--frames 4] [--work-size 256]
    python tools/bench_neural.py gram STYLE CLIP [--work-size 256] [--checkpoints 20 50 100 200 500]
        [--later]

``warp`` runs the clip's first frames twice, each frame on its own (per-frame Gatys,
``independent``) and with Ruder et al.'s temporal loss (the defaults), and prints the
warping error of each output and of the input (:func:`diva_numba.metrics.warp_error`,
0..255, at the clip's size) and texture retention. ``time`` prints the seconds of frame
0 and of each later frame at the defaults. ``gram`` optimises frame 0 for the last
checkpoint's iterations from the frame itself and prints the style (Gram) term and the
whole loss at each checkpoint; with ``--later``, frame 1 instead, from frame 0's output
moved along the flow and with the temporal term, as the video runs it. Every run is on
the CPU with the default model.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np

from diva_numba.gpu.device import resolve_device
from diva_numba.image_analogy.deep_analogy import load_model
from diva_numba.images import load_image, resize
from diva_numba.neural_style.params import NeuralStyleParams
from diva_numba.neural_style.styler import NeuralStyler
from diva_numba.optim.lbfgs import LBFGSParams, minimize_lbfgs
from diva_numba.run import neural_frame_loop
from diva_numba.run.neural_frame_loop import Previous, moved_outputs, stylise_neural_frames
from diva_numba.run.planning import plan_transfer
from diva_numba.run.spec import RunSpec
from diva_numba.video import read_frames
from diva_numba.video.metrics import warp_error
from diva_numba.video.texture import texture_retention


def run_clip(style, clip, params, frames: int, device):
    """Output frames (uint8, clip size) and seconds per frame of ``frames`` frames."""
    spec = RunSpec.make(style, clip, params, device=device, end=frames)
    plan = plan_transfer(style, clip, params, start=0, end=frames)
    outputs, seconds = [], []

    class InMemory:
        """A work directory that keeps nothing: every frame is computed."""

        path = None

        def finished_frames(self, start, end):
            return 0

    def on_frame(report):
        outputs.append(report.output_frame)
        seconds.append(report.seconds)

    original = neural_frame_loop._frame_writer
    neural_frame_loop._frame_writer = lambda work, history, output: lambda: None
    try:
        stylise_neural_frames(load_model(None, device), spec, plan, InMemory(), on_frame=on_frame)
    finally:
        neural_frame_loop._frame_writer = original
    return outputs, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["warp", "time", "gram"])
    parser.add_argument("style")
    parser.add_argument("clip")
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--work-size", type=int, default=None)
    parser.add_argument("--first-iters", type=int, default=None)
    parser.add_argument("--later-iters", type=int, default=None)
    parser.add_argument("--temporal-weight", type=float, default=None)
    parser.add_argument("--checkpoints", type=int, nargs="+", default=[20, 50, 100, 200, 500])
    parser.add_argument("--only", choices=["per-frame", "temporal"], help="warp: one of the two")
    parser.add_argument(
        "--later", action="store_true", help="gram: frame 1, from frame 0's output moved"
    )
    args = parser.parse_args()
    device = resolve_device("cpu")
    changes = {
        name: value
        for name, value in (
            ("work_size", args.work_size),
            ("iterations", args.first_iters),
            ("later_iterations", args.later_iters),
            ("temporal_weight", args.temporal_weight),
        )
        if value is not None
    }
    params = NeuralStyleParams.for_device(device, **changes)
    print(f"params: {changes or 'defaults'}", flush=True)
    if args.what == "gram":
        gram_curve(args, params, device)
        return
    runs = {"temporal": params}
    if args.what == "warp":
        runs = {"per-frame": dataclasses.replace(params, independent=True), **runs}
        if args.only:
            runs = {args.only: runs[args.only]}
    inputs = [frame for _, frame in read_frames(args.clip, start=0, end=args.frames)]
    for name, run_params in runs.items():
        started = time.perf_counter()
        outputs, seconds = run_clip(args.style, args.clip, run_params, args.frames, device)
        inputs_at = [resize(frame, *outputs[0].shape[:2]) for frame in inputs]
        error = warp_error(outputs, inputs_at)
        texture = texture_retention(outputs, load_image(args.style))
        by_frame = texture.frames / texture.style
        print(
            f"{name}: warping error {error.output_mean:.2f} (input {error.reference_mean:.2f}, "
            f"ratio {error.output_mean / error.reference_mean:.2f}); texture retention "
            f"{texture.retention:.3f} (first frame {by_frame[0]:.3f}, last {by_frame[-1]:.3f}); "
            f"seconds frame 0 "
            f"{seconds[0]:.1f}, later frames {np.mean(seconds[1:]):.1f} "
            f"(min {np.min(seconds[1:]):.1f}, max {np.max(seconds[1:]):.1f}); "
            f"total {time.perf_counter() - started:.0f} s",
            flush=True,
        )


def gram_curve(args, params, device) -> None:
    plan = plan_transfer(args.style, args.clip, params, start=0, end=1)
    styler = NeuralStyler(load_model(None, device), plan.style, params)
    frames = [resize(f, *plan.work_shape) for _, f in read_frames(args.clip, start=0, end=2)]
    content = styler.preprocess(frames[0])
    start = content
    if args.later:
        # Frame 1 as the video runs it: from frame 0's output moved along the flow,
        # with the temporal term.
        first = styler.optimise(content, content.copy(), iterations=params.iterations)
        moved = moved_outputs([Previous(0, frames[0], first.image)], 1, frames[1], params)
        content = styler.preprocess(frames[1])
        styler.loss.set_temporal(moved)
        start = moved[0][0]
    styler.loss.set_content(content)
    checkpoints = sorted(args.checkpoints)
    started = time.perf_counter()
    print(f"iterations 0: {styler.loss.terms(start)}", flush=True)
    # One run to the last checkpoint (the optimiser is never restarted); every
    # evaluated point is kept with its loss, and iteration k's accepted point is the
    # one whose loss the optimiser reports for it.
    points, values = [], []

    def objective(point):
        value, grad = styler.loss(point)
        points.append(point.copy())
        values.append(value)
        return value, grad

    lbfgs = LBFGSParams(history=8, max_iterations=checkpoints[-1], gradient_tolerance=1e-16)
    result = minimize_lbfgs(objective, start, params=lbfgs)
    for k in checkpoints:
        if k < len(result.losses):
            index = values.index(result.losses[k])
            print(f"iterations {k}: {styler.loss.terms(points[index])}", flush=True)
    print(f"{result.iterations} iterations, {result.evaluations} evaluations, "
          f"{time.perf_counter() - started:.0f} s", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
