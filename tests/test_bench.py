"""``diva-numba bench`` at tiny sizes: a sane table and JSON, no timing claims.

The whole benchmark runs once on the CPU; the CUDA path runs one small kernel under
the simulator, with a NumPy-backed stand-in for CuPy.
"""

import json
import re
import statistics
import sys
import types

import numba
import numpy as np
import pytest
from click.testing import CliRunner

from diva_numba import bench
from diva_numba.bench import backends
from diva_numba.cli.bench_command import bench as bench_command
from diva_numba.gpu.device import Device
from diva_numba.kernels import targets
from diva_numba.models import vgg

REPEAT = 2


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """The whole small benchmark, run once: (CLI result, parsed JSON)."""
    json_path = tmp_path_factory.mktemp("bench") / "small.json"
    with pytest.MonkeyPatch.context() as patch:
        # The CPU path must never import CuPy: make any attempt fail.
        patch.setitem(sys.modules, "cupy", None)
        arguments = ["--device", "cpu", "--size", "small", "--repeat", str(REPEAT)]
        result = CliRunner().invoke(bench_command, [*arguments, "--json", str(json_path)])
    assert result.exit_code == 0, result.output
    return result, json.loads(json_path.read_text())


def dims(shape_text):
    return tuple(int(size) for size in shape_text.split("x"))


def expected_work(kernel, case, shape):
    """(bytes, flops) of a case from first principles: 4-byte values read and written once."""
    if kernel in ("upsample_field", "pull_field"):
        height, width, _ = shape
        if kernel == "upsample_field":
            return 8 * height * width + 8 * (2 * height) * (2 * width), None
        return 8 * height * width + 8 * height * width + 9 * height * width, None
    channels, height, width = shape
    n, pixels = channels * height * width, height * width
    pooled = channels * ((height + 1) // 2) * ((width + 1) // 2)
    simple = {
        "normalize": 4 * (n + n),
        "response_mask": 4 * (n + pixels),
        "blend": 4 * (3 * n + pixels),
        "vote": 4 * (n + 2 * pixels + n),
        "im2col": 4 * (n + 9 * n),
        "col2im": 4 * (9 * n + n),
        "relu_forward": 4 * 2 * n,
        "relu_backward": 4 * 3 * n,
        "maxpool_forward": 4 * (n + 2 * pooled),
        "maxpool_backward": 4 * (2 * pooled + n),
        "lbfgs_dot": 4 * 2 * n,
        "lbfgs_combine": 4 * 3 * n,
        "squared_error": 4 * 3 * n,
    }
    if kernel in simple:
        return simple[kernel], None
    if kernel == "deconvolution_step":
        return None, reference_deconvolution_flops(case, shape)
    # patch_distance and patchmatch: A, A', B, B' read once, field read, distances written.
    patch = int(re.search(r" p(\d)", case).group(1))
    compulsory = 4 * 4 * n + (8 + 4) * pixels
    one_pass = 2 * 2 * channels * patch * patch * pixels  # a multiply-add per tap and pair
    if kernel == "patch_distance":
        return compulsory, one_pass
    radius = int(re.search(r" r(\d+)", case).group(1))
    iterations = int(re.search(r" x(\d+)", case).group(1))
    samples = len([r for r in (radius, radius // 2, radius // 4, radius // 8) if r >= 1])
    candidates = 4 * 4 + samples  # four neighbours at each of four jumps, then the samples
    return compulsory, one_pass * (1 + iterations * candidates)


def reference_deconvolution_flops(case, shape):
    """Forward + input-gradient GEMMs of the convs between the case's two levels."""
    start, end = (
        0 if name == "pixels" else vgg.FEATURE_LAYERS.index(name) + 1
        for name in re.match(r"(\S+) -> (\S+),", case).groups()
    )
    _, height, width = shape
    total, in_channels = 0, shape[0]
    for name in vgg.layers_between(start, end):
        out_channels = vgg.CONV_CHANNELS[name] // 16  # the small size's widths
        total += 2 * (2 * out_channels * in_channels * 9 * height * width)
        in_channels = out_channels
        if name in vgg.POOL_AFTER:
            height, width = (height + 1) // 2, (width + 1) // 2
    return total


def test_every_kernel_is_timed(small_run):
    _, report = small_run
    assert [row["kernel"] for row in report["measurements"]] == sorted(
        (row["kernel"] for row in report["measurements"]), key=bench.KERNEL_NAMES.index
    )
    assert {row["kernel"] for row in report["measurements"]} == set(bench.KERNEL_NAMES)


def test_timings_are_positive_and_summarised(small_run):
    _, report = small_run
    assert report["limits"]["bandwidth"] > 0
    assert report["limits"]["matmul_rate"] > 0
    for row in report["measurements"]:
        assert 1 <= len(row["seconds"]) <= REPEAT
        assert all(seconds > 0 for seconds in row["seconds"])
        assert row["median_seconds"] == statistics.median(row["seconds"])


def test_work_matches_the_formulas(small_run):
    _, report = small_run
    for row in report["measurements"]:
        expected = expected_work(row["kernel"], row["case"], dims(row["shape"]))
        assert (row["bytes"], row["flops"]) == expected, (row["kernel"], row["case"])


def test_rates_and_roofline_fraction_follow_from_the_work(small_run):
    _, report = small_run
    bandwidth, matmul_rate = report["limits"]["bandwidth"], report["limits"]["matmul_rate"]
    for row in report["measurements"]:
        median = row["median_seconds"]
        assert row["bytes"] is not None or row["flops"] is not None
        if row["bytes"] is None:
            assert row["bytes_per_second"] is None
        else:
            assert row["bytes_per_second"] == pytest.approx(row["bytes"] / median)
        if row["flops"] is None:
            assert row["flops_per_second"] is None
        else:
            assert row["flops_per_second"] == pytest.approx(row["flops"] / median)
        memory = (row["bytes"] or 0) / bandwidth
        compute = (row["flops"] or 0) / matmul_rate
        assert row["limit_fraction"] == pytest.approx(max(memory, compute) / median)
        assert row["bound"] == ("memory" if memory >= compute else "compute")


def test_table_has_one_row_per_case(small_run):
    result, report = small_run
    lines = result.stdout.splitlines()
    assert any(line.startswith("memory bandwidth: ") for line in lines)
    header = next(index for index, line in enumerate(lines) if line.startswith("kernel "))
    rows = lines[header + 2 :]
    assert len(rows) == len(report["measurements"])
    for line, row in zip(rows, report["measurements"], strict=True):
        assert line.split()[0] == row["kernel"]
        assert f"({row['bound']})" in line


def test_markdown_table(tmp_path):
    result = CliRunner().invoke(
        bench_command,
        ["--device", "cpu", "--size", "small", "--repeat", "1", "--kernel", "vote", "--markdown"],
    )
    assert result.exit_code == 0, result.output
    table = [line for line in result.stdout.splitlines() if line.startswith("|")]
    assert table[0].startswith("| kernel | case | shape |")
    assert set(table[1].replace("|", "").split()) <= {"---", "---:"}
    assert len(table) == 2 + 3  # header, alignment, the three vote cases
    assert len({line.count("|") for line in table}) == 1
    assert any(line.startswith("- memory bandwidth: ") for line in result.stdout.splitlines())


def test_unknown_kernel_is_a_usage_error():
    result = CliRunner().invoke(bench_command, ["--device", "cpu", "--kernel", "nonsense"])
    assert result.exit_code == 2
    assert "nonsense" in result.output


def test_unwritable_json_fails_before_timing(tmp_path):
    missing = tmp_path / "missing" / "out.json"
    result = CliRunner().invoke(
        bench_command, ["--device", "cpu", "--size", "small", "--json", str(missing)]
    )
    assert result.exit_code == 5
    assert "does not exist" in result.output
    assert "timing" not in result.output


@pytest.mark.parametrize(
    "settings",
    [{"size": "huge"}, {"repeat": 0}, {"kernels": ("vote", "nonsense")}],
)
def test_settings_are_validated(settings):
    with pytest.raises(ValueError):
        bench.BenchSettings(**settings)


def test_roofline_fraction_takes_the_binding_limit():
    limits = bench.DeviceLimits(
        bandwidth=2e9, matmul_rate=1e10, bandwidth_method="", matmul_method=""
    )
    memory_bound = bench.Measurement("k", "c", "1", (1.0, 3.0, 2.0), bytes=10**9, flops=10**9)
    assert memory_bound.median == 2.0
    assert memory_bound.floor_seconds(limits) == (0.5, "memory")
    assert memory_bound.limit_fraction(limits) == pytest.approx(0.25)
    compute_bound = bench.Measurement("k", "c", "1", (0.5,), bytes=None, flops=4 * 10**10)
    assert compute_bound.floor_seconds(limits) == (4.0, "compute")
    assert compute_bound.limit_fraction(limits) == pytest.approx(8.0)


class StandInCupyArray(np.ndarray):
    """A host array that the kernels take for a CuPy array (the simulator runs it)."""

    __module__ = "cupy"

    @property
    def __cuda_array_interface__(self):
        strides = None if self.flags.c_contiguous else self.strides
        data = (self.ctypes.data, False)
        return {"shape": self.shape, "typestr": self.dtype.str, "data": data, "strides": strides}


def stand_in_cupy(synchronizations):
    """A ``cupy`` module backed by NumPy that counts device synchronisations."""

    def on_device(function):
        def wrapper(*args, **kwargs):
            result = function(*args, **kwargs)
            return result.view(StandInCupyArray) if isinstance(result, np.ndarray) else result

        return wrapper

    module = types.ModuleType("cupy")
    module.__version__ = "stand-in"
    module.float32 = np.float32
    for name in ("asarray", "ascontiguousarray", "copyto", "empty", "empty_like", "matmul", "ones"):
        setattr(module, name, on_device(getattr(np, name)))
    runtime = types.SimpleNamespace(
        deviceSynchronize=lambda: synchronizations.append(1),
        getDeviceProperties=lambda device: {"l2CacheSize": 2**20},
        runtimeGetVersion=lambda: 0,
    )
    module.cuda = types.SimpleNamespace(runtime=runtime, Device=lambda: types.SimpleNamespace(id=0))
    return module


@pytest.mark.cudasim
def test_cuda_path(monkeypatch):
    """CuPy inputs, synchronised timing and CuPy limits, end to end on one small kernel.

    Under the simulator CuPy is a NumPy-backed stand-in; with a real GPU it is CuPy.
    """
    monkeypatch.setattr(targets, "BLOCK_2D", [8, 4])
    monkeypatch.delenv("CUPY_TF32", raising=False)
    synchronizations = []
    if numba.config.ENABLE_CUDASIM:
        monkeypatch.setitem(sys.modules, "cupy", stand_in_cupy(synchronizations))
    else:
        pytest.importorskip("cupy")
    settings = bench.BenchSettings(size="small", repeat=2, kernels=("upsample_field",))
    report = bench.run_benchmarks(Device("cuda", "GPU"), settings=settings)
    assert report.limits.bandwidth_method.startswith("best of cupy.copyto ")
    assert report.limits.matmul_method.startswith("float32 cupy.matmul 512^3, no TF32")
    (measurement,) = report.measurements
    assert measurement.kernel == "upsample_field"
    assert len(measurement.seconds) == 2
    assert all(seconds > 0 for seconds in measurement.seconds)
    assert "cupy" in report.environment
    if numba.config.ENABLE_CUDASIM:
        # Before and after each timed call: 2 limits x 5 calls, then warm-up + 2 calls.
        assert len(synchronizations) == 2 * (2 * 5 + 3)


@pytest.mark.parametrize(
    ("value", "allowed"), [(None, False), ("0", False), ("1", True), ("x", False)]
)
def test_tf32_follows_cupy_setting(monkeypatch, value, allowed):
    if value is None:
        monkeypatch.delenv("CUPY_TF32", raising=False)
    else:
        monkeypatch.setenv("CUPY_TF32", value)
    assert backends._cupy_allows_tf32() is allowed
