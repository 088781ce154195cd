"""Optical flow between consecutive frames, its occlusion mask, and warping by it.

Flow fields are float32 ``(H, W, 2)`` holding ``(dx, dy)`` in pixels: a flow
``f`` from image A to image B says that pixel ``x`` of A shows what B shows
at ``x + f(x)``. The flow is OpenCV's DIS (dense inverse search, Kroeger et
al. 2016) on grey images.

Preset choice, measured per flow field on one 640x360 frame pair on an idle
2-core CPU: ULTRAFAST 1.8 ms (pure pan) to 2.7 ms (rotation + zoom), FAST 3.4
to 5.4 ms, MEDIUM 16 to 40 ms. On the rotation + zoom pair, whose flow is
known, the mean endpoint error was 1.19, 0.80 and 0.32 pixels. The occlusion
test below tolerates about 0.7 pixel of forward-backward disagreement, so only
MEDIUM is accurate enough for it, and two MEDIUM flows per frame cost little
beside the analogy of that frame: it is the default.
"""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np

FlowPreset = Literal["ultrafast", "fast", "medium"]

#: The DIS preset used unless another is asked for (see the module notes).
DEFAULT_PRESET: FlowPreset = "medium"

_DIS_PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}

# Sundaram, Brox & Keutzer (ECCV 2010), as used by Ruder et al. for video style
# transfer: forward and backward flow must cancel up to 1% of their length plus
# half a pixel (squared: 0.5), and flow gradients larger than 1% of the flow
# plus a small constant mark motion boundaries, where flow is least reliable.
CONSISTENCY_RELATIVE = 0.01
CONSISTENCY_ABSOLUTE = 0.5
BOUNDARY_RELATIVE = 0.01
BOUNDARY_ABSOLUTE = 0.002


def flow_pair(
    prev_rgb: np.ndarray, next_rgb: np.ndarray, *, preset: FlowPreset = DEFAULT_PRESET
) -> tuple[np.ndarray, np.ndarray]:
    """Forward and backward optical flow between two frames.

    Parameters
    ----------
    prev_rgb, next_rgb : numpy.ndarray
        uint8 ``(H, W, 3)`` RGB (or ``(H, W)`` grey) frames t-1 and t.
    preset : {"ultrafast", "fast", "medium"}, optional
        DIS preset; see the module notes for speed and accuracy.

    Returns
    -------
    forward : numpy.ndarray
        float32 ``(H, W, 2)`` flow from frame t-1 to frame t.
    backward : numpy.ndarray
        float32 ``(H, W, 2)`` flow from frame t to frame t-1.
    """
    if prev_rgb.shape != next_rgb.shape:
        raise ValueError(f"frames differ in shape: {prev_rgb.shape} and {next_rgb.shape}")
    if preset not in _DIS_PRESETS:
        raise ValueError(f"unknown preset {preset!r}; use one of {', '.join(_DIS_PRESETS)}")
    prev_grey, next_grey = _grey(prev_rgb), _grey(next_rgb)
    # A fresh DIS object per call: it is cheap (0.1 ms) and keeps calls thread-safe.
    dis = cv2.DISOpticalFlow_create(_DIS_PRESETS[preset])
    forward = dis.calc(prev_grey, next_grey, None)
    backward = dis.calc(next_grey, prev_grey, None)
    return forward, backward


def occlusion_mask(forward: np.ndarray, backward: np.ndarray) -> np.ndarray:
    """Pixels of frame t whose backward flow cannot be trusted.

    For pixel ``x`` of frame t with backward flow ``w = backward(x)`` and the
    forward flow ``w~ = forward(x + w)`` (bilinear), ``x`` is occluded when

    * the two flows do not cancel:
      ``|w + w~|^2 >= 0.01 (|w|^2 + |w~|^2) + 0.5``;
    * it is on a motion boundary:
      ``|grad u|^2 + |grad v|^2 >= 0.01 |w|^2 + 0.002``, with ``(u, v) = w``
      and central differences (one-sided at the border, as ``numpy.gradient``);
    * or ``x + w`` falls outside frame t-1: the content entered the picture
      (the border a pan uncovers).

    Parameters
    ----------
    forward : numpy.ndarray
        float32 ``(H, W, 2)`` flow from frame t-1 to frame t.
    backward : numpy.ndarray
        float32 ``(H, W, 2)`` flow from frame t to frame t-1.

    Returns
    -------
    numpy.ndarray
        uint8 ``(H, W)``: 1 where occluded, 0 where the flow is reliable.
    """
    if forward.shape != backward.shape or forward.ndim != 3 or forward.shape[2] != 2:
        raise ValueError(f"need two (H, W, 2) flows, got {forward.shape} and {backward.shape}")
    backward = backward.astype(np.float32, copy=False)
    height, width = backward.shape[:2]
    source_x, source_y = _sample_positions(backward)
    forward_at_source = cv2.remap(
        forward.astype(np.float32, copy=False),
        source_x,
        source_y,
        interpolation=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
    )
    backward_sq = _squared_length(backward)
    forward_sq = _squared_length(forward_at_source)
    inconsistent = _squared_length(backward + forward_at_source) >= (
        CONSISTENCY_RELATIVE * (backward_sq + forward_sq) + CONSISTENCY_ABSOLUTE
    )
    gradient_sq = np.zeros((height, width), dtype=np.float32)
    for component in (backward[..., 0], backward[..., 1]):
        for derivative in np.gradient(component):
            gradient_sq += derivative * derivative
    boundary = gradient_sq >= BOUNDARY_RELATIVE * backward_sq + BOUNDARY_ABSOLUTE
    return (inconsistent | boundary | outside(backward).astype(bool)).astype(np.uint8)


#: ``warp_image``'s interpolations. Moved again and again, a picture blurs under "linear"
#: (its mean gradient 0.37 of itself after 60 moves of half a pixel), rings under "cubic"
#: (3.7: OpenCV's kernel lifts some frequencies) and keeps itself under "lanczos" (0.91).
INTERPOLATIONS = {
    "linear": cv2.INTER_LINEAR,
    "cubic": cv2.INTER_CUBIC,
    "lanczos": cv2.INTER_LANCZOS4,
}


def warp_image(image: np.ndarray, flow: np.ndarray, *, interpolation: str = "linear") -> np.ndarray:
    """Sample ``image`` at ``x + flow(x)`` for every pixel ``x`` (border replicated).

    With ``flow`` the backward flow of frame t, this brings frame t-1 (or
    anything aligned with it, such as the previous output) into frame t.

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W)`` or ``(H, W, C)``, uint8 or float32 (float64 works too).
        uint8 results are rounded; pass float32 to keep the fractions.
    flow : numpy.ndarray
        float32 ``(H, W, 2)``.
    interpolation : {"linear", "cubic", "lanczos"}, default "linear"
        See :data:`INTERPOLATIONS`. Cubic and Lanczos overshoot at edges; clip
        the result where it must stay in range.

    Returns
    -------
    numpy.ndarray
        Same shape and dtype as ``image``.
    """
    if flow.ndim != 3 or flow.shape[2] != 2 or flow.shape[:2] != image.shape[:2]:
        raise ValueError(f"flow {flow.shape} does not fit image {image.shape}")
    source_x, source_y = _sample_positions(flow.astype(np.float32, copy=False))
    warped = cv2.remap(
        image,
        source_x,
        source_y,
        interpolation=INTERPOLATIONS[interpolation],
        borderMode=cv2.BORDER_REPLICATE,
    )
    # remap drops a trailing axis of length 1; keep the caller's shape.
    return warped.reshape(image.shape)


def compose(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """The flow ``x -> x + first(x) + second(x + first(x))``: ``first``, then ``second``.

    Parameters
    ----------
    first, second : numpy.ndarray
        float32 ``(H, W, 2)`` flows; ``second`` is sampled bilinearly where
        ``first`` points.

    Returns
    -------
    numpy.ndarray
        float32 ``(H, W, 2)``.
    """
    return (first + warp_image(second, first)).astype(np.float32)


def carry_mask(mask: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """A uint8 ``(H, W)`` mask moved along a backward flow: each pixel takes the value where
    its content was (nearest), and 1 where that lies outside the frame.
    """
    source_x, source_y = _sample_positions(flow.astype(np.float32, copy=False))
    return cv2.remap(mask, source_x, source_y, interpolation=cv2.INTER_NEAREST,
                     borderMode=cv2.BORDER_CONSTANT, borderValue=1)  # fmt: skip


def outside(flow: np.ndarray) -> np.ndarray:
    """uint8 ``(H, W)``: 1 where ``x + flow(x)`` falls outside the frame."""
    height, width = flow.shape[:2]
    source_x, source_y = _sample_positions(flow.astype(np.float32, copy=False))
    return ((source_x < 0) | (source_x > width - 1) | (source_y < 0) | (source_y > height - 1)
            ).astype(np.uint8)  # fmt: skip


def _squared_length(flow: np.ndarray) -> np.ndarray:
    # Spelled out: a NumPy reduction over an axis of length 2 is several times slower.
    return flow[..., 0] * flow[..., 0] + flow[..., 1] * flow[..., 1]


def _sample_positions(flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float32 maps ``x + flow_x`` and ``y + flow_y`` for cv2.remap."""
    height, width = flow.shape[:2]
    source_x = flow[..., 0] + np.arange(width, dtype=np.float32)[None, :]
    source_y = flow[..., 1] + np.arange(height, dtype=np.float32)[:, None]
    return source_x, source_y


def _grey(frame: np.ndarray) -> np.ndarray:
    if frame.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {frame.dtype}")
    if frame.ndim == 2:
        return np.ascontiguousarray(frame)
    if frame.ndim == 3 and frame.shape[2] == 3:
        return cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)
    raise ValueError(f"frames must be (H, W, 3) RGB or (H, W) grey, got {frame.shape}")


def refine_flow(source: np.ndarray, target: np.ndarray, initial: np.ndarray, *,
                scales: int = 2, smoothing_iterations: int = 5) -> np.ndarray:  # fmt: skip
    """A flow from ``source`` to ``target`` refined from ``initial`` at their own size.

    DIS (ULTRAFAST's patches) starts from ``initial`` and searches only the
    ``scales`` finest scales of its pyramid, down to the images' own pixels:
    a flow estimated at a smaller size and brought up to this one
    (bilinear) is right to within about a pixel there, and this makes it
    precise to a fraction of one. DIS's variational refinement then smooths
    the patch estimates at each scale (``smoothing_iterations``): on an encoded
    clip the patches alone leave a few hundredths of a pixel of noise on each
    pixel's flow, and an output carried along it shows that on the painting's
    strokes.

    Measured on H.264 pans by 0.7 x 2.3 px a frame, the flow from frames 3-12 to
    frame 0 chained and re-anchored at 320 px (``tools/bench_flow.py --clip``), mean
    endpoint error: a Big Buck Bunny frame at 1280 x 720, 0.17-0.21 px brought up,
    0.12-0.17 refined without smoothing (100 ms on 2 CPU cores), 0.10-0.13 with 5
    iterations (260 ms). An oil-painted pan carried along it ends 0.77 mean Lab from
    the ideal in its last third, 0.82 without smoothing, 0.55 along the exact flow
    (BENCHMARKS.md "The flow to the anchor, smoothed").

    Parameters
    ----------
    source, target : uint8 arrays (H, W, 3) or (H, W)
    initial : float32 array (H, W, 2)
        ``(dx, dy)`` at ``(H, W)``.
    scales : int
        Pyramid scales searched (1: the images' own size only).
    smoothing_iterations : int
        Variational refinement iterations at each scale (0: the patches alone).

    Returns
    -------
    float32 array (H, W, 2)
    """
    dis = cv2.DISOpticalFlow_create(_DIS_PRESETS["ultrafast"])
    dis.setFinestScale(0)
    if hasattr(dis, "setCoarsestScale"):  # OpenCV 4.10 on; before, DIS picks its pyramid
        dis.setCoarsestScale(max(0, scales - 1))
    dis.setVariationalRefinementIterations(smoothing_iterations)
    flow = np.ascontiguousarray(initial, dtype=np.float32).copy()
    return dis.calc(_grey(source), _grey(target), flow)


__all__ = [
    "DEFAULT_PRESET",
    "FlowPreset",
    "flow_pair",
    "occlusion_mask",
    "refine_flow",
    "warp_image",
]
