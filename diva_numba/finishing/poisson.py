"""Gradient-domain blending: a screened Poisson equation solved with the DCT.

Several pictures of one frame (painted keyframes carried along the flow, the
deep analogy) are mixed with per-pixel weights that sum to one. Their
weighted average ``f`` has the right colours, but wherever the weights change
quickly (a keyframe's reliability falling off where its content ends) it also
has an edge that none of the pictures has: two paint textures, two palettes
meeting. In the gradient domain that edge is easy to name. With the weights
taken at the middle of each pixel pair, the average's gradient is

    grad f = sum_i w_i grad s_i + sum_i s_i grad w_i

(exactly, for forward differences and edge-averaged weights and values). The
first term is the pictures' own gradients mixed by the weights; the second is
the seam. :func:`blend` keeps the first, drops the second, and solves for the
image whose gradients match it while its colours stay anchored to ``f``:

    minimise sum a |u - f|^2 + lambda |grad u - g|^2,
    i.e. (A - lambda * Laplacian) u = A f - lambda * div g,

the screened Poisson equation, with reflecting (Neumann) borders. ``a`` says
how firmly each pixel's colour is held: with ``a = 1`` everywhere the type-II
DCT diagonalises the operator (one forward and one inverse transform per
channel); a varying ``a`` (painted keyframes held, the region where the
pictures mix or the analogy fills in left free to take up a seam's step) is
solved by conjugate gradients preconditioned with that DCT solve, a few
iterations. The solution is ``u = f + c`` where only the correction ``c`` is
solved for: it is zero where the weights do not change and falls off as
``exp(-d sqrt(a / lambda))`` with the distance ``d`` from a seam, so far
from any seam the result is the average itself, and the solve is cut down
to the part of the frame the seams reach.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.fft


@dataclass(frozen=True)
class PoissonParams:
    """How far a seam's step is spread, and how exactly it is solved.

    Attributes
    ----------
    spread : float
        Screening length ``L`` (``lambda = L^2``) as a share of the frame's
        longer side, so that the result looks the same at every size: a
        seam's step is spread over about ``L / sqrt(a)`` pixels on each side
        (0.03: 3 px at 96 px, 58 px at 1920 px, where ``a = 1``).
    min_spread : float
        ``L`` is at least this many pixels (tiny frames).
    margin : float
        The solve covers the seams' bounding box grown by
        ``margin * L / sqrt(min a)`` px; beyond that the correction is below
        ``exp(-margin)`` of the step (0.25% for 6), under half a grey level.
    tolerance : float
        Conjugate gradients stop when the residual is this share of the
        right-hand side's (1e-2: about 1% of the step; unused where ``a`` is
        constant, which the DCT solves exactly).
    iterations : int
        At most this many conjugate-gradient iterations.
    """

    spread: float = 0.03
    min_spread: float = 2.0
    margin: float = 6.0
    tolerance: float = 1e-2
    iterations: int = 12

    def length(self, shape: tuple[int, int]) -> float:
        """``L`` in pixels for a frame of ``shape = (H, W)``."""
        return max(self.min_spread, self.spread * max(shape))


def gradients(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Forward differences, zero across the far border (reflecting borders).

    Parameters
    ----------
    image : float array (H, W) or (H, W, C)

    Returns
    -------
    gx, gy : float arrays, the shape of ``image``
        ``gx[y, x] = image[y, x + 1] - image[y, x]``, 0 in the last column;
        ``gy`` likewise down the rows.
    """
    gx = np.zeros_like(image)
    gy = np.zeros_like(image)
    gx[:, :-1] = image[:, 1:] - image[:, :-1]
    gy[:-1] = image[1:] - image[:-1]
    return gx, gy


def divergence(gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
    """Backward differences, the negative adjoint of :func:`gradients`.

    ``divergence(*gradients(u))`` is the 5-point Laplacian of ``u`` with
    reflecting borders, the operator the DCT solve inverts.

    Parameters
    ----------
    gx, gy : float arrays (H, W) or (H, W, C)
        Zero in the last column (``gx``) and row (``gy``).

    Returns
    -------
    float array, their shape
    """
    div = gx.copy()
    div[:, 1:] -= gx[:, :-1]
    div += gy
    div[1:] -= gy[:-1]
    return div


def solve_screened(rhs: np.ndarray, screening: float) -> np.ndarray:
    """``u`` with ``(I - screening * Laplacian) u = rhs``, reflecting borders.

    Parameters
    ----------
    rhs : float32 array (H, W) or (H, W, C)
        Every channel is solved on its own.
    screening : float
        ``lambda`` >= 0, in pixels squared.

    Returns
    -------
    float32 array, the shape of ``rhs``
    """
    height, width = rhs.shape[:2]
    # Eigenvalues of the negative Neumann Laplacian on the DCT-II basis.
    ky = 2.0 - 2.0 * np.cos(np.pi * np.arange(height) / height)
    kx = 2.0 - 2.0 * np.cos(np.pi * np.arange(width) / width)
    denominator = (1.0 + screening * (ky[:, None] + kx[None, :])).astype(np.float32)
    if rhs.ndim == 3:
        denominator = denominator[:, :, None]
    spectrum = scipy.fft.dctn(rhs.astype(np.float32), type=2, axes=(0, 1), norm="ortho",
                              workers=-1)  # fmt: skip
    spectrum /= denominator
    return scipy.fft.idctn(spectrum, type=2, axes=(0, 1), norm="ortho", workers=-1)


def solve_anchored(rhs, anchoring, screening: float, params: PoissonParams = PoissonParams()):
    """``c`` with ``(A - screening * Laplacian) c = rhs``, ``A = diag(anchoring)``.

    Preconditioned conjugate gradients, the preconditioner the DCT solve of
    the same operator with ``A`` replaced by the geometric mean of its range
    (the condition number is then at most ``max a / min a``).

    Parameters
    ----------
    rhs : float32 array (H, W, C)
    anchoring : float32 array (H, W)
        ``a > 0`` at every pixel.
    screening : float
        ``lambda``, pixels squared.
    params : PoissonParams
        ``tolerance`` and ``iterations``.

    Returns
    -------
    float32 array (H, W, C)
    """
    low, high = float(anchoring.min()), float(anchoring.max())
    anchor = anchoring[..., None]
    mean = math.sqrt(low * high)

    def operator(x):
        return anchor * x - screening * divergence(*gradients(x))

    def precondition(x):
        return solve_screened(x / mean, screening / mean)

    solution = precondition(rhs)
    if high - low < 1e-6 * high:
        return solution
    residual = rhs - operator(solution)
    direction = precondition(residual)
    rz = _dot(residual, direction)
    goal = params.tolerance * math.sqrt(_dot(rhs, rhs))
    for _ in range(params.iterations):
        if math.sqrt(_dot(residual, residual)) <= goal:
            break
        image = operator(direction)
        step = rz / _dot(direction, image)
        solution += np.float32(step) * direction
        residual -= np.float32(step) * image
        preconditioned = precondition(residual)
        rz, previous = _dot(residual, preconditioned), rz
        direction = preconditioned + np.float32(rz / previous) * direction
    return solution


def blend(sources, weights, params: PoissonParams = PoissonParams(), anchoring=None):
    """Mix ``sources`` by ``weights`` without the seams the weights would draw.

    Parameters
    ----------
    sources : sequence of float32 arrays (H, W, C)
    weights : sequence of float32 arrays (H, W)
        One per source, summing to one at every pixel.
    params : PoissonParams
    anchoring : float32 array (H, W), optional
        In (0, 1]: how firmly a pixel keeps the average's colour (1, the
        default, everywhere: one DCT solve). Where it is low a seam's step is
        taken up over a longer reach, and less of it where it is high.

    Returns
    -------
    float32 array (H, W, C)
        The weighted average plus the correction that removes
        ``sum_i s_i grad w_i`` from its gradient; equal to the average where
        a single source has all the weight and no seam is within reach.
    """
    average = np.zeros_like(sources[0], dtype=np.float32)
    for source, weight in zip(sources, weights, strict=True):
        average += weight[..., None] * source
    steps = [(np.diff(w, axis=1), np.diff(w, axis=0)) for w in weights]
    seams = np.zeros(average.shape[:2], bool)
    for dwx, dwy in steps:
        seams[:, :-1] |= np.abs(dwx) > 1e-4
        seams[:-1] |= np.abs(dwy) > 1e-4
    if not seams.any():
        return average
    length = params.length(average.shape[:2])
    reach = length / math.sqrt(1.0 if anchoring is None else float(anchoring.min()))
    box = _grown_box(seams, math.ceil(params.margin * reach))
    # The seam term of the average's gradient over every pixel pair of the
    # box, r = -sum_i mean(s_i) * diff(w_i) (see the module's docstring);
    # where no weight changes it is zero, and the box leaves that out.
    rx, ry = _seam_gradient([s[box] for s in sources], [(x[box], y[box]) for x, y in steps])
    # u = f + c, (A - lambda Lap) c = -lambda div(g - grad f) = -lambda div r,
    # on the box with its own reflecting border: no flux leaves it (r is
    # zero there, the margin away from every seam).
    screening = length * length
    rhs = -screening * divergence(rx, ry)
    if anchoring is None:
        average[box] += solve_screened(rhs, screening)
    else:
        average[box] += solve_anchored(rhs, anchoring[box], screening, params)
    return average


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    # Row sums in float32 (BLAS speed), their total in float64: one float32
    # sum over millions of pixels would lose the digits CG needs.
    rows_a, rows_b = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
    return float(np.einsum("ij,ij->i", rows_a, rows_b).sum(dtype=np.float64))


def _seam_gradient(sources, steps):
    height, width = sources[0].shape[:2]
    rx = np.zeros_like(sources[0], dtype=np.float32)
    ry = np.zeros_like(rx)
    for source, (dwx, dwy) in zip(sources, steps, strict=True):
        # Steps of the full frame cut to the box: one column/row too many
        # along the difference, which the box's far border drops.
        pair = source[:, 1:] + source[:, :-1]
        pair *= -0.5 * dwx[:, : width - 1, None]
        rx[:, :-1] += pair
        pair = source[1:] + source[:-1]
        pair *= -0.5 * dwy[: height - 1, :, None]
        ry[:-1] += pair
    return rx, ry


def _grown_box(mask: np.ndarray, margin: int) -> tuple[slice, slice]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    height, width = mask.shape
    return (
        slice(max(0, rows[0] - margin), min(height, rows[-1] + 2 + margin)),
        slice(max(0, cols[0] - margin), min(width, cols[-1] + 2 + margin)),
    )
