"""VGG-19 sub-networks run forward and backward as GEMMs, for the deconvolution step.

See docs/DESIGN.md section 2.

The deconvolution of the analogy looks for a feature map ``R`` at level ``L - 2``
whose image through the network, ``CNN_{L-2 -> L}(R)``, is close to a target at
level ``L``. :class:`SubNetwork` is that piece of VGG-19 with fixed weights: its
forward pass, and the gradient of ``sum((CNN(R) - target)**2)`` with respect to
``R`` (weights are fixed, so no weight gradients are formed).

Each 3x3 convolution (padding 1) is a GEMM over im2col columns::

    Y = W.reshape(O, C * 9) @ im2col(X) + b          # (O, H * W)
    dX = col2im(W.reshape(O, C * 9).T @ dY)           # (C, H, W)

with ReLU after every conv and a 2x2 ceil-mode max-pool after the convs in
:data:`diva_numba.models.vgg.POOL_AFTER`. The GEMMs are ``matmul`` of the array's own
module (NumPy's BLAS on the CPU, cuBLAS through CuPy on the GPU); im2col/col2im,
ReLU, pooling and the loss are the Numba kernels of :mod:`diva_numba.kernels`.
Everything runs in the dtype of the input (float32 normally; float64 for checks).

Each layer costs one Numba launch each way around its two GEMMs: a conv's output
is kept as the GEMM wrote it (``z``, before bias and ReLU), and the kernel that next
reads it applies them on the fly (im2col of the next conv, the pool, the loss;
backwards, col2im gates the gradient through the ReLU and, after a pool, through the
pool too). The fused kernels compute exactly what the separate ones would, so the
results are bitwise those of bias-ReLU-pool-im2col run one by one. A
loss-and-gradient evaluation of ``n`` convs and ``p`` pools is ``2 n`` GEMMs and
``2 n + p + 1`` Numba launches; on a GPU, :func:`deconvolve` replays them as one CUDA
graph per workspace, its input copied into the workspace first
(:mod:`diva_numba.network.graphs`): two launches per evaluation.

Level ``0`` is the preprocessed image, level ``L`` (1..5) the output of
``reluL_1``. The optimiser evaluates the same sub-network on the same shape about a
hundred times, so every buffer (activations, pooling indices, columns, gradients)
lives in a workspace keyed on the input's shape, dtype and device, reused across
calls (:mod:`diva_numba.network.buffers`, with the layers' GEMM-shaped weights).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

import numpy as np

from diva_numba.gpu.device import array_module
from diva_numba.gpu.launch_graphs import LaunchQueue, ReplayCheck, array_queue
from diva_numba.kernels import activations, im2col, squared_error
from diva_numba.kernels.targets import is_cuda_array, kernel_array
from diva_numba.models import vgg
from diva_numba.network.buffers import ConvWeights, Workspace, load_convs
from diva_numba.network.graphs import graphed_loss_and_gradient
from diva_numba.optim.lbfgs import LBFGSParams, LBFGSResult, minimize_lbfgs

#: All feature levels, finest first.
FEATURE_LEVELS: tuple[int, ...] = tuple(range(1, len(vgg.FEATURE_LAYERS) + 1))


class SubNetwork:
    """The VGG-19 layers between two feature levels, with fixed weights.

    Parameters
    ----------
    weights : mapping
        Conv name -> ``(weight, bias)``: float32 ``(O, I, 3, 3)`` and ``(O,)``, as read
        from the ONNX model. Only the convs between the levels are used.
    start_level, end_level : int
        ``0 <= start_level < end_level <= 5``. Level 0 is the preprocessed image,
        level ``L`` the output of ``reluL_1``. The analogy's deconvolutions use
        (3, 5), (2, 4), (1, 3) and (0, 2).
    max_workspaces : int
        Input shapes whose buffers are kept (least recently used dropped first).

    Raises
    ------
    ModelError
        If a conv is missing from ``weights`` or the shapes do not chain.

    Notes
    -----
    Arrays may be NumPy (CPU) or CuPy (GPU); outputs live on the input's device and
    have its dtype (float32, or float64 for gradient checks). Weights are copied to
    the GPU, in the needed dtype, on first use.
    """

    def __init__(
        self, weights: ConvWeights, start_level: int, end_level: int, *, max_workspaces: int = 2
    ):
        self.start_level = start_level
        self.end_level = end_level
        self.layers = vgg.layers_between(start_level, end_level)
        self._convs = load_convs(weights, self.layers)
        self._parameters: dict[tuple[bool, str], list[tuple[object, object]]] = {}
        self._workspaces: OrderedDict[tuple, Workspace] = OrderedDict()
        self._max_workspaces = max_workspaces
        #: Why CUDA graphs are off for this network ("" while they may be used).
        self.graph_problem = ""
        #: The latest first replay's comparison with the eager evaluation, if any.
        self.graph_check: ReplayCheck | None = None

    def __repr__(self) -> str:
        return (
            f"SubNetwork(level {self.start_level} -> {self.end_level}: "
            f"{self.layers[0]}..{self.layers[-1]})"
        )

    @property
    def in_channels(self) -> int:
        """Channels of the input map (3 for level 0)."""
        return self._convs[0].in_channels

    @property
    def out_channels(self) -> int:
        """Channels of the output map."""
        return self._convs[-1].out_channels

    def output_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """Shape ``(C', H', W')`` of the output for an ``height x width`` input map."""
        for conv in self._convs:
            if conv.pool:
                height, width = vgg.pooled_size(height), vgg.pooled_size(width)
        return self.out_channels, height, width

    def flops(self, height: int, width: int, *, backward: bool = True) -> int:
        """Floating-point operations of the GEMMs for an ``height x width`` input map.

        A conv costs ``2 * O * C * 9 * H * W`` forward and the same again for the
        gradient with respect to its input (``backward=True``, i.e. one call of
        :meth:`loss_and_gradient`). Element-wise work (im2col, ReLU, pooling) is not
        counted.
        """
        total = 0
        for conv in self._convs:
            total += 2 * conv.weight.size * height * width
            if conv.pool:
                height, width = vgg.pooled_size(height), vgg.pooled_size(width)
        return total * (2 if backward else 1)

    def release_workspaces(self) -> None:
        """Drop every cached buffer (they are rebuilt on the next call)."""
        self._workspaces.clear()

    # -- passes ------------------------------------------------------------------------

    def forward(self, x):
        """Output of the sub-network.

        Parameters
        ----------
        x : float32 or float64 array, shape (C, H, W), NumPy or CuPy
            Feature map at ``start_level`` (the preprocessed image for level 0).

        Returns
        -------
        array, shape :meth:`output_shape` ``(H, W)``, same dtype and device
            A new array (feature map at ``end_level``).
        """
        return self.forward_levels(x, (self.end_level,))[0]

    def forward_levels(self, x, levels: Iterable[int]) -> tuple:
        """Feature maps at several levels in one pass.

        Parameters
        ----------
        x : float32 or float64 array, shape (C, H, W), NumPy or CuPy
            Feature map at ``start_level``.
        levels : iterable of int
            Levels ``start_level < level <= end_level``, in any order.

        Returns
        -------
        tuple of arrays
            One new ``(C_l, H_l, W_l)`` array per requested level, in the order asked.
        """
        levels = tuple(levels)
        for level in levels:
            if not self.start_level < level <= self.end_level:
                raise ValueError(
                    f"level {level} is not produced by levels {self.start_level} -> "
                    f"{self.end_level}"
                )
        x, workspace = self._prepare(x)
        xp = array_module(x)
        self._forward(kernel_array(x), workspace, array_queue(xp))
        parameters = self._device_parameters(x)
        maps = []
        for level in levels:
            index = self.layers.index(vgg.conv_of_level(level))
            out = xp.empty(workspace.pre[index].shape, dtype=x.dtype)
            # The level's ReLU output, written once into a new array.
            activations.relu_forward(
                workspace.k_pre[index], bias=parameters[index][2], out=kernel_array(out)
            )
            maps.append(out)
        return tuple(maps)

    def loss_and_gradient(self, x, target, *, cuda_graph: bool = False, target_key=None):
        """Deconvolution loss ``sum((forward(x) - target)**2)`` and its gradient in ``x``.

        The loss is the plain sum of squares (no 1/2): the gradient is
        ``2 J^T (forward(x) - target)``. :func:`deconvolve` stops on the gradient of
        exactly this loss.

        Parameters
        ----------
        x : float32 or float64 array, shape (C, H, W), NumPy or CuPy
        target : array, shape :meth:`output_shape`, same dtype and device
        cuda_graph : bool, default False
            On a GPU, replay the evaluation as the workspace's CUDA graph (captured and
            checked against an eager run on first use; eager launches if that fails,
            with a notice, and from then on for this network: :attr:`graph_problem`).
            Ignored on the CPU.
        target_key : object, optional
            With ``cuda_graph``: a caller that evaluates one target again and again
            passes one key for it, and the target is copied into the graph's buffer
            only when the key changes (so the target must not change under one key).
            Without a key it is copied at every call.

        Returns
        -------
        loss : float on the CPU; a one-element float64 GPU array on the GPU
            (reading it, ``float(loss[0])``, waits for the GPU; the optimiser reads it
            together with its own scalars instead).
        grad : array, shape (C, H, W), same dtype and device as ``x``
            Valid until the next call on an input of this shape (a workspace buffer).
        """
        x, workspace = self._prepare(x)
        if tuple(target.shape) != workspace.output_shape or target.dtype != x.dtype:
            raise ValueError(
                f"target must be {x.dtype} {workspace.output_shape}, "
                f"got {target.dtype} {tuple(target.shape)}"
            )
        if workspace.on_gpu and cuda_graph and not self.graph_problem:
            return graphed_loss_and_gradient(self, workspace, x, target, target_key)
        queue = array_queue(array_module(x))
        self._evaluate(workspace, kernel_array(x), kernel_array(target), queue)
        loss = workspace.loss if workspace.on_gpu else float(workspace.loss[0])
        return loss, workspace.input_gradient

    @property
    def graph_status(self) -> str:
        """One line on this network's CUDA graphs: off, checked, or why they were given up."""
        if self.graph_problem:
            return f"CUDA graphs given up: {self.graph_problem}"
        if self.graph_check is None:
            return "no CUDA graph captured"
        return f"CUDA graph in use; its first replay matched the eager pass ({self.graph_check})"

    # -- internals -----------------------------------------------------------------------

    def _prepare(self, x):
        if x.ndim != 3 or x.shape[0] != self.in_channels:
            raise ValueError(f"expected a ({self.in_channels}, H, W) map, got {tuple(x.shape)}")
        if x.dtype not in (np.float32, np.float64):
            raise ValueError(f"expected float32 or float64, got {x.dtype}")
        x = array_module(x).ascontiguousarray(x)
        key = (tuple(x.shape), x.dtype.str, is_cuda_array(x))
        workspace = self._workspaces.pop(key, None)
        if workspace is None:
            while len(self._workspaces) >= self._max_workspaces:
                self._workspaces.popitem(last=False)
            workspace = Workspace(self._convs, tuple(x.shape), like=x)
        self._workspaces[key] = workspace
        return x, workspace

    def _device_parameters(self, like) -> list[tuple[object, object, object]]:
        """``(weight (O, C*9), bias (O,), bias for launches)`` per conv, on ``like``'s device."""
        key = (is_cuda_array(like), like.dtype.str)
        if key not in self._parameters:
            xp = array_module(like)
            parameters = []
            for conv in self._convs:
                weight = xp.asarray(conv.weight, dtype=like.dtype)
                bias = xp.asarray(conv.bias, dtype=like.dtype)
                parameters.append((weight, bias, kernel_array(bias)))
            self._parameters[key] = parameters
        return self._parameters[key]

    def _evaluate(self, workspace: Workspace, x, target, queue: LaunchQueue) -> None:
        """Loss and input gradient of ``x`` into the workspace, queued on ``queue``.

        ``x`` and ``target`` are kernel arrays (``targets.kernel_array``); a CUDA graph
        captures exactly this sequence (:mod:`diva_numba.network.graphs`).
        """
        self._forward(x, workspace, queue)
        channels = workspace.output_shape[0]
        last = len(self._convs) - 1
        # The last conv's bias and ReLU, the loss and its gradient: one kernel.
        squared_error.relu_squared_error(
            workspace.k_pre[last].reshape(channels, -1),
            self._device_parameters(x)[last][2],
            target.reshape(channels, -1),
            grad_out=workspace.k_delta[last].reshape(channels, -1),
            scalars=workspace.k_loss,
            slot=0,
            work=workspace.work,
            stream=queue.stream,
        )
        self._backward(workspace, queue)

    def _forward(self, x, workspace: Workspace, queue: LaunchQueue) -> None:
        """Every conv's GEMM output ``z`` (and the pools), bias and ReLU left to the readers.

        ``x`` is a kernel array; everything is queued on ``queue``.
        """
        layer_input, input_bias = x, None
        for index, (weight, _, bias) in enumerate(self._device_parameters(x)):
            # relu(z + b) of the previous conv, unfolded for this one (plain for the input
            # and after a pool, whose output is already a ReLU's).
            im2col.im2col(
                layer_input, out=workspace.k_columns[index], bias=input_bias, stream=queue.stream
            )
            queue.matmul(weight, workspace.columns[index], workspace.pre_2d[index])
            if workspace.pooled[index] is None:
                layer_input, input_bias = workspace.k_pre[index], bias
            else:
                activations.maxpool_forward(
                    workspace.k_pre[index],
                    bias=bias,
                    out=workspace.k_pooled[index],
                    argmax=workspace.k_argmax[index],
                    stream=queue.stream,
                )
                layer_input, input_bias = workspace.k_pooled[index], None

    def _backward(self, workspace: Workspace, queue: LaunchQueue) -> None:
        """Gradient with respect to the input, from ``workspace.delta[-1]`` (that of the last z)."""
        parameters = self._device_parameters(workspace.input_gradient)
        stream = queue.stream
        for index in reversed(range(len(parameters))):
            weight = parameters[index][0]
            height, width = workspace.pre[index].shape[1:]
            columns = workspace.k_columns[index]
            queue.matmul(
                weight, workspace.delta_2d[index], workspace.columns[index], transpose_a=True
            )
            if index == 0:
                im2col.col2im(columns, height, width, out=workspace.k_input_gradient, stream=stream)
                continue
            below = index - 1
            bias = parameters[below][2]
            if workspace.argmax[below] is None:
                im2col.col2im(
                    columns,
                    height,
                    width,
                    out=workspace.k_delta[below],
                    pre_activation=workspace.k_pre[below],
                    bias=bias,
                    stream=stream,
                )
            else:
                im2col.col2im_unpool(
                    columns,
                    workspace.k_argmax[below],
                    workspace.k_pre[below],
                    bias,
                    out=workspace.k_delta[below],
                    stream=stream,
                )


def deconvolve(
    network: SubNetwork,
    target,
    initial,
    *,
    params: LBFGSParams = LBFGSParams(),  # noqa: B008 (frozen, so sharing it is safe)
    cuda_graph: bool = True,
) -> LBFGSResult:
    """Find ``R`` with ``network.forward(R)`` close to ``target`` (least squares, L-BFGS).

    Parameters
    ----------
    network : SubNetwork
        Usually levels ``L - 2 -> L``.
    target : float32 array, shape ``network.output_shape(H, W)``, NumPy or CuPy
        The wanted features at ``network.end_level``.
    initial : float32 array, shape (C, H, W), same device
        Starting point at ``network.start_level`` (not modified).
    params : LBFGSParams
        The defaults are the official code's: history 4, 100 iterations, stop when
        ``|g|^2 < 1e-8 max(|R|^2, 1)`` with ``g`` the gradient of
        ``sum((forward(R) - target)**2)``.
    cuda_graph : bool, default True
        On a GPU, each evaluation replays the workspace's CUDA graph
        (:meth:`SubNetwork.loss_and_gradient`); ignored on the CPU. ``target`` must not
        change during the call.

    Returns
    -------
    LBFGSResult
        ``result.x`` is ``R``, shaped like ``initial``.
    """
    key = object()  # this call's target, copied into a graph's buffer once
    return minimize_lbfgs(
        lambda x: network.loss_and_gradient(x, target, cuda_graph=cuda_graph, target_key=key),
        initial,
        params=params,
    )
