"""SUMMARY.md of tools/gpu-check.sh: every step's outcome and every figure in one table.

    python tools/gpu_check_summary.py OUT STEPS.tsv [--tails DIR] [--dry-run] [--commit TEXT]

OUT is the check's output folder (the files its steps wrote), STEPS.tsv one line per
step: number, name, status, seconds run, time box in seconds; ``--tails DIR`` holds
each step's log as ``step-NUMBER.log``, whose last lines are shown for a step not ok.
Figures are read from the steps' files in the formats tools/bench_pipeline.py,
``diva-numba bench --markdown``, tools/cuda_graph_check.py and pytest print; a figure a
step did not produce is absent, never filled in. Standard library only: it runs
whatever state the install is in.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

#: The file each figure-producing step writes into OUT (tools/gpu-check.sh names them).
ENVIRONMENT, ANALOGY, VIDEO, VIDEO_1080P = (
    "env.txt",
    "analogy-448.txt",
    "video-480.txt",
    "video-1080p.txt",
)
BENCH, GRAPHS, TESTS = "bench-cuda.md", "cuda-graphs.txt", "tests.txt"


def read(out: Path, name: str) -> str:
    try:
        return (out / name).read_text(errors="replace")
    except OSError:
        return ""


def device_name(out: Path) -> str:
    """The GPU as CuPy or nvidia-smi named it, with the driver and CUDA versions."""
    text = read(out, ENVIRONMENT)
    device = re.search(r"^device 0: (.+)$", text, re.M)
    versions = re.search(r"^cupy .+$", text, re.M)
    smi = re.search(r"^name, driver_version.*\n(.+)$", text, re.M)
    parts = [device.group(1) if device else smi.group(1) if smi else "GPU not identified"]
    if versions:
        parts.append(versions.group(0))
    return "; ".join(parts)


def analogy_figures(text: str) -> list[tuple[str, str]]:
    rows = []
    for block in re.split(r"^(?=## --lbfgs-iters )", text, flags=re.M)[1:]:
        head = re.match(r"## --lbfgs-iters (\d+): ([\d.]+) s end to end", block)
        if not head:
            continue
        iterations, seconds = head.groups()
        rows.append((f"analogy 448 x 448, {iterations} L-BFGS iterations", f"{seconds} s"))
        error = re.search(r"^nnf_ab median error ([\d.]+) px", block, re.M)
        if error:
            rows.append((f"  nnf_ab median error ({iterations} iterations)", f"{error[1]} px"))
    return rows


def video_figures(text: str, label: str) -> list[tuple[str, str]]:
    found = re.search(
        r"^later frames: ([\d.]+) s/frame, synthesis ([\d.]+) s \((\d+%)\); "
        r"frame 0 ([\d.]+) s; whole run ([\d.]+) s for (\d+) frames",
        text,
        re.M,
    )
    if not found:
        return []
    later, synthesis, share, first, whole, frames = found.groups()
    return [
        (f"{label}: seconds per later frame", f"{later} s (synthesis {synthesis} s, {share})"),
        (f"{label}: frame 0", f"{first} s"),
        (f"{label}: whole run", f"{whole} s for {frames} frames"),
    ]


def bench_figures(text: str) -> list[tuple[str, str]]:
    rows = []
    for name in ("memory bandwidth", "matmul rate"):
        found = re.search(rf"^- {name}: (.+)$", text, re.M)
        if found:
            rows.append((f"kernel bench: {name}", found[1]))
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) < 5 or not re.fullmatch(r"[a-z_0-9]+", cells[0]) or cells[0] == "kernel":
            continue
        rows.append(
            (
                f"kernel {cells[0]} ({cells[1]}, {cells[2]})",
                f"{cells[4]} ms, "
                + re.sub(r"^([\d.]+) \((\w+)\)$", r"\1 % of the \2 limit", cells[-1]),
            )
        )
    return rows


def graph_figures(text: str) -> list[tuple[str, str]]:
    rows = []
    for found in re.finditer(
        r"^level (\d+): graph used;.*?evaluation ([\d.]+) ms eager, ([\d.]+) ms graph", text, re.M
    ):
        level, eager, graph = found.groups()
        rows.append(
            (f"CUDA graph, level {level}: one evaluation", f"{eager} ms eager, {graph} ms graph")
        )
    for found in re.finditer(r"^level (\d+): graph NOT used: (.+)$", text, re.M):
        rows.append((f"CUDA graph, level {found[1]}", f"not used: {found[2]}"))
    return rows


def test_figures(text: str) -> list[tuple[str, str]]:
    found = re.findall(r"^=*\s*((?:\d+ \w+(?:, )?)+) in ([\d.]+)s", text, re.M)
    return [("real-GPU tests", f"{found[-1][0]} in {found[-1][1]} s")] if found else []


def figures(out: Path) -> list[tuple[str, str]]:
    """(figure, value) for every figure the steps left in OUT, in the steps' order."""
    return [
        *analogy_figures(read(out, ANALOGY)),
        *video_figures(read(out, VIDEO), "video 480 x 270 from 960 x 540"),
        *video_figures(read(out, VIDEO_1080P), "video 1920 x 1080 from a 480 working size"),
        *bench_figures(read(out, BENCH)),
        *graph_figures(read(out, GRAPHS)),
        *test_figures(read(out, TESTS)),
    ]


def summary(
    out: Path, steps: list[list[str]], *, dry_run: bool, commit: str, tails: Path | None = None
) -> str:
    device = device_name(out)
    lines = ["# GPU check", ""]
    if dry_run:
        lines += [
            "**Dry run: no GPU was used; every figure below is a stub's, not a measurement.**",
            "",
        ]
    lines += [f"{commit}; device: {device}", "", "| step | status | seconds | time box s |"]
    lines.append("| --- | --- | ---: | ---: |")
    lines += [
        f"| {number} {name} | {status} | {seconds} | {box} |"
        for number, name, status, seconds, box in steps
    ]
    rows = figures(out)
    lines += ["", f"## Figures ({device})", ""]
    if rows:
        lines += [
            "| figure | value |",
            "| --- | --- |",
            *(f"| {name} | {value} |" for name, value in rows),
        ]
    else:
        lines.append("No step produced a figure.")
    failing = [(number, name) for number, name, status, *_ in steps if status != "ok"]
    tests = read(out, TESTS)
    problems = re.findall(r"^(?:FAILED|ERROR) .+$", tests, re.M)
    if problems:
        lines += ["", "## Failed tests", "", "```", *problems[:40], "```"]
    for number, name in failing:
        tail = read(tails, f"step-{number}.log")[-3000:] if tails else ""
        if tail.strip():
            lines += ["", f"## Last lines of step {number} {name}", "", "```", tail.rstrip(), "```"]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("steps", type=Path)
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--commit", default="commit unknown")
    parser.add_argument("--tails", type=Path, help="folder of the failed steps' last lines")
    args = parser.parse_args()
    steps = [line.split("\t") for line in args.steps.read_text().splitlines() if line.strip()]
    text = summary(args.out, steps, dry_run=args.dry_run, commit=args.commit, tails=args.tails)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
