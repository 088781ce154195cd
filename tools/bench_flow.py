"""Precision and cost of the flow to an anchor frame, refined at the output size.

    python tools/bench_flow.py [--work-size 320] [--frames 13] [--smoothing 0 1 3 5]
        [--clip CLIP --clip-frame N]

H.264 pans with a known motion of 0.7 x 2.3 px a frame: a photo at 384 x 216, the
bundled example's frame 24 enlarged to 1280 x 720 (soft: a 320 px frame enlarged), and
with ``--clip`` a frame of any clip panned at the clip's size (enlarged 9/8 for room).
For every third frame *t* the flow from frame *t* to frame 0 is made as the frame loop
makes it for a frame carried from its anchor
(:func:`~diva_numba.finishing.keyframes.propagate` at the working size, chained from
the frame before and re-anchored on frame 0), brought up to the clip's size and
refined there by :func:`~diva_numba.video.flow.refine_flow` with each number of
smoothing iterations. Printed: the mean endpoint error (output pixels, 16 px in from
the border, over the content frame 0 shows) at each *t*, and milliseconds per
refinement.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from skimage import data

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from clips import write_clip  # noqa: E402

from diva_numba.bench.truth import shifted_frames  # noqa: E402
from diva_numba.finishing.keyframes import (  # noqa: E402
    KeyframeParams,
    Propagation,
    propagate,
    step_flows,
)
from diva_numba.images import resize  # noqa: E402
from diva_numba.run.anchor_frames import output_flow  # noqa: E402
from diva_numba.video import read_frames  # noqa: E402
from diva_numba.video.flow import refine_flow  # noqa: E402

STEP = np.array([2.3, 0.7], np.float32)  # (dx, dy) a frame
EXAMPLE = Path(__file__).resolve().parent / "example" / "clip.mp4"


def encoded_pan(image: np.ndarray, size: tuple[int, int], count: int, folder: Path) -> list:
    """``count`` frames of ``size`` (W, H) panning over ``image``, through H.264 and back."""
    frames = shifted_frames(image, count=count, width=size[0], height=size[1], step=STEP[::-1])
    path = folder / f"pan-{size[0]}.mp4"
    write_clip(path, np.stack(frames), crf=12)
    return [frame for _, frame in read_frames(path)]


def measure(frames: list, work_size: int, smoothing: list[int]) -> dict:
    height, width = frames[0].shape[:2]
    work_shape = (round(height * work_size / width), work_size)
    work = [resize(frame, *work_shape) for frame in frames]
    ys, xs = np.mgrid[0:height, 0:width]
    zero = np.zeros((*work_shape, 2), np.float32)
    previous = Propagation(0, zero, zero, None)
    errors = {s: [] for s in ["brought up", *smoothing]}
    seconds = {s: 0.0 for s in smoothing}
    for index in range(1, len(frames)):
        step = step_flows(work[index], work[index - 1], "medium")
        previous = propagate(work[0], 0, work[index], step, previous, KeyframeParams())
        if index % 3:
            continue
        start = output_flow(previous.to_key, (height, width))
        shown = (
            (ys + index * STEP[1] <= height - 17) & (xs + index * STEP[0] <= width - 17)
            & (ys >= 16) & (xs >= 16)
        )  # fmt: skip

        def error(flow, index=index, shown=shown):
            return float(np.linalg.norm(flow[shown] - index * STEP, axis=-1).mean())

        errors["brought up"].append(error(start))
        for iterations in smoothing:
            started = time.perf_counter()
            refined = refine_flow(frames[index], frames[0], start,
                                  smoothing_iterations=iterations)  # fmt: skip
            seconds[iterations] += time.perf_counter() - started
            errors[iterations].append(error(refined))
    count = len(errors["brought up"])
    return {s: (e, 1000 * seconds.get(s, 0.0) / count) for s, e in errors.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-size", type=int, default=320)
    parser.add_argument("--frames", type=int, default=13)
    parser.add_argument("--smoothing", type=int, nargs="+", default=[0, 1, 3, 5])
    parser.add_argument("--clip", type=Path, help="also pan over a frame of this clip")
    parser.add_argument("--clip-frame", type=int, default=0)
    args = parser.parse_args()
    if args.frames < 4:
        parser.error("--frames must be at least 4 (every third frame is measured)")
    (_, example), *_ = read_frames(EXAMPLE, start=24, end=25)
    sources = {
        "photo pan, 384 x 216": (data.coffee(), (384, 216)),
        "example frame 24 enlarged, 1280 x 720": (
            cv2.resize(example, (1440, 810), interpolation=cv2.INTER_CUBIC),
            (1280, 720),
        ),
    }
    if args.clip is not None:
        (_, frame), *_ = read_frames(args.clip, start=args.clip_frame, end=args.clip_frame + 1)
        height, width = frame.shape[:2]
        enlarged = cv2.resize(
            frame, (width * 9 // 8, height * 9 // 8), interpolation=cv2.INTER_CUBIC
        )
        sources[f"{args.clip.name} frame {args.clip_frame}, {width} x {height}"] = (
            enlarged,
            (width, height),
        )
    print(f"working size {args.work_size}, endpoint error (px) at t = 3, 6, 9, ...")
    print("| clip | flow | error | ms |")
    print("| --- | --- | --- | ---: |")
    with tempfile.TemporaryDirectory(prefix="diva-flow-") as scratch:
        for name, (image, size) in sources.items():
            frames = encoded_pan(image, size, args.frames, Path(scratch))
            for label, (error, ms) in measure(frames, args.work_size, args.smoothing).items():
                what = label if isinstance(label, str) else f"refined, {label} smoothing"
                cells = " / ".join(f"{e:.3f}" for e in error)
                cost = "" if isinstance(label, str) else f"{ms:.0f}"
                print(f"| {name} | {what} | {cells} | {cost} |", flush=True)


if __name__ == "__main__":
    main()
