"""The loss of neural style (Gatys et al. 2016) with Ruder et al.'s temporal term, and its gradient.

For an image ``x`` (the network's input, level 0: ``(3, H, W)``) the loss is::

    content(x)  = sum((F - P)**2) / (C N)                F: x's features at the content layer
    style_l(x)  = sum((G_l - A_l)**2) / C_l**2           G = F F^T / (C N), A: the style's
    tv(x)       = (sum dx**2 + sum dy**2) / (3 H W)      neighbouring pixels' differences
    temporal(x) = sum_j sum(c_j (x - w_j)**2) / (3 H W)  w_j: an earlier output moved
                                                          here, c_j in [0, 1] where trusted

    loss = content + style_weight * sum_l w_l style_l + tv_weight * tv
           + temporal_weight * temporal

with ``F`` a ``(C, N)`` map (``N = H_l W_l`` pixels), Gram matrices normalised as in
Johnson's and Ruder et al.'s code. The gradients in the features are GEMMs::

    d content / dF = 2 (F - P) / (C N)
    d style_l / dF = 4 (G - A) F / (C**3 N)

gated through each layer's ReLU and added into the backward pass where it passes
that layer (:class:`StyleNetwork`): one forward pass through every conv the loss
needs (conv1_1 .. conv5_1 for the defaults) and one backward pass, on the
network's GEMMs and Numba kernels (:class:`~diva_numba.network.SubNetwork`), for
the whole loss. Everything runs on the input's device and in its dtype (float32;
float64 for the gradient checks), the sums in float64.

On a GPU the evaluation is launched kernel by kernel, not replayed as a CUDA graph:
the loss' own terms are CuPy expressions, which allocate, and at the sizes this
method runs (256 px and up) an evaluation is some 50 GFLOP of GEMMs, milliseconds
against the microseconds its hundred launches cost the host.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from diva_numba.gpu.device import array_module
from diva_numba.gpu.launch_graphs import array_queue
from diva_numba.kernels import activations
from diva_numba.kernels.targets import kernel_array
from diva_numba.models import vgg
from diva_numba.network.buffers import ConvWeights
from diva_numba.network.subnetwork import SubNetwork
from diva_numba.neural_style.params import STYLE_LAYERS, NeuralStyleParams


def conv_of(layer: str) -> str:
    """The conv whose ReLU output is ``layer`` (``relu4_2`` -> ``conv4_2``)."""
    if not layer.startswith("relu") or "conv" + layer[4:] not in vgg.CONV_LAYERS:
        raise ValueError(f"{layer!r} is no ReLU layer of the network")
    return "conv" + layer[4:]


class StyleNetwork(SubNetwork):
    """VGG-19 from the image up to the deepest layer a loss reads, with taps on chosen ReLUs.

    Parameters
    ----------
    weights : mapping
        Conv name -> ``(weight, bias)``, as for :class:`~diva_numba.network.SubNetwork`.
    layers : sequence of str
        The ReLU layers read (``relu1_1`` .. ``relu5_1``); the network stops at the
        deepest.
    """

    def __init__(self, weights: ConvWeights, layers: Sequence[str]):
        super().__init__(weights, 0, 5, max_workspaces=2)
        indices = sorted({self.layers.index(conv_of(layer)) for layer in layers})
        deepest = indices[-1]
        # The convs above the deepest tap would be computed for nothing.
        self.layers = self.layers[: deepest + 1]
        self._convs = self._convs[: deepest + 1]
        self.tap_index = {layer: self.layers.index(conv_of(layer)) for layer in layers}

    def tap_features(self, x, workspace=None) -> dict[str, object]:
        """The ReLU outputs at the taps, each a new ``(C, N)`` array (one forward pass).

        Parameters
        ----------
        x : float32 or float64 array, shape (3, H, W), NumPy or CuPy
            The preprocessed image.
        workspace : Workspace, optional
            Its buffers, from ``_prepare(x)``; made here when omitted.
        """
        if workspace is None:
            x, workspace = self._prepare(x)
        xp = array_module(x)
        self._forward(kernel_array(x), workspace, array_queue(xp))
        parameters = self._device_parameters(x)
        features = {}
        for layer, index in self.tap_index.items():
            pre = workspace.pre[index]
            out = xp.empty(pre.shape, dtype=x.dtype)
            activations.relu_forward(
                workspace.k_pre[index], bias=parameters[index][2], out=kernel_array(out)
            )
            features[layer] = out.reshape(pre.shape[0], -1)
        return features

    def backward_from(self, workspace, gradients: dict[int, object]):
        """Input gradient of a loss whose gradient in conv ``i``'s ReLU output is ``gradients[i]``.

        Parameters
        ----------
        workspace : Workspace
            After :meth:`tap_features` on it (the forward pass' buffers).
        gradients : dict int -> array (C_i, N_i)
            Already gated through conv ``i``'s ReLU (zero where its output is 0).

        Returns
        -------
        array (3, H, W)
            The workspace's input gradient buffer.
        """
        xp = array_module(workspace.input_gradient)
        last = len(self._convs) - 1
        if last in gradients:
            workspace.delta_2d[last][...] = gradients[last]
        else:
            workspace.delta_2d[last].fill(0)

        def inject(index: int) -> None:
            if index in gradients:
                xp.add(workspace.delta_2d[index], gradients[index], out=workspace.delta_2d[index])

        self._backward(workspace, array_queue(xp), inject)
        return workspace.input_gradient


def gram(features):
    """``F F^T / (C N)`` of a ``(C, N)`` map: a ``(C, C)`` GEMM, same dtype and device."""
    channels, pixels = features.shape
    return (features @ features.T) / (channels * pixels)


def style_term(features, target_gram):
    """One layer's style loss and its gradient in the features.

    Parameters
    ----------
    features : array (C, N)
    target_gram : array (C, C), same dtype and device
        The style image's :func:`gram` at this layer.

    Returns
    -------
    loss : float64 0-d array on the features' device
        ``sum((G - A)**2) / C**2``.
    grad : array (C, N)
        ``4 (G - A) F / (C**3 N)``, two GEMMs.
    """
    xp = array_module(features)
    channels, pixels = features.shape
    difference = gram(features) - target_gram
    loss = xp.sum(difference * difference, dtype=xp.float64) / channels**2
    grad = (difference @ features) * (4.0 / (channels**3 * pixels))
    return loss, grad


def content_term(features, target):
    """``sum((F - P)**2) / (C N)`` and its gradient ``2 (F - P) / (C N)``."""
    xp = array_module(features)
    difference = features - target
    count = difference.size
    return xp.sum(difference * difference, dtype=xp.float64) / count, difference * (2.0 / count)


def total_variation(x):
    """``(sum dx**2 + sum dy**2) / (3 H W)`` of a ``(3, H, W)`` image, and its gradient."""
    xp = array_module(x)
    count = x.size
    dx = x[:, :, 1:] - x[:, :, :-1]
    dy = x[:, 1:, :] - x[:, :-1, :]
    loss = (xp.sum(dx * dx, dtype=xp.float64) + xp.sum(dy * dy, dtype=xp.float64)) / count
    grad = xp.zeros_like(x)
    scale = 2.0 / count
    grad[:, :, 1:] += dx * scale
    grad[:, :, :-1] -= dx * scale
    grad[:, 1:, :] += dy * scale
    grad[:, :-1, :] -= dy * scale
    return loss, grad


def temporal_term(x, targets: Sequence[tuple[object, object]]):
    """Ruder et al.'s temporal loss ``sum_j sum(c_j (x - w_j)**2) / (3 H W)`` and its gradient.

    Parameters
    ----------
    x : array (3, H, W)
    targets : sequence of ``(w_j, c_j)``
        ``w_j`` an earlier output moved into this frame, ``(3, H, W)``; ``c_j`` its
        weight per pixel, ``(H, W)`` in [0, 1], same dtype and device.
    """
    xp = array_module(x)
    count = x.size
    loss = xp.zeros((), dtype=xp.float64)
    grad = xp.zeros_like(x)
    for warped, weight in targets:
        difference = x - warped
        weighted = difference * weight[None]
        loss = loss + xp.sum(weighted * difference, dtype=xp.float64) / count
        grad += weighted * (2.0 / count)
    return loss, grad


class NeuralStyleLoss:
    """The whole loss of one image, callable as ``x -> (loss, grad)`` for the optimiser.

    Parameters
    ----------
    network : StyleNetwork
        With taps on the style layers and the content layer of ``params``.
    style : array (3, Hs, Ws)
        The preprocessed style image, in the dtype and on the device of the images
        to optimise.
    params : NeuralStyleParams

    Notes
    -----
    Set the frame with :meth:`set_content` (and :meth:`set_temporal` for a later
    frame of a video) before calling. The gradient returned is a buffer of the
    network's workspace, valid until the next call.
    """

    def __init__(self, network: StyleNetwork, style, params: NeuralStyleParams):
        self.network = network
        self.params = params
        features = network.tap_features(style)
        self.style_grams = {layer: gram(features[layer]) for layer in STYLE_LAYERS}
        self.content_target = None
        self.temporal_targets: list[tuple[object, object]] = []

    @classmethod
    def build(cls, weights: ConvWeights, style, params: NeuralStyleParams) -> NeuralStyleLoss:
        """The network with the taps ``params`` needs, and the loss on it."""
        network = StyleNetwork(weights, (*STYLE_LAYERS, params.content_layer))
        return cls(network, style, params)

    def set_content(self, content) -> None:
        """The frame to stylise, ``(3, H, W)`` preprocessed: its features at the content layer."""
        self.content_target = self.network.tap_features(content)[self.params.content_layer]

    def set_temporal(self, targets: Sequence[tuple[object, object]]) -> None:
        """Earlier outputs moved into this frame, ``(w_j (3, H, W), c_j (H, W))``; () for none."""
        self.temporal_targets = list(targets)

    def __call__(self, x):
        return self.loss_and_gradient(x)

    def loss_and_gradient(self, x):
        """The loss and its gradient, for :func:`~diva_numba.lbfgs.minimize_lbfgs`.

        The loss is a float on the CPU, a one-element float64 array on a GPU.
        """
        terms, grad = self._evaluate(x)
        total = sum(terms.values())
        xp = array_module(grad)
        if xp is np:
            return float(total), grad
        return xp.asarray(total, dtype=xp.float64).reshape(1), grad

    def terms(self, x) -> dict[str, float]:
        """Each term of the loss at ``x``, weighted, as host floats (for reports and tests)."""
        from diva_numba.gpu.device import to_host

        terms, _ = self._evaluate(x)
        return {name: float(to_host(value)) for name, value in terms.items()}

    def _evaluate(self, x):
        if self.content_target is None:
            raise ValueError("set_content() first: the loss needs the frame to stylise")
        params = self.params
        network = self.network
        x, workspace = network._prepare(x)
        features = network.tap_features(x, workspace)
        gradients: dict[int, object] = {}

        def add(layer: str, grad) -> None:
            index = network.tap_index[layer]
            gradients[index] = grad if index not in gradients else gradients[index] + grad

        terms = {}
        content_loss, content_grad = content_term(
            features[params.content_layer], self.content_target
        )
        terms["content"] = content_loss
        add(params.content_layer, content_grad)
        style_loss = 0.0
        for layer, layer_weight in zip(STYLE_LAYERS, params.style_layer_weights, strict=True):
            if layer_weight == 0 or params.style_weight == 0:
                continue
            loss, grad = style_term(features[layer], self.style_grams[layer])
            weight = params.style_weight * layer_weight
            style_loss = style_loss + weight * loss
            add(layer, grad * weight)
        terms["style"] = style_loss
        for layer, index in network.tap_index.items():
            if index in gradients:  # through the ReLU: nothing where its output is 0
                gradients[index] = gradients[index] * (features[layer] > 0)
        grad = network.backward_from(workspace, gradients)
        if params.tv_weight:
            loss, tv_grad = total_variation(x)
            terms["tv"] = params.tv_weight * loss
            grad += tv_grad * params.tv_weight
        if params.temporal_weight and self.temporal_targets:
            loss, temporal_grad = temporal_term(x, self.temporal_targets)
            terms["temporal"] = params.temporal_weight * loss
            grad += temporal_grad * params.temporal_weight
        return terms, grad
