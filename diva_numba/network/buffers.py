"""The layers of a sub-network and the buffers of its passes, one set per input shape.

See docs/DESIGN.md section 2.

:class:`~diva_numba.network.subnetwork.SubNetwork` runs each 3x3 conv as a GEMM over im2col
columns with the weight flattened to ``(O, C * 9)`` (:class:`Conv`, made by
:func:`load_convs` from the model's weights). The optimiser evaluates the same
sub-network on the same shape about a hundred times, so every buffer a forward and
backward pass writes (the GEMM outputs, pooled maps and pooling indices, columns,
gradients, the loss) lives in a :class:`Workspace` built once for an input shape,
dtype and device, and reused across calls.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from diva_numba.errors import ModelError
from diva_numba.kernels import im2col
from diva_numba.kernels.reductions import ReductionWork
from diva_numba.kernels.targets import device_empty, is_cuda_array, kernel_array
from diva_numba.models import vgg

#: Weights of the convs: name -> (weight (O, I, 3, 3), bias (O,)), float32.
ConvWeights = Mapping[str, tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Conv:
    """One conv + ReLU (+ pool) with its weight flattened to the GEMM's ``(O, C * 9)``."""

    name: str
    weight: np.ndarray  # (O, C * 9)
    bias: np.ndarray  # (O,)
    pool: bool

    @property
    def in_channels(self) -> int:
        return self.weight.shape[1] // im2col.TAPS

    @property
    def out_channels(self) -> int:
        return self.weight.shape[0]


def load_convs(weights: ConvWeights, names: Iterable[str]) -> tuple[Conv, ...]:
    """The convs ``names`` of ``weights``, checked to chain, with GEMM-shaped weights."""
    convs = []
    for name in names:
        if name not in weights:
            raise ModelError(f"the model has no weights for {name}")
        weight, bias = (np.asarray(array) for array in weights[name])
        if weight.ndim != 4 or weight.shape[2:] != (3, 3) or bias.shape != weight.shape[:1]:
            raise ModelError(
                f"{name}: expected weight (O, I, 3, 3) and bias (O,), "
                f"got {weight.shape} and {bias.shape}"
            )
        if convs and convs[-1].out_channels != weight.shape[1]:
            raise ModelError(
                f"{name} takes {weight.shape[1]} channels but the layer before gives "
                f"{convs[-1].out_channels}"
            )
        convs.append(
            Conv(
                name,
                np.ascontiguousarray(weight.reshape(weight.shape[0], -1), dtype=np.float32),
                np.ascontiguousarray(bias, dtype=np.float32),
                name in vgg.POOL_AFTER,
            )
        )
    return tuple(convs)


class Workspace:
    """Buffers of one input shape: everything a forward + backward pass writes.

    Each buffer is kept twice over the same memory: as the array module's array (what
    the GEMMs take) and as :func:`~diva_numba.kernels.targets.kernel_array` of it (what
    the kernels are launched with, wrapped once here rather than at every launch).
    Per-layer views (columns, gradients, the GEMMs' 2-D shapes) are cut once too. On a
    GPU the buffers never move, so a CUDA graph of a pass over them stays valid as
    long as the workspace lives (:attr:`graph`).
    """

    def __init__(self, convs: tuple[Conv, ...], input_shape: tuple[int, int, int], like):
        dtype = like.dtype
        self.on_gpu = is_cuda_array(like)

        def empty(shape, dtype=dtype):
            if self.on_gpu:
                return device_empty(shape, dtype, like=like)
            return np.empty(shape, dtype=dtype)

        self.input_shapes: list[tuple[int, int, int]] = []
        #: Per conv: the GEMM output ``z`` (O, H, W), bias and ReLU not applied.
        self.pre: list = []
        self.pooled, self.argmax = [], []
        shape = input_shape
        for conv in convs:
            self.input_shapes.append(shape)
            _, height, width = shape
            self.pre.append(empty((conv.out_channels, height, width)))
            if conv.pool:
                pooled_shape = (conv.out_channels, vgg.pooled_size(height), vgg.pooled_size(width))
                self.pooled.append(empty(pooled_shape))
                self.argmax.append(empty(pooled_shape, np.int32))
                shape = pooled_shape
            else:
                self.pooled.append(None)
                self.argmax.append(None)
                shape = (conv.out_channels, height, width)
        largest_columns = max(
            channels * im2col.TAPS * height * width for channels, height, width in self.input_shapes
        )
        largest_map = max(int(np.prod(z.shape)) for z in self.pre)
        columns = empty((largest_columns,))
        # Gradients flow backwards through two alternating buffers; the gradient with
        # respect to the input has its own, since the caller receives it.
        buffers = [empty((largest_map,)), empty((largest_map,))]
        self.input_gradient = empty(input_shape)
        self.loss = empty((1,), np.float64)

        # Per conv: its columns (9 C, H W); the gradient with respect to its z, in the
        # buffer the backward pass leaves it in (the last conv's in buffer 0).
        self.columns, self.delta = [], []
        current = 0
        for index in reversed(range(len(convs))):
            out_channels, height, width = self.pre[index].shape
            self.delta.insert(0, buffers[current][: out_channels * height * width])
            current = 1 - current
        for index, (channels, height, width) in enumerate(self.input_shapes):
            self.columns.insert(
                index,
                columns[: channels * im2col.TAPS * height * width].reshape(
                    channels * im2col.TAPS, height * width
                ),
            )

        #: The GEMMs' views: per conv, ``z`` as ``(O, H W)`` and its gradient likewise.
        self.pre_2d = [z.reshape(z.shape[0], z.shape[1] * z.shape[2]) for z in self.pre]
        self.delta_2d = [
            d.reshape(z.shape[0], z.shape[1] * z.shape[2])
            for d, z in zip(self.delta, self.pre, strict=True)
        ]

        kernel = kernel_array
        self.k_pre = [kernel(z) for z in self.pre]
        self.k_pooled = [None if p is None else kernel(p) for p in self.pooled]
        self.k_argmax = [None if a is None else kernel(a) for a in self.argmax]
        self.k_columns = [kernel(c) for c in self.columns]
        self.k_delta = [
            kernel(d.reshape(z.shape)) for d, z in zip(self.delta, self.pre, strict=True)
        ]
        self.k_input_gradient = kernel(self.input_gradient)
        self.k_loss = kernel(self.loss)
        self.work = ReductionWork(like) if self.on_gpu else None
        #: The CUDA graph of this workspace's pass with its input buffers
        #: (``network_graphs.GraphSlot``), made on the first graphed evaluation.
        self.graph = None

    @property
    def output_shape(self) -> tuple[int, int, int]:
        return tuple(self.pre[-1].shape)
