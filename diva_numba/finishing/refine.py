"""Photo refinement of A': keep A's fine detail, take B''s colours (the reference's "photo" mode).

``A' <- A + WLS(A') - WLS(A)``: the weighted-least-squares smoother of Farbman
et al. (2008), guided by A's grey image, splits both images into a smooth base
and detail; the result is the base of A' plus the detail of A. It removes the
patchy texture a feature-space analogy can leave on photographs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.sparse.linalg import splu


@dataclass(frozen=True)
class WLSParams:
    """Weighted-least-squares smoothing, with the reference code's values.

    Attributes
    ----------
    smoothness : float
        ``lambda``: larger is smoother.
    edge_exponent : float
        ``alpha``: how sharply the guide's gradients stop the smoothing.
    epsilon : float
        Keeps the weights finite in flat regions.
    """

    smoothness: float = 0.8
    edge_exponent: float = 1.0
    epsilon: float = 1e-4


def wls_smooth(image: np.ndarray, guide: np.ndarray, *, params: WLSParams = WLSParams()):  # noqa: B008
    """Edge-preserving smoothing of ``image`` guided by ``guide``.

    Solves ``(I + lambda L) u = image`` per channel, ``L`` the 4-neighbour
    Laplacian whose links are weighted ``1 / (|d log(guide)| ** alpha + eps)``,
    with a sparse LU factorisation shared by the channels (the system is badly
    conditioned in flat regions, where iterative solvers crawl).

    Parameters
    ----------
    image : float array (H, W) or (H, W, C)
        Values on a 0..1 scale.
    guide : float array (H, W)
        Grey image on a 0..1 scale.
    params : WLSParams

    Returns
    -------
    float32 array, shape of ``image``
    """
    log_guide = np.log(np.asarray(guide, dtype=np.float64) + params.epsilon)
    weight_x = params.smoothness / (
        np.abs(np.diff(log_guide, axis=1)) ** params.edge_exponent + params.epsilon
    )
    weight_y = params.smoothness / (
        np.abs(np.diff(log_guide, axis=0)) ** params.edge_exponent + params.epsilon
    )
    height, width = log_guide.shape
    index = np.arange(height * width).reshape(height, width)
    rows = np.concatenate([index[:, 1:].ravel(), index[1:, :].ravel()])
    cols = np.concatenate([index[:, :-1].ravel(), index[:-1, :].ravel()])
    links = np.concatenate([weight_x.ravel(), weight_y.ravel()])
    diagonal = np.ones(height * width)
    np.add.at(diagonal, rows, links)
    np.add.at(diagonal, cols, links)
    system = sparse.csc_matrix(
        (
            np.concatenate([diagonal, -links, -links]),
            (
                np.concatenate([np.arange(height * width), rows, cols]),
                np.concatenate([np.arange(height * width), cols, rows]),
            ),
        ),
        shape=(height * width, height * width),
    )
    solve = splu(system).solve
    image = np.asarray(image, dtype=np.float64)
    channels = image.reshape(height * width, -1)
    smoothed = np.stack([solve(channels[:, c]) for c in range(channels.shape[1])], axis=-1)
    return smoothed.reshape(image.shape).astype(np.float32)


def refine_photo(
    a_prime: np.ndarray,
    a: np.ndarray,
    *,
    params: WLSParams = WLSParams(),  # noqa: B008 (frozen)
) -> np.ndarray:
    """``A + WLS(A') - WLS(A)``, both smoothed with A's grey image as the guide.

    Parameters
    ----------
    a_prime, a : uint8 array (H, W, 3)
        The analogy's output and the structure image (RGB), same size.

    Returns
    -------
    uint8 array (H, W, 3)
    """
    if a_prime.shape != a.shape:
        raise ValueError(f"shapes differ: {a_prime.shape} and {a.shape}")
    a_float = a.astype(np.float32) / 255.0
    guide = a_float @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    # One factorisation serves both images: they share the guide.
    both = np.concatenate([a_prime.astype(np.float32) / 255.0, a_float], axis=2)
    bases = wls_smooth(both, guide, params=params)
    refined = a_float + bases[..., :3] - bases[..., 3:]
    return np.clip(np.rint(refined * 255.0), 0, 255).astype(np.uint8)
