"""Neural style on images: Gatys et al.'s optimisation of the pixels, with L-BFGS.

See docs/DESIGN.md section 11.

:class:`NeuralStyler` holds what stays fixed while a style is applied (the network,
the style's Gram matrices) and optimises one image at a time
(:meth:`NeuralStyler.optimise`): the loss of :mod:`diva_numba.neural_style.loss`, minimised
with the project's L-BFGS (:func:`~diva_numba.lbfgs.minimize_lbfgs`) from the frame
itself, noise, or a given start (a video's previous output moved along the flow).
:func:`stylise_image` is that on arrays; :func:`stylise` on files, as
``diva-numba stylise`` runs it.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from diva_numba.errors import DivaError, OutputError
from diva_numba.finishing.compositing import Mask, preserve_colour
from diva_numba.gpu.device import Device, resolve_device, to_device, to_host
from diva_numba.image_analogy.deep_analogy import AnalogyModel, load_model
from diva_numba.images import load_image, resize, save_image, working_size
from diva_numba.neural_style.loss import NeuralStyleLoss
from diva_numba.neural_style.params import NeuralStyleParams
from diva_numba.optim.lbfgs import LBFGSParams, LBFGSResult, minimize_lbfgs
from diva_numba.outputs import check_target

#: Standard deviation of the noise start, on the network's 0..255 scale.
NOISE_SCALE = 32.0


@dataclass(frozen=True)
class NeuralResult:
    """One optimised image.

    Attributes
    ----------
    image : array (3, H, W)
        The optimised network input (level 0), on the device; unclipped.
    rgb : float32 array (H, W, 3)
        The same as RGB 0..255 on the host, unclipped.
    lbfgs : LBFGSResult
        How the optimiser ended (iterations, evaluations, losses).
    seconds : float
    """

    image: object
    rgb: np.ndarray
    lbfgs: LBFGSResult
    seconds: float


class NeuralStyler:
    """A style image's network and Gram matrices on a device, ready to stylise images.

    Parameters
    ----------
    model : AnalogyModel
        Its weights and preprocessing (the VGG-19 of the analogy).
    style : uint8 array (H, W, 3)
        The style image at the scale its strokes should have (the working size).
    params : NeuralStyleParams
    """

    def __init__(self, model: AnalogyModel, style: np.ndarray, params: NeuralStyleParams):
        self.model = model
        self.params = params
        self.weights = model.weights
        self.loss = NeuralStyleLoss.build(self.weights.layers, model.preprocess(style), params)

    @property
    def device(self) -> Device:
        return self.model.device

    def preprocess(self, rgb: np.ndarray):
        """Level 0 of an RGB (H, W, 3) image (uint8 or float 0..255), float32 on the device."""
        chw = np.ascontiguousarray(np.asarray(rgb, dtype=np.float32).transpose(2, 0, 1))
        return to_device(np.ascontiguousarray(self.weights.preprocess(chw)), self.device)

    def to_rgb(self, level0) -> np.ndarray:
        """float32 RGB ``(H, W, 3)`` on the host of a level-0 map (the inverse of preprocess)."""
        network_order = to_host(level0).astype(np.float32)
        mean = np.asarray(self.weights.mean, np.float32)[:, None, None]
        scale = np.asarray(self.weights.scale, np.float32)[:, None, None]
        rgb = np.empty_like(network_order)
        rgb[list(self.weights.channel_order)] = network_order / scale + mean
        return np.ascontiguousarray(rgb.transpose(1, 2, 0))

    def start(self, content_level0, *, seed: int | None = None):
        """The start of a fresh optimisation: the frame itself, or noise (``params.init``)."""
        if self.params.init == "content":
            return content_level0.copy()
        rng = np.random.default_rng(self.params.seed if seed is None else seed)
        noise = rng.normal(0.0, NOISE_SCALE, size=tuple(content_level0.shape))
        return to_device(noise.astype(np.float32), self.device)

    def optimise(self, content_level0, initial, *, iterations: int, temporal=()) -> NeuralResult:
        """Minimise the loss for one frame from ``initial``.

        Parameters
        ----------
        content_level0 : array (3, H, W)
            The frame, preprocessed, on the device.
        initial : array (3, H, W)
            The start (not modified).
        iterations : int
            L-BFGS iterations at most.
        temporal : sequence of ``(w_j (3, H, W), c_j (H, W))``
            Earlier outputs moved into this frame and their weights, on the device.
        """
        started = time.perf_counter()
        self.loss.set_content(content_level0)
        self.loss.set_temporal(temporal)
        # liblbfgs' relative gradient test would stop a 255-scale image far too early;
        # the iteration budget decides, as in Gatys' and Ruder's code.
        lbfgs = LBFGSParams(history=8, max_iterations=iterations, gradient_tolerance=1e-16)
        # Huge weights overflow the loss; that is reported below as one error, not as
        # NumPy warnings on the way.
        with np.errstate(over="ignore", invalid="ignore"):
            result = minimize_lbfgs(self.loss, initial, params=lbfgs)
        if not math.isfinite(result.loss):
            # L-BFGS cannot move from a point whose loss overflowed, and the start it
            # hands back (the frame itself) must not pass for a stylised result.
            raise DivaError(
                f"neural style: the loss is not finite ({result.loss}); --style-weight, "
                "--tv-weight or --temporal-loss-weight is too large"
            )
        return NeuralResult(result.x, self.to_rgb(result.x), result, time.perf_counter() - started)


def deliver(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    """A float RGB result at the output size (bicubic), rounded and clipped to uint8."""
    float_rgb = rgb if rgb.shape[:2] == (height, width) else resize(rgb, height, width)
    return np.clip(np.rint(float_rgb), 0, 255).astype(np.uint8)


def stylise_image(
    styler: NeuralStyler, image: np.ndarray, *, output_shape: tuple[int, int] | None = None
) -> tuple[np.ndarray, NeuralResult]:
    """Stylise one RGB uint8 image that is already at its working size.

    Returns
    -------
    output : uint8 (H, W, 3)
        At ``output_shape`` (default the image's), colours kept if the params ask.
    result : NeuralResult
    """
    content = styler.preprocess(image)
    result = styler.optimise(content, styler.start(content), iterations=styler.params.iterations)
    height, width = output_shape or image.shape[:2]
    output = deliver(result.rgb, height, width)
    if styler.params.preserve_colour:
        output = preserve_colour(output, resize(image, height, width))
    return output, result


def stylise(
    style: str | os.PathLike,
    image: str | os.PathLike,
    output: str | os.PathLike,
    params: NeuralStyleParams | None = None,
    *,
    device: Device | str = "auto",
    model: str | os.PathLike | AnalogyModel | None = None,
    mask: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> NeuralResult:
    """Paint ``image`` in the manner of ``style`` (neural style), written to ``output``.

    Parameters
    ----------
    style, image : path-like
        RGB images (PNG, JPEG, ...).
    output : path-like
        The image to write (PNG, JPEG, ...), at ``params.size`` (long side) or the
        image's own size; written only when complete.
    params : NeuralStyleParams, optional
        Default: :meth:`NeuralStyleParams.for_device` of the device used.
    device : Device or {"auto", "cuda", "cpu"}
    model : path-like or AnalogyModel, optional
        ONNX feature model; default the VGG-19 model, fetched on first use.
    mask : path-like, optional
        Grey image: white is stylised, black keeps the input (``params.mask_feather``).
    overwrite : bool
        Replace ``output`` if it exists.

    Returns
    -------
    NeuralResult

    Examples
    --------
    >>> from diva_numba import NeuralStyleParams, stylise
    >>> stylise("starry.jpg", "street.jpg", "out.png",
    ...         NeuralStyleParams.for_device("cpu", style_weight=50))  # doctest: +SKIP
    """
    style, image, output = Path(style), Path(image), Path(output)
    device = device if isinstance(device, Device) else resolve_device(device)
    params = params or NeuralStyleParams.for_device(device)
    inputs = [style, image, *([Path(mask)] if mask is not None else [])]
    check_target(output, overwrite=overwrite, inputs=inputs)
    if not cv2.haveImageWriter(str(output.with_suffix(output.suffix or ".png"))):
        raise OutputError(f"{output}: cannot write images of type {output.suffix!r}; use .png")
    picture = load_image(image)
    style_picture = load_image(style)
    work_shape = working_size(*picture.shape[:2], long_side=params.work_size, option="--work-size")
    output_shape = (
        picture.shape[:2]
        if params.size is None
        else working_size(*picture.shape[:2], long_side=params.size, max_area=1 << 62)
    )
    weight = None
    if mask is not None:
        region = Mask(mask, feather=params.mask_feather)
        region.check(picture.shape[1], picture.shape[0], 1)
        weight = region
    style_shape = working_size(
        *style_picture.shape[:2], long_side=max(work_shape), option="--work-size"
    )
    styler = NeuralStyler(load_model(model, device), resize(style_picture, *style_shape), params)
    stylised, result = stylise_image(
        styler, resize(picture, *work_shape), output_shape=output_shape
    )
    if weight is not None:
        stylised = weight.apply(stylised, resize(picture, *output_shape), 0)
    save_image(output, stylised)
    return result


__all__ = ["NeuralResult", "NeuralStyler", "deliver", "stylise", "stylise_image"]
