"""Frame time against quality of seeded video frames, on clips with known answers.

    python tools/bench_frames.py [--work-size 256] [--frames 12]
        [--configs 5:0:0 0:0:0 5:0.05:0 default] [--cases pan disocclusion cut]

Each config is ``GUIDED_LBFGS_ITERS:MIN_DECREASE:NEW_CONTENT_SHARE`` (a seeded frame
deconvolves only with at least that share of new pixels), ``default``, or
``NAME=VALUE[,NAME=VALUE...]`` of :class:`~diva_numba.TransferParams` fields (numbers,
``true``/``false``, ``none``, words; ``synthesis.NAME`` and ``anchors.NAME`` for the fields of
:class:`~diva_numba.synthesis.pyramid.SynthesisParams` and
:class:`~diva_numba.run.anchor_frames.AnchorParams`), e.g.
``new_content_share=0.1,deconvolve_new_only=false``, ``synthesis.fine_from=2`` or
``anchors.enabled=false``. The cases:

* ``pan``: a pan over a photo whose frame 0 is painted (the style image): the
  ideal output of every frame is the painting moved along the motion, so the
  mean CIE Lab distance to it measures quality (over the pixels frame 0 shows, and
  by third over the content every frame shows, which only drift makes grow);
* ``slow-pan``: the same at 0.3 x 0.45 px a frame, under a pixel;
* ``fractional-pan``: the same at 0.7 x 2.3 px a frame, which a field moved by
  whole pixels rounds differently on every frame (the drift test);
* ``disocclusion``: a foreground cut-out moving across a panning background,
  uncovering new background every frame;
* ``cut``: the pan, then a pan over another photo from the middle frame on.

For every case and config: seconds per later frame (mean; the cut frame and
frame 0 apart), the Lab distance (the pans: its mean, by third of the clip, and by
third over the content in view throughout),
the warping error of the output and of the input (0..255). Frame 0 runs 5 L-BFGS
iterations in every config, so that the comparison is of the later frames alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from skimage import data

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from clips import write_clip  # noqa: E402

from diva_numba import AnalogyParams, TransferParams, transfer_video  # noqa: E402
from diva_numba.bench.truth import lab_distance, paint, painted_pan  # noqa: E402
from diva_numba.images import load_image, save_image  # noqa: E402
from diva_numba.video.metrics import warp_error  # noqa: E402


def pan_case(count, width, height, step=(1.0, 3.0)):
    pan = painted_pan(data.chelsea(), count=count, width=width, height=height, step=step)
    return pan.frames, pan.painting, pan


def slow_pan_case(count, width, height):
    # Under a pixel a frame: a field moved by whole pixels each frame would stick.
    return pan_case(count, width, height, step=(0.3, 0.45))


def fractional_pan_case(count, width, height):
    return pan_case(count, width, height, step=(0.7, 2.3))


def disocclusion_case(count, width, height):
    background = cv2.resize(data.coffee(), (width * 2, height * 2), interpolation=cv2.INTER_AREA)
    sprite = cv2.resize(data.astronaut()[40:240, 160:330], (width // 3, height // 2))
    frames = []
    for index in range(count):
        frame = background[20 : 20 + height, 2 * index : 2 * index + width].copy()
        x = 8 + 9 * index
        frame[height // 4 : height // 4 + sprite.shape[0], x : x + sprite.shape[1]] = sprite[
            :, : max(0, min(sprite.shape[1], width - x))
        ]
        frames.append(frame)
    return frames, paint(frames[0]), None


def cut_case(count, width, height):
    first = painted_pan(data.chelsea(), count=count // 2, width=width, height=height).frames
    second = painted_pan(data.coffee(), count=count - count // 2, width=width, height=height)
    return first + second.frames, paint(first[0]), None


CASES = {
    "pan": pan_case,
    "slow-pan": slow_pan_case,
    "fractional-pan": fractional_pan_case,
    "disocclusion": disocclusion_case,
    "cut": cut_case,
}


def parse_value(text: str):
    """A config value: ``true``/``false``, ``none``, a number, or else the text itself."""
    if text in ("true", "false"):
        return text == "true"
    if text == "none":
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def run(case: str, config: str, args, scratch: Path) -> dict:
    changes, nested = {}, {"synthesis": {}, "anchors": {}}
    if "=" in config:
        for item in config.split(","):
            name, text = item.split("=")
            value = parse_value(text)
            group, _, field = name.rpartition(".")
            if group in nested:
                nested[group][field] = value
            else:
                changes[name] = value
    elif config != "default":
        iterations, decrease, share = (config.split(":") + ["0", "0"])[:3]
        changes = {
            "guided_lbfgs_iterations": int(iterations),
            "guided_lbfgs_min_decrease": float(decrease),
            "new_content_share": float(share),
        }
    frames, style, truth = CASES[case](args.frames, args.width, args.height)
    folder = scratch / f"{case}-{config.replace(':', '_')}"
    folder.mkdir()
    write_clip(folder / "clip.mp4", np.stack(frames), crf=4)
    save_image(folder / "style.png", style)
    params = TransferParams.for_device(
        "cpu",
        work_size=args.work_size,
        analogy=AnalogyParams.for_device("cpu", lbfgs_iterations=5),
        **changes,
    )
    for group, fields in nested.items():
        if fields:
            replaced = dataclasses.replace(getattr(params, group), **fields)
            params = dataclasses.replace(params, **{group: replaced})
    seconds = {}

    def on_frame(report):
        seconds[report.index] = report.seconds

    transfer_video(folder / "style.png", folder / "clip.mp4", folder / "out.mp4", params,
                   device="cpu", keep_frames=folder / "frames", on_frame=on_frame)  # fmt: skip
    outputs = [load_image(folder / "frames" / f"{i:06d}.png") for i in range(args.frames)]
    inputs = [cv2.resize(f, outputs[0].shape[1::-1], interpolation=cv2.INTER_AREA) for f in frames]
    cut = args.frames // 2 if case == "cut" else None
    later = [s for i, s in seconds.items() if i not in (0, cut)]
    row = {"s/frame": float(np.mean(later)), "frame 0": seconds[0]}
    if cut is not None:
        row["cut frame"] = seconds[cut]
    if truth is not None:
        ideals = [cv2.resize(i, outputs[0].shape[1::-1]) for i in truth.ideals]
        labs = [lab_distance(o, i, v) for o, i, v in zip(outputs, ideals, truth.visible,
                                                          strict=True)]  # fmt: skip
        row["Lab"] = float(np.mean(labs))
        row["Lab by third"] = " / ".join(f"{np.mean(part):.2f}" for part in np.array_split(labs, 3))
        steady = [lab_distance(o, i, v) for o, i, v in zip(outputs, ideals, truth.throughout,
                                                           strict=True)]  # fmt: skip
        row["in view throughout"] = " / ".join(
            f"{np.mean(part):.2f}" for part in np.array_split(steady, 3)
        )
    spans = [(0, cut), (cut, args.frames)] if cut is not None else [(0, args.frames)]
    output_error = [warp_error(outputs[a:b], inputs[a:b]) for a, b in spans]
    row["warp"] = float(np.mean([e.output for e in output_error]))
    row["warp input"] = float(np.mean([e.reference for e in output_error]))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-size", type=int, default=256)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--height", type=int, default=144)
    parser.add_argument("--frames", type=int, default=12)
    configs = ["5:0:0", "0:0:0", "5:0.05:0", "default"]
    parser.add_argument("--configs", nargs="+", default=configs)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    args = parser.parse_args()
    print(f"{args.width}x{args.height}, working size {args.work_size}, {args.frames} frames")
    print("| case | config | s/frame | frame 0 | cut frame | Lab | Lab by third "
          "| in view throughout | warp | input warp |")  # fmt: skip
    print("| --- | --- | ---: | ---: | ---: | ---: | --- | --- | ---: | ---: |")
    with tempfile.TemporaryDirectory(prefix="diva-frames-") as scratch:
        for case in args.cases:
            for config in args.configs:
                started = time.perf_counter()
                row = run(case, config, args, Path(scratch))
                columns = ("s/frame", "frame 0", "cut frame", "Lab", "Lab by third",
                           "in view throughout", "warp", "warp input")  # fmt: skip
                cells = [
                    (row[k] if isinstance(row[k], str) else f"{row[k]:.2f}") if k in row else ""
                    for k in columns
                ]
                print(f"| {case} | {config} | {' | '.join(cells)} |  "
                      f"<!-- {time.perf_counter() - started:.0f} s -->", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
