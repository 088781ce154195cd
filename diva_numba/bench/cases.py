"""The benchmark cases: each kernel at the analogy's real sizes, with its work floors.

Every benchmark case calls a public kernel function (or one forward + backward
pass of a VGG-19 sub-network, the step the deconvolution repeats) on inputs of the
size the pipeline gives it for a 448 x 448 image: ``relu4_1`` is 512 x 56 x 56
(patch 3), ``relu1_1`` 64 x 448 x 448 (patch 5).

Each case states the work it cannot avoid: the *compulsory* bytes (every input
read once, every output written once, from the kernel modules' ``traffic_bytes``
or ``cost`` helpers, or the formulas below for the convolution helpers) and, for
arithmetic-heavy cases, the floating-point operations.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from diva_numba.bench.backends import FLOAT_BYTES
from diva_numba.models import vgg

#: Accepted values of :attr:`~diva_numba.bench.runner.BenchSettings.size`.
SIZES = ("small", "real")

# Kernel names by the group of cases that times them, in the order they run.
_FEATURE_MAP_KERNELS = ("normalize", "response_mask", "blend")
_SEARCH_KERNELS = ("patch_distance", "patchmatch_iteration", "patchmatch")
_FIELD_KERNELS = ("vote", "upsample_field", "pull_field")
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

#: Kernel names accepted by :attr:`~diva_numba.bench.runner.BenchSettings.kernels`, in the
#: order they run.
KERNEL_NAMES = (
    *_FEATURE_MAP_KERNELS,
    *_SEARCH_KERNELS,
    *_FIELD_KERNELS,
    *_CONVOLUTION_HELPER_KERNELS,
    *_OPTIMIZER_KERNELS,
    *_DECONVOLUTION_KERNELS,
)


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


def _relu_like(rng, shape) -> np.ndarray:
    """Standard-normal float32 values with the negative ones zeroed, as after a ReLU."""
    return np.maximum(rng.standard_normal(shape, dtype=np.float32), 0)


def _features(rng, shape) -> np.ndarray:
    """Post-ReLU-like random features, L2-normalised per pixel (what the kernels see)."""
    values = _relu_like(rng, shape)
    return values / (np.sqrt((values * values).sum(axis=0)) + np.float32(1e-6))


def _normal(backend, rng, shape):
    """Standard-normal float32 values, uploaded to the backend."""
    return backend.upload(rng.standard_normal(shape, dtype=np.float32))


def _feature_maps(backend, rng, shape, count: int) -> list:
    """``count`` arrays of :func:`_features`, uploaded to the backend."""
    return [backend.upload(_features(rng, shape)) for _ in range(count)]


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
        features = backend.upload(_relu_like(rng, shape))
        return lambda: normalize.normalize_features(features)

    def mask_call(backend, rng, shape):
        features = backend.upload(_features(rng, shape))
        return lambda: normalize.response_mask(features)

    def blend_call(backend, rng, shape):
        feat_a, reconstructed = _feature_maps(backend, rng, shape, 2)
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
        maps = _feature_maps(backend, rng, shape, 4)
        field = backend.upload(_coherent_field(rng, shape[1:], shape[1:]))
        return lambda: patch_distance.patch_distance(*maps, field, patch_size=patch_size)

    def patchmatch_call(backend, rng, shape, params):
        maps = _feature_maps(backend, rng, shape, 4)
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
        source = _normal(backend, rng, shape)
        field = backend.upload(_coherent_field(rng, shape[1:], shape[1:]))
        return lambda: voting.vote(source, field, patch_size=patch_size)

    def upsample_call(backend, rng, coarse, fine):
        field = backend.upload(_coherent_field(rng, coarse, coarse))
        return lambda: nnf_resample.upsample_field(field, target_shape=fine, source_shape=fine)

    def pull_call(backend, rng, shape):
        field = backend.upload(_coherent_field(rng, shape, shape))
        flow = backend.upload(rng.uniform(-4, 4, (*shape, 2)).astype(np.float32))
        return lambda: nnf_resample.pull_field(field, flow, source_shape=shape)

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
    cases.append(
        _Case(
            "pull_field",
            "relu1_1, flow of the same size",
            (*fine, 2),
            _bind(pull_call, fine),
            bytes=nnf_resample.traffic_bytes("pull_field", field_shape=fine, flow_shape=fine),
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
        image = _normal(backend, rng, shape)
        columns = backend.upload(
            np.empty((shape[0] * im2col.TAPS, shape[1] * shape[2]), np.float32)
        )
        return lambda: im2col.im2col(image, out=columns)

    def col2im_call(backend, rng, shape):
        columns = _normal(backend, rng, (shape[0] * im2col.TAPS, shape[1] * shape[2]))
        image = backend.upload(np.empty(shape, np.float32))
        return lambda: im2col.col2im(columns, shape[1], shape[2], out=image)

    def relu_forward_call(backend, rng, shape):
        values = _normal(backend, rng, shape)
        # In place, so every call adds the bias again: keep it small.
        bias = backend.upload(rng.uniform(-0.01, 0.01, shape[0]).astype(np.float32))
        return lambda: activations.relu_forward(values, bias=bias)

    def relu_backward_call(backend, rng, shape):
        grad = _normal(backend, rng, shape)
        activation = backend.upload(_relu_like(rng, shape))
        return lambda: activations.relu_backward(grad, activation)

    def maxpool_forward_call(backend, rng, shape):
        values = _normal(backend, rng, shape)
        pooled_shape = (shape[0], vgg.pooled_size(shape[1]), vgg.pooled_size(shape[2]))
        pooled = backend.upload(np.empty(pooled_shape, np.float32))
        argmax = backend.upload(np.empty(pooled_shape, np.int32))
        return lambda: activations.maxpool_forward(values, out=pooled, argmax=argmax)

    def maxpool_backward_call(backend, rng, shape):
        values = rng.standard_normal(shape, dtype=np.float32)
        _, argmax = activations.maxpool_forward(values)
        grad_pooled = _normal(backend, rng, argmax.shape)
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
        return FLOAT_BYTES * elements

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
    from diva_numba.kernels import reductions, squared_error, vector_ops

    def vectors(backend, rng, count, length):
        return [_normal(backend, rng, length) for _ in range(count)]

    def dot_call(backend, rng, length):
        a, b = vectors(backend, rng, 2, length)
        scalars = backend.upload(np.zeros(4))
        return lambda: reductions.dot(a, b, scalars, 0)

    def combine_call(backend, rng, length):
        out, a, b = vectors(backend, rng, 3, length)
        return lambda: vector_ops.combine(out, a, b, alpha=1.0, beta=-0.5)

    def squared_error_call(backend, rng, length):
        output, target, grad = vectors(backend, rng, 3, length)
        scalars = backend.upload(np.zeros(4))
        return lambda: squared_error.squared_error(
            output, target, grad_out=grad, scalars=scalars, slot=0
        )

    shape = sizes.level(1)
    length = math.prod(shape)
    # Kernel, call, and the vectors it reads or writes once (dot: two read; combine:
    # two read, one written; squared error: two read, the gradient written).
    return [
        _Case(kernel, "relu1_1 vector", shape, _bind(call, length), bytes=FLOAT_BYTES * n * length)
        for kernel, call, n in (
            ("lbfgs_dot", dot_call, 2),
            ("lbfgs_combine", combine_call, 3),
            ("squared_error", squared_error_call, 3),
        )
    ]


def _deconvolution_cases(sizes: _Sizes) -> list[_Case]:
    """One loss-and-gradient call of each deconvolution sub-network (what L-BFGS repeats).

    Random He-initialised weights at VGG-19's widths (divided for ``small``): the
    time of dense GEMMs does not depend on the weights' values. Called as
    ``deconvolve`` calls it: on a GPU its CUDA graph is replayed (captured in the
    warm-up call), the input copied in and the target loaded once.
    """
    from diva_numba.network.subnetwork import SubNetwork

    weights = _random_weights(np.random.default_rng(0), sizes.channel_divisor)
    networks = {end: SubNetwork(weights, end - 2, end) for end in (5, 4, 3, 2)}

    def step_call(backend, rng, network, input_shape):
        x = backend.upload(_features(rng, input_shape))
        target_shape = network.output_shape(*input_shape[1:])
        target, key = _normal(backend, rng, target_shape), object()
        return lambda: network.loss_and_gradient(x, target, cuda_graph=True, target_key=key)

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


__all__ = ["KERNEL_NAMES", "SIZES", "benchmark_cases"]
