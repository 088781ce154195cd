"""Appearance alignment: a dense flow between A, recoloured into B''s look, and B'.

The guided synthesis (:mod:`~diva_numba.synthesis.pyramid`) compares A with B' only
through the latent image B, which exists at the working size: it cannot place a
match closer than a working pixel or two, and the deep analogy's own field is
off by about that much even where A is textured. When B' shows A's content in
another look (a painted keyframe of the same shot, a painted copy of a photo),
the two images can be compared directly once they share one appearance domain,
as in HaCohen et al., *Non-Rigid Dense Correspondence with Applications for
Image Enhancement* (SIGGRAPH 2011), which alternates a colour transform with the
correspondence:

1. *Colour fit.* Through the current field, each pixel of A is paired with the
   pixel of B' it matches; a robust lightness curve (the median of B''s CIE
   lightness in each bin of A's) maps A into B''s look (``A~``). A global curve
   first: it cannot copy B''s content into ``A~`` where the field is still
   wrong, so the flow is not drawn towards the field's own errors. In the last
   round, once the field is close, a local affine model (B''s lightness as
   ``a L + b`` of A's in windows of ``window`` px, a guided filter) follows
   what a painting does locally (flattened areas, shifted palettes).
2. *Flow.* OpenCV's DIS (Kroeger et al., 2016; preset MEDIUM) then its
   variational refinement (Brox-style data and smoothness terms), from ``A~``'s
   lightness to B''s, the current field as the initial flow. B' is resized to
   A's grid first (the two may differ in size and aspect) and the flow is
   carried back to B''s coordinates.

Both steps run ``rounds`` times. The smoothness weight is high: a painting
flattens and posterises, so the data term is weak over wide areas. After the
last round the flow of textured pixels is carried into flat ones by a
normalised, edge-aware convolution (``spread``;
:func:`~diva_numba.kernels.field_smoothing.smooth_field`).

Which positions are kept (:func:`aligned_positions`): between a photo and its
painting the flow is precise to about a working pixel, not to the pixel (with
the truth as its start it lands 1.3 px off, median, at 451 x 300), so it only
replaces a match that it moves by more than that (``min_shift``): a match
that the search already has right stays exact. Where B' shows other content
the flow is meaningless and lands far from the semantic match of the deep
analogy; beyond ``reach`` the match stays too (a different photo against the
bundled painting: 96% of the flow's positions lie beyond it, against 4% on a
painted, deformed copy). Measured: docs/DESIGN.md section 10.

This runs on the host (OpenCV): on a CUDA device a call costs one download
(the positions) and two uploads (the aligned positions, and the mask of the
matches left out of the scale's search).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from diva_numba.kernels.field_smoothing import FieldPriorParams, smooth_field_cpu

#: DIS refuses images under 12 px a side and crashes on some under 16 px
#: high (OpenCV 5.1, measured): smaller scales are left alone.
MIN_SIDE = 16

#: Bins of the lightness curve over A's lightness range, and the fewest pixels a
#: bin needs to count (fewer: the curve interpolates across it).
_BINS = 32
_MIN_COUNT = 20

#: Variational refinement: fixed-point and SOR iterations, and the weights of the
#: brightness and the gradient constancy terms (OpenCV's defaults). More inner
#: iterations than OpenCV's (5, 5): the smoothness term must reach across flat areas
#: (at 451 x 300: 1.87 px median error with 20 and 5, 1.79 with 20 and 10).
_FIXED_POINT_ITERATIONS = 20
_SOR_ITERATIONS = 10
_DELTA = 5.0
_GAMMA = 10.0

#: Ridge of the local colour model's slope, in squared lightness units (0..255): a
#: window whose lightness varies by less than about 5 scales keeps a flat model.
_EPSILON = 25.0


@dataclass(frozen=True)
class AlignmentParams:
    """Knobs of the appearance alignment (docs/DESIGN.md section 10).

    Attributes
    ----------
    rounds : int
        Colour fit and flow alternations; 0 turns the alignment off.
    smoothness : float
        Smoothness weight of the variational refinement (OpenCV's ``alpha``).
    window : int
        Radius (scale pixels) of the local colour model's windows, last round.
    spread : float
        Spatial scale (scale pixels) over which the flow of textured pixels is
        carried into flat ones (0: not at all).
    min_shift, reach : float
        The flow replaces a match only when it moves it by more than
        ``min_shift`` and at most ``reach`` working pixels. Below
        ``min_shift`` the flow is within its own precision (about one working
        pixel between a photo and its painting), so a match the search has
        already got right stays exact; beyond ``reach`` the two disagree by
        more than the deep analogy's field is ever off on a copy, so B' shows
        other content there and the search's semantic match stays.
    """

    rounds: int = 4
    smoothness: float = 60.0
    window: int = 16
    spread: float = 16.0
    min_shift: float = 1.0
    reach: float = 8.0

    def __post_init__(self):
        if self.rounds < 0 or self.window < 1:
            raise ValueError("rounds must be >= 0 and window >= 1")
        if self.smoothness <= 0 or self.spread < 0:
            raise ValueError("smoothness must be positive and spread >= 0")
        if not 0 <= self.min_shift <= self.reach:
            raise ValueError("need 0 <= min_shift <= reach")


def alignment_scale(sizes, exemplar_sizes, *, fine_from: float, params: AlignmentParams):
    """The scale the alignment runs at: the largest below ``fine_from`` times the working size.

    Larger scales cost most and the flow brings nothing finer than the working
    size there; scales under :data:`MIN_SIDE` are skipped. None when off or
    when no scale qualifies.
    """
    if params.rounds == 0:
        return None
    work_area = sizes[0][0] * sizes[0][1]
    chosen = None
    for scale, (shape, exemplar_shape) in enumerate(zip(sizes, exemplar_sizes, strict=True)):
        small = min(*shape, *exemplar_shape) < MIN_SIDE
        if shape[0] * shape[1] < fine_from**2 * work_area and not small:
            chosen = scale
    return chosen


def aligned_positions(
    structure: np.ndarray,
    exemplar: np.ndarray,
    positions: np.ndarray,
    *,
    work_scale: float,
    params: AlignmentParams,
) -> tuple[np.ndarray, np.ndarray]:
    """The positions after the alignment, where it is accepted.

    Parameters
    ----------
    structure, exemplar : uint8 arrays (H, W, 3), (Hb, Wb, 3)
        A and B' at the scale's sizes.
    positions : float32 array (H, W, 2)
        The current ``(y, x)`` in B' (from the search).
    work_scale : float
        Scale pixels per working pixel.
    params : AlignmentParams

    Returns
    -------
    positions : float32 array (H, W, 2)
        The flow's positions where accepted, the input's elsewhere.
    accepted : bool array (H, W)
        Where the flow's position was taken: it moves the match by
        ``min_shift`` to ``reach`` working pixels and stays inside B' (content
        that the flow carries out of B', clamped into it, would repeat B''s
        edge row as streaks).
    """
    flow = align_positions(structure, exemplar, positions, rounds=params.rounds,
                           smoothness=params.smoothness, window=params.window,
                           spread=params.spread)  # fmt: skip
    shift = np.hypot(*(flow - positions).transpose(2, 0, 1)) / np.float32(work_scale)
    height, width = exemplar.shape[:2]
    accepted = (shift > params.min_shift) & (shift <= params.reach)
    accepted &= (flow[..., 0] >= 0) & (flow[..., 0] <= height - 1)
    accepted &= (flow[..., 1] >= 0) & (flow[..., 1] <= width - 1)
    return np.where(accepted[..., None], flow, positions).astype(np.float32), accepted


def lightness(rgb: np.ndarray) -> np.ndarray:
    """CIE L* of an RGB uint8 image, scaled to 0..255 (float32)."""
    return cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2LAB)[..., 0].astype(np.float32)


def lightness_curve(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """``source`` mapped by the robust curve that best predicts ``target`` from it.

    Parameters
    ----------
    source, target : float32 arrays of the same shape
        Paired lightness values (A's, and B''s at A's matches).

    Returns
    -------
    float32 array, the shape of ``source``
        The median of ``target`` in each bin of ``source``'s values, interpolated
        linearly between the bins' mean values (constant beyond the end bins).
    """
    values, paired = source.ravel(), target.ravel()
    low, high = float(values.min()), float(values.max())
    if high - low < 1e-3:
        return np.full_like(source, np.median(paired))
    bins = np.minimum(((values - low) / (high - low) * _BINS).astype(np.int64), _BINS - 1)
    order = np.argsort(bins, kind="stable")
    starts = np.searchsorted(bins[order], np.arange(_BINS + 1))
    centres, medians = [], []
    for start, end in zip(starts[:-1], starts[1:], strict=True):
        if end - start >= _MIN_COUNT:
            members = order[start:end]
            centres.append(values[members].mean())
            medians.append(np.median(paired[members]))
    if not centres:
        return np.full_like(source, np.median(paired))
    return np.interp(source, centres, medians).astype(np.float32)


def local_affine(source: np.ndarray, target: np.ndarray, radius: int) -> np.ndarray:
    """``source`` mapped by the affine model of ``target`` fitted in each window (a guided filter).

    He, Sun and Tang's guided filter with ``source`` as the guide: in each
    ``(2 radius + 1)^2`` window ``target ~ a source + b`` by least squares
    (ridge ``_EPSILON`` on ``a``), and each pixel takes the mean of its windows'
    ``a`` and ``b``.
    """
    size = (2 * radius + 1, 2 * radius + 1)

    def mean(values):
        return cv2.boxFilter(values, -1, size, borderType=cv2.BORDER_REFLECT)

    mean_source, mean_target = mean(source), mean(target)
    variance = mean(source * source) - mean_source * mean_source
    covariance = mean(source * target) - mean_source * mean_target
    slope = covariance / (variance + _EPSILON)
    offset = mean_target - slope * mean_source
    return mean(slope) * source + mean(offset)


def align_positions(
    structure: np.ndarray,
    exemplar: np.ndarray,
    positions: np.ndarray,
    *,
    rounds: int,
    smoothness: float,
    window: int,
    spread: float = 0.0,
) -> np.ndarray:
    """Positions of A's pixels in B' after alternating colour fits and flows.

    Parameters
    ----------
    structure : uint8 array (H, W, 3)
        A at the scale's size.
    exemplar : uint8 array (Hb, Wb, 3)
        B' at the scale's size.
    positions : float32 array (H, W, 2)
        The current ``(y, x)`` in B' of each pixel of A: the colour fit's
        pairing and the flow's start.
    rounds : int
        Colour fit and flow alternations (the last with the local model).
    smoothness : float
        The variational refinement's smoothness weight (``alpha``), also
        DIS's own refinement's.
    window : int
        Radius (px) of the local colour model's windows.
    spread : float
        Scale (px) of the normalised convolution after the last round
        (0: none).

    Returns
    -------
    float32 array (H, W, 2)
        The aligned positions; those of pixels whose content lies outside B'
        point outside it (not clipped: the caller rejects them).
    """
    height, width = structure.shape[:2]
    exemplar_height, exemplar_width = exemplar.shape[:2]
    scale_y, scale_x = height / exemplar_height, width / exemplar_width
    shrink = exemplar_height * exemplar_width > height * width
    resized = cv2.resize(exemplar, (width, height),
                         interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)  # fmt: skip
    target = np.clip(lightness(resized), 0, 255).astype(np.uint8)
    source = lightness(structure)
    exemplar_lightness = lightness(exemplar)
    ys, xs = np.indices((height, width), dtype=np.float32)
    current = np.asarray(positions, dtype=np.float32)
    for round_ in range(rounds):
        paired = cv2.remap(exemplar_lightness, current[..., 1], current[..., 0],
                           cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)  # fmt: skip
        local = round_ == rounds - 1 and rounds > 1
        mapped = local_affine(source, paired, window) if local else lightness_curve(source, paired)
        recoloured = np.clip(mapped, 0, 255).astype(np.uint8)
        # Pixel centres line up across the resize: x' + 0.5 = (x + 0.5) * scale.
        flow = np.stack(
            [(current[..., 1] + 0.5) * scale_x - 0.5 - xs,
             (current[..., 0] + 0.5) * scale_y - 0.5 - ys], axis=-1,
        )  # fmt: skip
        dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        dis.setVariationalRefinementAlpha(float(smoothness))
        flow = dis.calc(recoloured, target, np.ascontiguousarray(flow, dtype=np.float32))
        refinement = cv2.VariationalRefinement_create()
        refinement.setAlpha(float(smoothness))
        refinement.setDelta(_DELTA)
        refinement.setGamma(_GAMMA)
        refinement.setFixedPointIterations(_FIXED_POINT_ITERATIONS)
        refinement.setSorIterations(_SOR_ITERATIONS)
        flow = refinement.calc(recoloured, target, flow)
        if round_ == rounds - 1 and spread > 0:
            flow = _spread(flow, structure, spread)
        current = np.stack(
            [(ys + flow[..., 1] + 0.5) / scale_y - 0.5, (xs + flow[..., 0] + 0.5) / scale_x - 0.5],
            axis=-1,
        ).astype(np.float32)  # fmt: skip
    return current


def _spread(flow: np.ndarray, structure: np.ndarray, sigma: float) -> np.ndarray:
    """The flow averaged from textured pixels into flat ones (edge-aware, normalised)."""
    lightness_ = lightness(structure) / np.float32(255)
    gx = cv2.Sobel(lightness_, cv2.CV_32F, 1, 0) / np.float32(8)
    gy = cv2.Sobel(lightness_, cv2.CV_32F, 0, 1) / np.float32(8)
    weights = cv2.GaussianBlur(gx * gx + gy * gy, (0, 0), 3.0)
    height, width = flow.shape[:2]
    ys, xs = np.indices((height, width), dtype=np.float32)
    positions = np.stack([ys + flow[..., 1], xs + flow[..., 0]], axis=-1)
    guide = np.ascontiguousarray(structure.transpose(2, 0, 1), dtype=np.float32) / np.float32(255)
    smoothed, _ = smooth_field_cpu(
        positions, weights, guide, params=FieldPriorParams(sigma_space=sigma, sigma_range=1.0)
    )
    return np.stack([smoothed[..., 1] - xs, smoothed[..., 0] - ys], axis=-1)
