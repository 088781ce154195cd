"""Kernel microbenchmarks: each kernel at the analogy's real sizes, against the device's limits.

Every benchmark case calls a public kernel function (or one forward + backward
pass of a VGG-19 sub-network, the step the deconvolution repeats) on inputs of the
size the pipeline gives it for a 448 x 448 image: ``relu4_1`` is 512 x 56 x 56
(patch 3), ``relu1_1`` 64 x 448 x 448 (patch 5). A case is called once to compile
and warm up, then timed ``repeat`` times (fewer when a case has used up its time
budget, never fewer than once); the median is reported.

Each case states the work it cannot avoid: the *compulsory* bytes (every input
read once, every output written once, from the kernel modules' ``traffic_bytes``
or ``cost`` helpers, or the formulas below for the convolution helpers) and, for
arithmetic-heavy cases, the floating-point operations. The device's limits are
measured in the same run: memory bandwidth (the best of streaming a large array
with the array library's copy and, on the CPU, with an in-place update on all
Numba threads; read + write counted) and float32 matrix-multiply rate. A case's
*fraction of limit* is its roofline floor, ``max(bytes / bandwidth, flops /
matmul rate)``, over its median time: 100 % means the kernel runs as fast as the
device could possibly move its data or do its arithmetic.

Before every timed call the backend evicts the last-level cache (CPU L3, GPU L2)
by streaming through a buffer twice its size, so the inputs come from memory as the
traffic model assumes; otherwise maps smaller than the cache would appear to beat
the memory bandwidth. On CUDA the inputs are CuPy arrays and every timed call is
bracketed by a device synchronisation, so times include the Python launch overhead
a pipeline call pays. This module imports ``cupy`` only when asked to run on CUDA.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numba
import numpy as np

from diva_numba.device import Device
from diva_numba.models import vgg
from diva_numba.outputs import check_target, write_atomically

#: Accepted values of :attr:`BenchSettings.size`.
SIZES = ("small", "real")

# Kernel names by the group of cases that times them, in the order they run.
_FEATURE_MAP_KERNELS = ("normalize", "response_mask", "blend")
_SEARCH_KERNELS = ("patch_distance", "patchmatch_iteration", "patchmatch")
_FIELD_KERNELS = ("vote", "upsample_field", "pull_field", "push_field_targets")
_CONVOLUTION_HELPER_KERNELS = (
    "im2col",
    "col2im",
    "relu_forward",
    "relu_backward",
    "maxpool_forward",
    "maxpool_backward",
)
_OPTIMIZER_KERNELS = ("lbfgs_dot", "lbfgs_combine", "squared_error")
_DECONVOLUTION_KERNELS = ("deconvolution_step",)

#: Kernel names accepted by :attr:`BenchSettings.kernels`, in the order they run.
KERNEL_NAMES = (
    *_FEATURE_MAP_KERNELS,
    *_SEARCH_KERNELS,
    *_FIELD_KERNELS,
    *_CONVOLUTION_HELPER_KERNELS,
    *_OPTIMIZER_KERNELS,
    *_DECONVOLUTION_KERNELS,
)

_FLOAT = 4  # bytes per float32 or int32


@dataclass(frozen=True)
class BenchSettings:
    """What :func:`run_benchmarks` times, and how often.

    Attributes
    ----------
    size : {"real", "small"}
        ``real``: the sizes of a 448 x 448 image (and 224 x 224 for the
        deconvolution step). ``small``: tiny sizes with a sixteenth of the
        channels, for checking that everything runs.
    repeat : int
        Timed calls per case (after one warm-up call).
    kernels : tuple of str
        Names from :data:`KERNEL_NAMES` to run; empty runs them all.
    budget_seconds : float
        A case stops repeating once its timed calls add up to this (it always
        gets at least one), so the slowest CPU cases do not take minutes each.
    seed : int
        Seed of the random inputs.
    """

    size: str = "real"
    repeat: int = 5
    kernels: tuple[str, ...] = ()
    budget_seconds: float = 10.0
    seed: int = 0

    def __post_init__(self):
        if self.size not in SIZES:
            raise ValueError(f"size must be one of {SIZES}, got {self.size!r}")
        if self.repeat < 1:
            raise ValueError(f"repeat must be at least 1, got {self.repeat}")
        unknown = sorted(set(self.kernels) - set(KERNEL_NAMES))
        if unknown:
            raise ValueError(f"unknown kernels {unknown}; choose from {list(KERNEL_NAMES)}")


@dataclass(frozen=True)
class DeviceLimits:
    """The device's measured memory bandwidth and float32 matrix rate.

    Attributes
    ----------
    bandwidth : float
        Bytes per second streamed through a large array (read + write counted).
    matmul_rate : float
        Floating-point operations per second of a large float32 matrix product.
    bandwidth_method, matmul_method : str
        How they were measured.
    """

    bandwidth: float
    matmul_rate: float
    bandwidth_method: str
    matmul_method: str


@dataclass(frozen=True)
class Measurement:
    """The timings of one benchmark case.

    Attributes
    ----------
    kernel : str
        Name from :data:`KERNEL_NAMES`.
    case : str
        Which instance, e.g. ``relu1_1 p5``.
    shape : str
        The main input's shape.
    seconds : tuple of float
        Every timed call, in order.
    bytes : int or None
        Compulsory memory traffic.
    flops : int or None
        Floating-point operations (an upper bound where the kernel skips work).
    """

    kernel: str
    case: str
    shape: str
    seconds: tuple[float, ...]
    bytes: int | None
    flops: int | None

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def bandwidth(self) -> float | None:
        """Achieved compulsory bytes per second."""
        return None if self.bytes is None else self.bytes / self.median

    @property
    def flop_rate(self) -> float | None:
        """Achieved floating-point operations per second."""
        return None if self.flops is None else self.flops / self.median

    def floor_seconds(self, limits: DeviceLimits) -> tuple[float, str]:
        """The roofline's lower bound on the time, and which limit sets it."""
        memory = 0.0 if self.bytes is None else self.bytes / limits.bandwidth
        compute = 0.0 if self.flops is None else self.flops / limits.matmul_rate
        return (memory, "memory") if memory >= compute else (compute, "compute")

    def limit_fraction(self, limits: DeviceLimits) -> float:
        """Roofline floor over the median time (1.0: as fast as the device allows)."""
        return self.floor_seconds(limits)[0] / self.median


@dataclass(frozen=True)
class BenchReport:
    """Everything one benchmark run measured.

    Attributes
    ----------
    device : str
        Human-readable device (GPU model, or CPU model and thread count).
    settings : BenchSettings
    limits : DeviceLimits
    measurements : tuple of Measurement
    environment : dict
        Date, library versions and thread counts.
    """

    device: str
    settings: BenchSettings
    limits: DeviceLimits
    measurements: tuple[Measurement, ...]
    environment: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """A JSON-ready dictionary, with the derived rates of every case."""
        rows = []
        for measurement in self.measurements:
            row = asdict(measurement)
            row["seconds"] = list(measurement.seconds)
            _, bound = measurement.floor_seconds(self.limits)
            row.update(
                median_seconds=measurement.median,
                bytes_per_second=measurement.bandwidth,
                flops_per_second=measurement.flop_rate,
                limit_fraction=measurement.limit_fraction(self.limits),
                bound=bound,
            )
            rows.append(row)
        settings = asdict(self.settings)
        settings["kernels"] = list(self.settings.kernels)
        return {
            "device": self.device,
            "settings": settings,
            "limits": asdict(self.limits),
            "environment": self.environment,
            "measurements": rows,
        }


# =========================================================================== devices


class _CpuBackend:
    """NumPy arrays; wall-clock time of each call."""

    xp = np
    #: Size setting -> (MiB copied, matrix side) for the limits.
    limit_sizes = {"small": (4, 512), "real": (256, 2048)}
    matmul_note = ""

    def __init__(self):
        self.description = f"{_cpu_model()}, {_numba_threads()} threads"
        self._eviction_buffer = np.ones(2 * _last_level_cache_bytes() // _FLOAT, np.float32)

    @staticmethod
    def upload(array: np.ndarray):
        return np.ascontiguousarray(array)

    @staticmethod
    def bandwidth_probes(source, target) -> dict[str, Callable[[], object]]:
        """Calls that read and write one array's worth of memory each."""
        # np.copyto runs on one thread; the kernels run on all of Numba's.
        return {
            "numpy.copyto": lambda: np.copyto(target, source),
            f"in-place add on {_numba_threads()} Numba threads": lambda: _add_one(target),
        }

    def time_call(self, call: Callable[[], object]) -> float:
        # Reading twice the last-level cache evicts what the previous call left there,
        # so the kernel fetches its inputs from memory, as the traffic model assumes.
        self._eviction_buffer.sum()
        start = time.perf_counter()
        call()
        return time.perf_counter() - start


class _CudaBackend:
    """CuPy arrays; wall-clock time between device synchronisations."""

    limit_sizes = {"small": (4, 512), "real": (1024, 8192)}

    def __init__(self, device: Device):
        import cupy

        self.xp = cupy
        self.description = device.description
        properties = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        self._eviction_buffer = cupy.empty(2 * properties["l2CacheSize"] // _FLOAT, cupy.float32)
        # CuPy uses TF32 tensor cores for float32 products only when CUPY_TF32 is a
        # positive integer; the network's GEMMs run under the same setting as the limit.
        self.matmul_note = ", TF32 allowed (CUPY_TF32)" if _cupy_allows_tf32() else ", no TF32"

    def upload(self, array: np.ndarray):
        return self.xp.asarray(np.ascontiguousarray(array))

    def bandwidth_probes(self, source, target) -> dict[str, Callable[[], object]]:
        """Calls that read and write one array's worth of memory each."""
        return {"cupy.copyto": lambda: self.xp.copyto(target, source)}

    def time_call(self, call: Callable[[], object]) -> float:
        # Writing twice the L2 cache evicts what the previous call left there (see the CPU).
        self._eviction_buffer.fill(0)
        synchronize = self.xp.cuda.runtime.deviceSynchronize
        synchronize()
        start = time.perf_counter()
        call()
        synchronize()
        return time.perf_counter() - start


@numba.njit(parallel=True)
def _add_one(values):
    for index in numba.prange(values.size):
        values[index] += np.float32(1.0)


def _cupy_allows_tf32() -> bool:
    try:
        return int(os.environ.get("CUPY_TF32", "0")) > 0
    except ValueError:
        return False


def _measure_limits(backend, size: str, *, repeats: int = 5) -> DeviceLimits:
    """Best-of-``repeats`` memory bandwidth and float32 matmul rate of the backend's device."""
    xp = backend.xp
    stream_mib, side = backend.limit_sizes[size]
    source = xp.ones(stream_mib * 2**20 // _FLOAT, dtype=xp.float32)
    target = xp.empty_like(source)
    rates = {
        name: 2 * source.nbytes / _best_time(backend, call, repeats)
        for name, call in backend.bandwidth_probes(source, target).items()
    }
    a = xp.ones((side, side), dtype=xp.float32)
    b = xp.ones((side, side), dtype=xp.float32)
    product = xp.empty_like(a)
    matmul_seconds = _best_time(backend, lambda: xp.matmul(a, b, out=product), repeats)
    probes = ", ".join(f"{name} {rate / 1e9:,.1f} GB/s" for name, rate in rates.items())
    return DeviceLimits(
        bandwidth=max(rates.values()),
        matmul_rate=2 * side**3 / matmul_seconds,
        bandwidth_method=f"best of {probes}; {stream_mib} MiB, best of {repeats}",
        matmul_method=(
            f"float32 {xp.__name__}.matmul {side}^3{backend.matmul_note}, best of {repeats}"
        ),
    )


def _best_time(backend, call, count: int) -> float:
    call()
    return min(backend.time_call(call) for _ in range(count))


def _last_level_cache_bytes() -> int:
    """Size of the CPU's largest cache (from Linux's sysfs), or 32 MiB when unknown."""
    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    largest = 0
    for size_file in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        try:
            text = size_file.read_text().strip()
            largest = max(largest, int(text.rstrip("KMG")) * units.get(text[-1], 1))
        except (OSError, ValueError):
            continue
    return largest or 32 * 2**20


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "CPU"


def _numba_threads() -> int:
    return numba.config.NUMBA_NUM_THREADS


# =========================================================================== cases


@dataclass(frozen=True)
class _Case:
    """One benchmark: ``prepare(backend, rng)`` builds the inputs and returns the call."""

    kernel: str
    case: str
    shape: tuple[int, ...]
    prepare: Callable
    bytes: int | None = None
    flops: int | None = None


@dataclass(frozen=True)
class _Sizes:
    """The image side and channel widths a size setting stands for."""

    image: int
    small_image: int
    channel_divisor: int

    def level(self, level: int, image: int | None = None) -> tuple[int, int, int]:
        """``(C, H, W)`` of feature level ``level`` (0: the image) for a square image."""
        side = self.image if image is None else image
        height, width = vgg.level_shape(side, side, level)
        if level == 0:
            return 3, height, width
        channels = vgg.CONV_CHANNELS[vgg.conv_of_level(level)] // self.channel_divisor
        return channels, height, width


_SIZES = {
    "real": _Sizes(image=448, small_image=224, channel_divisor=1),
    "small": _Sizes(image=32, small_image=16, channel_divisor=16),
}

#: (level, patch size, first random-search radius) of the two feature levels timed.
_SEARCH_LEVELS = ((4, 3, 6), (1, 5, 4))


def _features(rng, shape) -> np.ndarray:
    """Post-ReLU-like random features, L2-normalised per pixel (what the kernels see)."""
    values = np.maximum(rng.standard_normal(shape, dtype=np.float32), 0)
    return values / (np.sqrt((values * values).sum(axis=0)) + np.float32(1e-6))


def _coherent_field(rng, shape, target_shape, jitter=3) -> np.ndarray:
    """Identity plus small random offsets: neighbouring matches stay close, as in practice."""
    height, width = shape
    ys, xs = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    field = np.stack([ys, xs], axis=-1) + rng.integers(-jitter, jitter + 1, (height, width, 2))
    field[..., 0] = np.clip(field[..., 0], 0, target_shape[0] - 1)
    field[..., 1] = np.clip(field[..., 1], 0, target_shape[1] - 1)
    return field.astype(np.int32)


def _random_field(rng, shape, target_shape) -> np.ndarray:
    """Matches drawn uniformly from the target."""
    ys = rng.integers(0, target_shape[0], shape)
    xs = rng.integers(0, target_shape[1], shape)
    return np.stack([ys, xs], axis=-1).astype(np.int32)


def _level_name(level: int) -> str:
    return "pixels" if level == 0 else vgg.FEATURE_LAYERS[level - 1]


def _feature_map_cases(sizes: _Sizes) -> list[_Case]:
    from diva_numba.kernels import normalize

    def normalize_call(backend, rng, shape):
        features = backend.upload(np.maximum(rng.standard_normal(shape, dtype=np.float32), 0))
        return lambda: normalize.normalize_features(features)

    def mask_call(backend, rng, shape):
        features = backend.upload(_features(rng, shape))
        return lambda: normalize.response_mask(features)

    def blend_call(backend, rng, shape):
        feat_a, reconstructed = (backend.upload(_features(rng, shape)) for _ in range(2))
        mask = backend.upload(rng.random(shape[1:], dtype=np.float32))
        return lambda: normalize.blend(feat_a, reconstructed, mask, alpha=0.7)

    cases = []
    for kernel, call in (
        ("normalize", normalize_call),
        ("response_mask", mask_call),
        ("blend", blend_call),
    ):
        traffic_name = "normalize_features" if kernel == "normalize" else kernel
        for level in (4, 1):
            shape = sizes.level(level)
            cases.append(
                _Case(
                    kernel,
                    _level_name(level),
                    shape,
                    _bind(call, shape),
                    bytes=normalize.traffic_bytes(traffic_name, features_shape=shape),
                )
            )
    return cases


def _search_cases(sizes: _Sizes) -> list[_Case]:
    from diva_numba.kernels import patch_distance, patchmatch

    def distance_call(backend, rng, shape, patch_size):
        maps = [backend.upload(_features(rng, shape)) for _ in range(4)]
        field = backend.upload(_coherent_field(rng, shape[1:], shape[1:]))
        return lambda: patch_distance.patch_distance(*maps, field, patch_size=patch_size)

    def patchmatch_call(backend, rng, shape, params):
        maps = [backend.upload(_features(rng, shape)) for _ in range(4)]
        # A random start: neighbours propose matches that differ from the current one,
        # so the first iteration evaluates nearly every candidate (the FLOP count's
        # assumption). From the identity, most candidates would be skipped as equal.
        start = backend.upload(_random_field(rng, shape[1:], shape[1:]))
        return lambda: patchmatch.patchmatch(*maps, init_field=start, params=params)

    cases = []
    for level, patch_size, radius in _SEARCH_LEVELS:
        shape = sizes.level(level)
        cost = patch_distance.cost(source_shape=shape, target_shape=shape, patch_size=patch_size)
        name = f"{_level_name(level)} p{patch_size}"
        cases.append(
            _Case(
                "patch_distance",
                name,
                shape,
                _bind(distance_call, shape, patch_size),
                bytes=cost.compulsory_bytes,
                flops=cost.flops,
            )
        )
        for kernel, iterations in (("patchmatch_iteration", 1), ("patchmatch", 10)):
            params = patchmatch.PatchMatchParams(
                patch_size=patch_size, iterations=iterations, search_radius=radius
            )
            cases.append(
                _Case(
                    kernel,
                    f"{name} r{radius} x{iterations}",
                    shape,
                    _bind(patchmatch_call, shape, params),
                    bytes=cost.compulsory_bytes,
                    flops=cost.flops * _distance_passes(params),
                )
            )
    return cases


def _distance_passes(params) -> int:
    """Patch distances per pixel of one PatchMatch run, if no candidate were skipped.

    An upper bound: a candidate equal to the current match is skipped, which gets
    common as the field converges.

    The start evaluates the initial match; each iteration tries 4 neighbours per
    jump and one sample per search radius (``r, r // 2, ..., 1``).
    """
    samples = params.search_radius.bit_length()
    propagation = 4 * len(params.jumps) if params.propagate else 0
    return 1 + params.iterations * (propagation + samples)


def _field_cases(sizes: _Sizes) -> list[_Case]:
    from diva_numba.kernels import nnf_resample, voting

    def vote_call(backend, rng, shape, patch_size):
        source = backend.upload(rng.standard_normal(shape, dtype=np.float32))
        field = backend.upload(_coherent_field(rng, shape[1:], shape[1:]))
        return lambda: voting.vote(source, field, patch_size=patch_size)

    def upsample_call(backend, rng, coarse, fine):
        field = backend.upload(_coherent_field(rng, coarse, coarse))
        return lambda: nnf_resample.upsample_field(field, target_shape=fine, source_shape=fine)

    def flow_call(backend, rng, function, shape):
        field = backend.upload(_coherent_field(rng, shape, shape))
        flow = backend.upload(rng.uniform(-4, 4, (*shape, 2)).astype(np.float32))
        if function is nnf_resample.pull_field:
            return lambda: function(field, flow, source_shape=shape)
        return lambda: function(field, flow, frame_shape=shape)

    cases = []
    for level, patch_size in ((4, 3), (1, 5), (0, 3)):
        shape = sizes.level(level)
        cases.append(
            _Case(
                "vote",
                f"{_level_name(level)} p{patch_size}",
                shape,
                _bind(vote_call, shape, patch_size),
                bytes=voting.traffic_bytes(source_shape=shape, field_shape=shape[1:]),
            )
        )
    coarse, fine = sizes.level(2)[1:], sizes.level(1)[1:]
    cases.append(
        _Case(
            "upsample_field",
            "relu2_1 -> relu1_1",
            (*coarse, 2),
            _bind(upsample_call, coarse, fine),
            bytes=nnf_resample.traffic_bytes("upsample_field", field_shape=coarse, out_shape=fine),
        )
    )
    for kernel in ("pull_field", "push_field_targets"):
        cases.append(
            _Case(
                kernel,
                "relu1_1, flow of the same size",
                (*fine, 2),
                _bind(flow_call, getattr(nnf_resample, kernel), fine),
                bytes=nnf_resample.traffic_bytes(kernel, field_shape=fine, flow_shape=fine),
            )
        )
    return cases


def _convolution_helper_cases(sizes: _Sizes) -> list[_Case]:
    """im2col, col2im, ReLU and max-pool at the inputs of conv1_2 and conv4_2 (448 image).

    Compulsory traffic (4-byte elements, ``n = C * H * W``, ``m`` pooled outputs):
    im2col and col2im ``4 * (n + 9 n)``; ReLU forward ``4 * 2n`` (in place; the bias
    is negligible); ReLU backward ``4 * 3n``; max-pool forward ``4 * (n + 2m)``
    (values, pooled values and their argmax); max-pool backward ``4 * (2m + n)``.
    """
    from diva_numba.kernels import activations, im2col

    def im2col_call(backend, rng, shape):
        image = backend.upload(rng.standard_normal(shape, dtype=np.float32))
        columns = backend.upload(
            np.empty((shape[0] * im2col.TAPS, shape[1] * shape[2]), np.float32)
        )
        return lambda: im2col.im2col(image, out=columns)

    def col2im_call(backend, rng, shape):
        columns = backend.upload(
            rng.standard_normal((shape[0] * im2col.TAPS, shape[1] * shape[2]), dtype=np.float32)
        )
        image = backend.upload(np.empty(shape, np.float32))
        return lambda: im2col.col2im(columns, shape[1], shape[2], out=image)

    def relu_forward_call(backend, rng, shape):
        values = backend.upload(rng.standard_normal(shape, dtype=np.float32))
        # In place, so every call adds the bias again: keep it small.
        bias = backend.upload(rng.uniform(-0.01, 0.01, shape[0]).astype(np.float32))
        return lambda: activations.relu_forward(values, bias=bias)

    def relu_backward_call(backend, rng, shape):
        grad = backend.upload(rng.standard_normal(shape, dtype=np.float32))
        activation = backend.upload(np.maximum(rng.standard_normal(shape, dtype=np.float32), 0))
        return lambda: activations.relu_backward(grad, activation)

    def maxpool_forward_call(backend, rng, shape):
        values = backend.upload(rng.standard_normal(shape, dtype=np.float32))
        pooled_shape = (shape[0], vgg.pooled_size(shape[1]), vgg.pooled_size(shape[2]))
        pooled = backend.upload(np.empty(pooled_shape, np.float32))
        argmax = backend.upload(np.empty(pooled_shape, np.int32))
        return lambda: activations.maxpool_forward(values, out=pooled, argmax=argmax)

    def maxpool_backward_call(backend, rng, shape):
        values = rng.standard_normal(shape, dtype=np.float32)
        _, argmax = activations.maxpool_forward(values)
        grad_pooled = backend.upload(rng.standard_normal(argmax.shape, dtype=np.float32))
        argmax = backend.upload(argmax)
        grad = backend.upload(np.empty(shape, np.float32))
        return lambda: activations.maxpool_backward(
            grad_pooled, argmax, shape[1], shape[2], out=grad
        )

    def traffic(kernel, shape):
        n = math.prod(shape)
        pooled = shape[0] * vgg.pooled_size(shape[1]) * vgg.pooled_size(shape[2])
        elements = {
            "im2col": n + im2col.TAPS * n,
            "col2im": im2col.TAPS * n + n,
            "relu_forward": 2 * n,
            "relu_backward": 3 * n,
            "maxpool_forward": n + 2 * pooled,
            "maxpool_backward": 2 * pooled + n,
        }[kernel]
        return _FLOAT * elements

    calls = {
        "im2col": im2col_call,
        "col2im": col2im_call,
        "relu_forward": relu_forward_call,
        "relu_backward": relu_backward_call,
        "maxpool_forward": maxpool_forward_call,
        "maxpool_backward": maxpool_backward_call,
    }
    conv_inputs = {"conv1_2 input": sizes.level(1), "conv4_2 input": sizes.level(4)}
    return [
        _Case(kernel, case, shape, _bind(call, shape), bytes=traffic(kernel, shape))
        for kernel, call in calls.items()
        for case, shape in conv_inputs.items()
    ]


def _optimizer_cases(sizes: _Sizes) -> list[_Case]:
    """The L-BFGS vector operations on the largest deconvolution variable (relu1_1)."""
    from diva_numba.kernels import lbfgs_ops

    def vectors(backend, rng, count, length):
        return [backend.upload(rng.standard_normal(length, dtype=np.float32)) for _ in range(count)]

    def dot_call(backend, rng, length):
        a, b = vectors(backend, rng, 2, length)
        scalars = backend.upload(np.zeros(4))
        return lambda: lbfgs_ops.dot(a, b, scalars, 0)

    def combine_call(backend, rng, length):
        out, a, b = vectors(backend, rng, 3, length)
        return lambda: lbfgs_ops.combine(out, a, b, alpha=1.0, beta=-0.5)

    def squared_error_call(backend, rng, length):
        output, target, grad = vectors(backend, rng, 3, length)
        scalars = backend.upload(np.zeros(4))
        return lambda: lbfgs_ops.squared_error(
            output, target, grad_out=grad, scalars=scalars, slot=0
        )

    shape = sizes.level(1)
    length = math.prod(shape)
    return [
        _Case("lbfgs_dot", "relu1_1 vector", shape, _bind(dot_call, length), bytes=8 * length),
        _Case(
            "lbfgs_combine", "relu1_1 vector", shape, _bind(combine_call, length), bytes=12 * length
        ),
        _Case(
            "squared_error",
            "relu1_1 vector",
            shape,
            _bind(squared_error_call, length),
            bytes=12 * length,
        ),
    ]


def _deconvolution_cases(sizes: _Sizes) -> list[_Case]:
    """One loss-and-gradient call of each deconvolution sub-network (what L-BFGS repeats).

    Random He-initialised weights at VGG-19's widths (divided for ``small``): the
    time of dense GEMMs does not depend on the weights' values.
    """
    from diva_numba.network import SubNetwork

    weights = _random_weights(np.random.default_rng(0), sizes.channel_divisor)
    networks = {end: SubNetwork(weights, end - 2, end) for end in (5, 4, 3, 2)}

    def step_call(backend, rng, network, input_shape):
        x = backend.upload(_features(rng, input_shape))
        target_shape = network.output_shape(*input_shape[1:])
        target = backend.upload(rng.standard_normal(target_shape, dtype=np.float32))
        return lambda: network.loss_and_gradient(x, target)

    cases = []
    for image in (sizes.small_image, sizes.image):
        for end_level, network in networks.items():
            start_level = end_level - 2
            shape = sizes.level(start_level, image)
            cases.append(
                _Case(
                    "deconvolution_step",
                    f"{_level_name(start_level)} -> {_level_name(end_level)}, {image} px image",
                    shape,
                    _bind(step_call, network, shape),
                    flops=network.flops(*shape[1:]),
                )
            )
    return cases


def _random_weights(rng, channel_divisor: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """He-initialised convs of VGG-19 with every width divided by ``channel_divisor``."""
    weights, in_channels = {}, 3
    for name in vgg.CONV_LAYERS:
        out_channels = vgg.CONV_CHANNELS[name] // channel_divisor
        scale = np.float32(math.sqrt(2.0 / (9 * in_channels)))
        weight = rng.standard_normal((out_channels, in_channels, 3, 3), dtype=np.float32) * scale
        weights[name] = (weight, np.zeros(out_channels, dtype=np.float32))
        in_channels = out_channels
    return weights


def _bind(call, *args):
    return lambda backend, rng: call(backend, rng, *args)


#: Case builders and the kernels whose cases each makes.
_BUILDERS = (
    (_feature_map_cases, _FEATURE_MAP_KERNELS),
    (_search_cases, _SEARCH_KERNELS),
    (_field_cases, _FIELD_KERNELS),
    (_convolution_helper_cases, _CONVOLUTION_HELPER_KERNELS),
    (_optimizer_cases, _OPTIMIZER_KERNELS),
    (_deconvolution_cases, _DECONVOLUTION_KERNELS),
)


def benchmark_cases(size: str = "real", kernels: tuple[str, ...] = ()) -> list[_Case]:
    """The cases of ``kernels`` (all when empty), in :data:`KERNEL_NAMES` order.

    Inputs are not built yet: each case's ``prepare`` does that when it runs.
    """
    sizes = _SIZES[size]
    selected = set(kernels or KERNEL_NAMES)
    cases = [
        case
        for build, names in _BUILDERS
        if selected.intersection(names)
        for case in build(sizes)
        if case.kernel in selected
    ]
    return sorted(cases, key=lambda case: KERNEL_NAMES.index(case.kernel))


# =========================================================================== running


def run_benchmarks(
    device: Device,
    *,
    settings: BenchSettings = BenchSettings(),  # noqa: B008 (frozen, so sharing it is safe)
    progress: Callable[[str], None] | None = None,
) -> BenchReport:
    """Measure the device's limits, then time every selected case.

    Parameters
    ----------
    device : Device
        ``cpu``: NumPy inputs, the ``njit`` twins. ``cuda``: CuPy inputs, the CUDA
        kernels (imports CuPy).
    settings : BenchSettings
        Sizes, repeats, kernel selection.
    progress : callable, optional
        Called with a line of text before each case.

    Returns
    -------
    BenchReport
    """
    backend = _CudaBackend(device) if device.is_cuda else _CpuBackend()
    limits = _measure_limits(backend, settings.size)
    measurements = []
    for case in benchmark_cases(settings.size, settings.kernels):
        if progress is not None:
            progress(f"timing {case.kernel} {case.case} {_shape_text(case.shape)}")
        rng = np.random.default_rng(settings.seed)
        call = case.prepare(backend, rng)
        backend.time_call(call)  # compiles, allocates workspaces, warms caches
        seconds = []
        while len(seconds) < settings.repeat and (
            not seconds or sum(seconds) < settings.budget_seconds
        ):
            seconds.append(backend.time_call(call))
        del call  # free this case's inputs before the next one builds its own
        measurements.append(
            Measurement(
                kernel=case.kernel,
                case=case.case,
                shape=_shape_text(case.shape),
                seconds=tuple(seconds),
                bytes=case.bytes,
                flops=case.flops,
            )
        )
    return BenchReport(
        device=backend.description,
        settings=settings,
        limits=limits,
        measurements=tuple(measurements),
        environment=_environment(device),
    )


def _environment(device: Device) -> dict:
    environment = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device_kind": device.kind,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "numba_threads": numba.config.NUMBA_NUM_THREADS,
        "cpu_count": os.cpu_count(),
    }
    if device.is_cuda:
        import cupy

        environment["cupy"] = cupy.__version__
        environment["cuda_runtime"] = cupy.cuda.runtime.runtimeGetVersion()
    return environment


# =========================================================================== output


_COLUMNS = (
    "kernel",
    "case",
    "shape",
    "runs",
    "median ms",
    "best ms",
    "MB",
    "GFLOP",
    "GB/s",
    "GFLOP/s",
    "% of limit",
)
#: The first columns hold text (left-aligned); the others numbers (right-aligned).
_TEXT_COLUMNS = 3


def _shape_text(shape) -> str:
    return "x".join(str(size) for size in shape)


def _number(value: float | None, unit: float, digits: int) -> str:
    """``value / unit`` with thousands separators, or ``-`` when unknown."""
    if value is None:
        return "-"
    return f"{value / unit:,.{digits}f}"


def _rows(report: BenchReport) -> list[tuple[str, ...]]:
    rows = []
    for measurement in report.measurements:
        _, bound = measurement.floor_seconds(report.limits)
        fraction = measurement.limit_fraction(report.limits)
        rows.append(
            (
                measurement.kernel,
                measurement.case,
                measurement.shape,
                str(len(measurement.seconds)),
                _number(measurement.median, 1e-3, 3),
                _number(min(measurement.seconds), 1e-3, 3),
                _number(measurement.bytes, 1e6, 1),
                _number(measurement.flops, 1e9, 2),
                _number(measurement.bandwidth, 1e9, 1),
                _number(measurement.flop_rate, 1e9, 1),
                f"{100 * fraction:.1f} ({bound})",
            )
        )
    return rows


def _header_lines(report: BenchReport) -> list[str]:
    limits = report.limits
    return [
        f"device: {report.device}",
        f"memory bandwidth: {limits.bandwidth / 1e9:,.1f} GB/s ({limits.bandwidth_method})",
        f"matmul rate: {limits.matmul_rate / 1e9:,.1f} GFLOP/s ({limits.matmul_method})",
        f"sizes: {report.settings.size}; median of up to {report.settings.repeat} timed calls "
        "after a warm-up call",
    ]


def format_table(report: BenchReport) -> str:
    """The report as aligned plain text: a few header lines, then one row per case."""
    rows = [_COLUMNS, *_rows(report)]
    widths = [max(len(row[column]) for row in rows) for column in range(len(_COLUMNS))]

    def line(row):
        cells = (
            cell.ljust(width) if index < _TEXT_COLUMNS else cell.rjust(width)
            for index, (cell, width) in enumerate(zip(row, widths, strict=True))
        )
        return "  ".join(cells).rstrip()

    body = [line(rows[0]), "  ".join("-" * width for width in widths), *map(line, rows[1:])]
    return "\n".join([*_header_lines(report), "", *body])


def format_markdown(report: BenchReport) -> str:
    """The report as a Markdown list of the limits and a GitHub table, for BENCHMARKS.md."""
    header = [f"- {line}" for line in _header_lines(report)]
    alignment = ["---" if index < _TEXT_COLUMNS else "---:" for index in range(len(_COLUMNS))]
    table = ["| " + " | ".join(row) + " |" for row in (_COLUMNS, tuple(alignment), *_rows(report))]
    return "\n".join([*header, "", *table])


def write_json(report: BenchReport, path: Path) -> None:
    """Write :meth:`BenchReport.to_dict` to ``path`` (replaced whole, never half-written).

    Raises
    ------
    OutputError
        If the file cannot be written.
    """
    path = Path(path)
    check_target(path, overwrite=True)
    write_atomically(path, (json.dumps(report.to_dict(), indent=2) + "\n").encode())


__all__ = [
    "KERNEL_NAMES",
    "SIZES",
    "BenchReport",
    "BenchSettings",
    "DeviceLimits",
    "Measurement",
    "benchmark_cases",
    "format_markdown",
    "format_table",
    "run_benchmarks",
    "write_json",
]
