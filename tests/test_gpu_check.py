"""tools/gpu-check.sh without a GPU: its ``--dry-run`` runs the step logic with CUDA stubbed.

The order of the steps, their time boxes, what a failing or hanging step leaves (the
rest still runs; the partial output stays), the file count that can be brought back
(at most 8) and SUMMARY.md, which is also the last thing printed. The figures' parser
(tools/gpu_check_summary.py) is also run on the real ``diva-numba bench`` format.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "gpu-check.sh"
ORDER = ["1", "2", "3", "4a", "4b", "4c", "5a", "5b", "6"]
DEFAULT_BUDGET = 465

sys.path.insert(0, str(ROOT / "tools"))
import gpu_check_summary  # noqa: E402


def step_table():
    """number -> (cap, minimum) as the script declares them (seconds of the default budget)."""
    rows = re.findall(r'^\s+"([0-9a-z]+)\|[^|]+\|(\d+)\|(\d+)\|[^"]+"$', SCRIPT.read_text(), re.M)
    return {number: (int(cap), int(minimum)) for number, cap, minimum in rows}


def dry_run(out: Path, **variables):
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("GPU_CHECK_", "ANALOGY_ITERS", "OUT"))
    }
    env.update(OUT=str(out), PYTHON=sys.executable, **variables)
    started = time.monotonic()
    done = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run"], env=env, capture_output=True, text=True, timeout=120
    )
    return done, time.monotonic() - started


def boxes(stderr: str) -> list[tuple[str, float]]:
    return [
        (n, float(s))
        for n, s in re.findall(r"^gpu-check: (\S+) .*: up to ([\d.]+) s$", stderr, re.M)
    ]


def summary_steps(summary: str) -> dict[str, str]:
    return dict(re.findall(r"^\| ([0-9][a-z]?) [^|]+ \| ([^|]+) \|", summary, re.M))


def test_the_dry_run_runs_every_step_in_order_within_its_box(tmp_path):
    out = tmp_path / "out"
    done, _ = dry_run(out)
    assert done.returncode == 0, done.stderr
    table = step_table()
    assert list(table) == ORDER
    found = boxes(done.stderr)
    assert [number for number, _ in found] == ORDER
    for index, (number, box) in enumerate(found):
        owed = sum(table[later][1] for later in ORDER[index + 1 :])
        assert box <= table[number][0], (number, box)
        assert box <= DEFAULT_BUDGET - owed, (number, box, owed)
    files = sorted(path.name for path in out.iterdir())
    assert len(files) <= 8 and "SUMMARY.md" in files, files
    summary = (out / "SUMMARY.md").read_text()
    assert done.stdout == summary  # the summary is printed last, and nothing else
    assert "Dry run" in summary
    assert set(summary_steps(summary).values()) == {"ok"}
    figures = ("20 L-BFGS iterations", "100 L-BFGS iterations", "seconds per later frame",
               "memory bandwidth", "kernel vote", "CUDA graph, level 2",
               "real-GPU tests")  # fmt: skip
    for figure in figures:
        assert figure in summary, figure
    assert "Stub GPU (dry run)" in summary.split("## Figures")[1].splitlines()[0]


def test_a_failing_and_a_hanging_step_stop_nothing_and_keep_their_output(tmp_path):
    out, budget = tmp_path / "out", 30
    done, seconds = dry_run(
        out,
        GPU_CHECK_BUDGET=str(budget),
        GPU_CHECK_STUB_FAIL="3",
        GPU_CHECK_STUB_HANG="4a",
    )
    assert done.returncode == 1
    assert seconds < budget
    statuses = summary_steps(done.stdout)
    assert list(statuses) == ORDER
    assert statuses["3"].startswith("FAILED")
    assert statuses["4a"].startswith("TIMEOUT")
    assert all(statuses[number] == "ok" for number in ORDER if number not in ("3", "4a"))
    assert "partial output" in (out / "analogy-448.txt").read_text()
    assert "Error: stub 3 fails" in done.stdout  # the failed step's last lines
    assert len(list(out.iterdir())) <= 8


def test_a_step_deaf_to_its_timeout_costs_the_next_ones_not_the_last(tmp_path):
    # Killed 5 s after its box, step 1 overruns a 20 s budget's share of the next steps.
    done, _ = dry_run(tmp_path / "out", GPU_CHECK_BUDGET="20", GPU_CHECK_STUB_STUCK="1")
    statuses = summary_steps(done.stdout)
    assert done.returncode == 1
    assert statuses["1"].startswith("TIMEOUT")
    assert statuses["2"].startswith("SKIPPED"), statuses
    assert statuses["6"] == "ok"  # the last steps still get their minimum


def test_a_selection_of_steps_runs_alone(tmp_path):
    done, _ = dry_run(tmp_path / "out", GPU_CHECK_STEPS="2 4")
    assert done.returncode == 0, done.stderr
    assert [number for number, _ in boxes(done.stderr)] == ["2", "4a", "4b", "4c"]


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine has a GPU driver")
def test_without_a_gpu_the_check_refuses_in_one_line(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run(
        ["bash", str(SCRIPT)], env={**os.environ, "OUT": str(out)}, capture_output=True, text=True
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "nvidia-smi not found" in done.stderr
    assert not out.exists()


def test_the_check_scripts_are_executable():
    for script in (SCRIPT, ROOT / "tools" / "cuda-toolchain-check.sh"):
        assert os.access(script, os.X_OK), script
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    listed = subprocess.run(
        ["git", "ls-files", "-s", "tools/gpu-check.sh", "tools/cuda-toolchain-check.sh"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout.split("\n")
    modes = [line.split()[0] for line in listed if line]
    assert modes == ["100755", "100755"], listed


def test_the_summary_reads_the_real_bench_table():
    done = subprocess.run(
        [sys.executable, "-m", "diva_numba", "bench", "--device", "cpu", "--size", "small",
         "--kernel", "vote", "--repeat", "1", "--markdown"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rows = dict(gpu_check_summary.bench_figures(done.stdout))
    assert "kernel bench: memory bandwidth" in rows
    votes = [value for name, value in rows.items() if name.startswith("kernel vote (")]
    assert votes and all(re.search(r" ms, [\d.]+ % of the \w+ limit$", v) for v in votes), rows
