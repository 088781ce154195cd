"""Time a clip on one and on several Ray workers, and measure the seams at the chunk joins.

    python tools/bench_workers.py [--size 128] [--chunk-frames 24] [--workers 1 2]
        [--threads-each 1] [--clip tools/example/clip.mp4] [--style tools/example/style.png]

Runs `diva-numba transfer --workers N` on the clip for every N (each worker
limited to --threads-each threads, so that one and two workers compare like
with like), and once in one process without chunks. For every run it prints
the wall time and the temporal warping error of the output (the mean
difference between each frame and the previous one moved along the input's
optical flow, 0..255), split into the frame pairs inside or entering a chunk
overlap (the joins) and all the other pairs within shots.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from diva_numba.images import resize
from diva_numba.run.chunks import plan_chunks
from diva_numba.run.scale_out import ScaleOut
from diva_numba.video import even_size, probe_video, read_frames
from diva_numba.video.metrics import video_warp_error
from diva_numba.video.shots import find_cuts

EXAMPLE = Path(__file__).resolve().parent / "example"


def run(args, output: Path, *, workers: int | None, threads: int) -> float:
    command = [sys.executable, "-m", "diva_numba", "transfer", str(args.style),
               str(args.clip), "-o", str(output), "--work-size", str(args.size), "--device", "cpu",
               "--overwrite"]  # fmt: skip
    if workers is not None:
        command += ["--workers", str(workers), "--chunk-frames", str(args.chunk_frames)]
    env = {**os.environ, "NUMBA_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads),
           "OPENBLAS_NUM_THREADS": str(threads)}  # fmt: skip
    started = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def join_pairs(args) -> tuple[set[int], set[int]]:
    """Pair indices (pair p = frames p, p+1) at chunk joins, and at shot cuts."""
    info = probe_video(args.clip)
    width, height = even_size(info.width, info.height, min(args.size, max(info.width, info.height)))
    frames = (resize(f, height, width) for _, f in read_frames(args.clip))
    cuts = find_cuts(frames)
    overlap = min(ScaleOut().overlap, args.chunk_frames // 2)
    chunks = plan_chunks(0, info.frame_count, cuts, chunk_frames=args.chunk_frames, overlap=overlap)
    joins = set()
    for chunk in chunks:
        if chunk.lead:
            joins.update(range(chunk.start - 1, chunk.start + chunk.lead))
    return joins, {cut - 1 for cut in cuts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--chunk-frames", type=int, default=24)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--threads-each", type=int, default=1)
    parser.add_argument("--clip", type=Path, default=EXAMPLE / "clip.mp4")
    parser.add_argument("--style", type=Path, default=EXAMPLE / "style.png")
    args = parser.parse_args()
    joins, cuts = join_pairs(args)
    print(f"clip {args.clip.name}, {args.size} px, chunks of {args.chunk_frames}; "
          f"join pairs {sorted(joins)}, cut pairs {sorted(cuts)}")  # fmt: skip
    print(f"{'run':<22}{'seconds':>9}{'warp all':>10}{'at joins':>10}{'elsewhere':>11}{'ratio':>7}")
    with tempfile.TemporaryDirectory(prefix="diva-workers-") as scratch:
        runs = [(f"one process, {args.threads_each} thr", None, args.threads_each)]
        runs += [(f"{n} worker(s) x {args.threads_each} thr", n, n * args.threads_each)
                 for n in args.workers]  # fmt: skip
        for label, workers, threads in runs:
            output = Path(scratch) / f"{label.split()[0]}.mp4"
            seconds = run(args, output, workers=workers, threads=threads)
            errors = np.asarray(video_warp_error(output, args.clip).output)
            at_joins = [e for p, e in enumerate(errors) if p in joins]
            elsewhere = [e for p, e in enumerate(errors) if p not in joins and p not in cuts]
            ratio = np.mean(at_joins) / np.mean(elsewhere) if at_joins else float("nan")
            print(f"{label:<22}{seconds:9.1f}{np.mean(errors):10.3f}"
                  f"{np.mean(at_joins) if at_joins else float('nan'):10.3f}"
                  f"{np.mean(elsewhere):11.3f}{ratio:7.2f}")  # fmt: skip


if __name__ == "__main__":
    from diva_numba.environment import apply_runtime_defaults

    apply_runtime_defaults()
    main()
