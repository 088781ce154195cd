"""Time the image analogy per stage and level, the video transfer per frame, and its memory.

    python tools/bench_pipeline.py analogy --size 224 --lbfgs-iters 0 5 20 [--device cpu]
    python tools/bench_pipeline.py video --work-size 320 [--clip-size 1920x1080] [--frames 12]
    python tools/bench_pipeline.py memory --frames 30 300 --size 96 [--source-size 640x360]
        [--guided-lbfgs-iters 5] [--model-path MODEL] [--device cpu]

`analogy` runs the astronaut photo against a zoomed, shifted, recoloured copy of
itself (a pair whose true correspondence is known) and against the coffee
photo (a style pair), and prints for each L-BFGS iteration count: the time per
stage and level, the deconvolution's achieved GFLOP/s, the median error of
nnf_ab against the truth, and the colour distance of A' to B' (Lab mean and
std). `video` runs the bundled example clip (or a pan of ``--clip-size``) and prints
each frame's wall time and its full-resolution synthesis's share of it, their
means over the seeded frames, and the stage breakdown of the last frame.
`memory` writes clips of the same size but different lengths (a pan across a
photo, with an audio track), runs `diva-numba transfer` on each in a fresh
process, and prints a table of the peak resident memory (RSS) and the seconds
per frame of each run: a pipeline that keeps nothing per frame has the same
peak for every length.
"""

from __future__ import annotations

from diva_numba.environment import apply_runtime_defaults

# Before NumPy and Numba load, as the command line does (the numbers must be its).
apply_runtime_defaults()

import argparse  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from fractions import Fraction  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from skimage import data  # noqa: E402

from diva_numba.gpu.device import device_kind, resolve_device  # noqa: E402
from diva_numba.image_analogy.deep_analogy import AnalogyModel, AnalogyParams, Profile, analogy  # noqa: E402
from diva_numba.models.store import ensure_model  # noqa: E402

EXAMPLE = Path(__file__).resolve().parent / "example"

#: Runs the command in argv and prints its exit status and peak RSS in bytes. It runs
#: in a fresh interpreter of its own: a child's ru_maxrss starts from the peak of the
#: process that spawned it, so only a small parent gives the command's own peak.
PEAK_RSS = """
import resource, subprocess, sys
code = subprocess.call(sys.argv[1:], stdout=sys.stderr)
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(code, peak if sys.platform == "darwin" else peak * 1024)
"""


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
    from diva_numba import TransferParams, transfer_video

    out = Path(args.output)
    with tempfile.TemporaryDirectory(prefix="diva-video-") as scratch:
        clip = EXAMPLE / "clip.mp4"
        if args.clip_size is not None:
            clip = Path(scratch, "pan.mp4")
            write_pan_clip(clip, args.frames, *args.clip_size)
        params = TransferParams.for_device(device_kind(args.device), work_size=args.work_size)
        reports, stamps = [], [time.perf_counter()]

        def on_frame(report) -> None:
            stamps.append(time.perf_counter())
            reports.append(report)

        transfer_video(EXAMPLE / "style.png", clip, out, params, device=args.device,
                       end=args.frames, overwrite=True, on_frame=on_frame)  # fmt: skip
        stamps.append(time.perf_counter())  # the encoder's tail after the last frame
    # A frame's wall time runs from the previous frame's report to its own: decoding,
    # the analogy, the synthesis and whatever the background writer takes from them.
    walls = np.diff(stamps[:-1])
    synthesis = [report.profile.total("synthesis") for report in reports]
    print(f"{'frame':>5} {'wall s':>7} {'synthesis s':>11} {'share':>6}  kind")
    for report, wall, synth in zip(reports, walls, synthesis, strict=True):
        print(f"{report.index:>5} {wall:7.2f} {synth:11.3f} {synth / wall:6.0%}  {report.kind}")
    # Later frames: neither frame 0 nor an anchor frame (each runs the deep analogy).
    later = [i for i, report in enumerate(reports) if i and report.kind != "anchor"]
    later_wall, later_synth = (
        float(np.mean(walls[later])),
        float(np.mean(np.take(synthesis, later))),
    )
    print(f"later frames: {later_wall:.2f} s/frame, synthesis {later_synth:.3f} s "
          f"({later_synth / later_wall:.0%}); frame 0 {walls[0]:.1f} s; anchors "
          f"{len(reports) - 1 - len(later)}; all frames {float(np.mean(walls)):.2f} s/frame; "
          f"whole run {stamps[-1] - stamps[0]:.1f} s for {len(reports)} frames")  # fmt: skip
    print("last frame's stages:")
    print(reports[-1].profile.table())


def pan_frames(count: int, width: int, height: int, step: int = 2) -> Iterator[np.ndarray]:
    """``count`` uint8 (height, width, 3) frames of a window moving ``step`` px per frame.

    The window pans right across the coffee photo, scaled to the frame height
    and continued with mirrored copies of itself, so any length has texture.
    """
    photo = data.coffee()
    scaled_width = max(1, round(photo.shape[1] * height / photo.shape[0]))
    photo = cv2.resize(photo, (scaled_width, height), interpolation=cv2.INTER_AREA)
    tiles = -(-(width + step * count) // scaled_width)
    strip = np.concatenate([photo if i % 2 == 0 else photo[:, ::-1] for i in range(tiles)], 1)
    for index in range(count):
        yield np.ascontiguousarray(strip[:, index * step : index * step + width])


def write_pan_clip(path: Path, count: int, width: int, height: int, fps: int = 30) -> None:
    """A ``count``-frame H.264 clip of :func:`pan_frames` with an AAC tone as long as it."""
    import av

    with av.open(str(path), mode="w") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        audio = container.add_stream("aac", rate=48000)
        audio.layout = "mono"
        for frame in pan_frames(count, width, height):
            container.mux(video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(video.encode(None))
        samples = 48000 * count // fps
        tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(samples) / 48000)).astype(np.float32)
        for start in range(0, samples, 1024):
            chunk = av.AudioFrame.from_ndarray(
                tone[None, start : start + 1024], format="flt", layout="mono"
            )
            chunk.sample_rate, chunk.pts, chunk.time_base = 48000, start, Fraction(1, 48000)
            container.mux(audio.encode(chunk))
        container.mux(audio.encode(None))


def peak_rss(command: list[str]) -> tuple[int, float]:
    """Run ``command`` to completion; return its peak RSS in bytes and its wall seconds.

    Raises
    ------
    RuntimeError
        The command failed (its last output lines are in the message).
    """
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", PEAK_RSS, *command], capture_output=True, text=True
    )
    seconds = time.perf_counter() - started
    code, peak = (int(word) for word in done.stdout.split())
    if code != 0:
        tail = "\n".join(done.stderr.replace("\r", "\n").splitlines()[-5:])
        raise RuntimeError(f"{' '.join(command)} exited with {code}:\n{tail}")
    return peak, seconds


def bench_memory(args) -> None:
    from diva_numba.video import probe_video

    width, height = args.source_size
    model = args.model_path or str(ensure_model())
    options = ["--work-size", str(args.size), "--device", args.device, "--model", model]
    if args.guided_lbfgs_iters is not None:
        options += ["--guided-lbfgs-iters", str(args.guided_lbfgs_iters)]
    print(f"device: {resolve_device(args.device).description}; clips {width}x{height} with audio")
    print(f"each run: diva-numba transfer STYLE CLIP -o OUT {' '.join(options)}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="diva-memory-") as scratch:
        for count in args.frames:
            clip, out = Path(scratch, f"clip{count}.mp4"), Path(scratch, f"out{count}.mp4")
            write_pan_clip(clip, count, width, height)
            command = [sys.executable, "-m", "diva_numba", "transfer", str(EXAMPLE / "style.png"),
                       str(clip), "-o", str(out), *options]  # fmt: skip
            peak, seconds = peak_rss(command)
            made = probe_video(out)
            if made.frame_count != count or not made.has_audio:
                raise RuntimeError(f"{out}: {made.frame_count} frames, audio {made.has_audio}")
            rows.append((count, peak, seconds))
            print(f"{count} frames: peak RSS {peak / 1e6:.1f} MB, {seconds:.1f} s", flush=True)
    (first, first_peak, first_s), (last, last_peak, last_s) = rows[0], rows[-1]
    print("\n| frames | peak RSS MB | seconds | s/frame |\n| ---: | ---: | ---: | ---: |")
    for count, peak, seconds in rows:
        print(f"| {count} | {peak / 1e6:.1f} | {seconds:.1f} | {seconds / count:.2f} |")
    print(f"\n{last} - {first} frames: peak RSS {(last_peak - first_peak) / 1e6:+.1f} MB, "
          f"{(last_s - first_s) / (last - first):.2f} s per extra frame")  # fmt: skip


def frame_size(text: str) -> tuple[int, int]:
    """``"640x360"`` as (640, 360); H.264 in 4:2:0 needs both sides even."""
    width, _, height = text.partition("x")
    if not (width.isdigit() and height.isdigit() and int(width) % 2 == int(height) % 2 == 0):
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, both even, got {text!r}")
    if min(int(width), int(height)) < 32:
        raise argparse.ArgumentTypeError(f"frames must be at least 32x32, got {text!r}")
    return int(width), int(height)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    one = sub.add_parser("analogy")
    one.add_argument("--size", type=int, default=224)
    one.add_argument("--lbfgs-iters", type=int, nargs="+", default=[0, 5, 20])
    one.add_argument("--device", default="auto")
    one.add_argument("--timing-only", action="store_true", help="skip the style pair")
    video = sub.add_parser("video")
    video.add_argument("--work-size", type=int, default=320)  # the CPU's default
    video.add_argument("--clip-size", type=frame_size, metavar="WxH",
                       help="a pan clip of this size instead of the example")  # fmt: skip
    video.add_argument("--frames", type=int, default=12)
    video.add_argument("--device", default="auto")
    video.add_argument("--output", default="diva-bench.mp4")
    memory = sub.add_parser("memory")
    memory.add_argument("--frames", type=int, nargs=2, default=[30, 300], metavar=("A", "B"))
    memory.add_argument("--size", type=int, default=96, help="working long side")
    memory.add_argument("--source-size", type=frame_size, default=(640, 360), metavar="WxH")
    memory.add_argument("--model-path", help="ONNX model [default: the real one]")
    memory.add_argument("--device", default="cpu")
    memory.add_argument("--guided-lbfgs-iters", type=int)
    args = parser.parse_args()
    {"analogy": bench_analogy, "video": bench_video, "memory": bench_memory}[args.what](args)


if __name__ == "__main__":
    main()
