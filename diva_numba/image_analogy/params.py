"""The analogy's tuning knobs: :class:`AnalogyParams`, with the reference code's defaults.

See docs/DESIGN.md section 2 for what each one does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from diva_numba.gpu.device import Device, device_kind
from diva_numba.kernels.patchmatch import PatchMatchParams

#: Blend weights alpha for levels 4, 3, 2, 1: the official code's three presets.
ALPHA_PRESETS: dict[str, tuple[float, float, float, float]] = {
    "low": (0.7, 0.6, 0.5, 0.0),
    "paper": (0.8, 0.7, 0.6, 0.1),
    "high": (0.9, 0.8, 0.7, 0.2),
}

#: L-BFGS iterations per deconvolution by device: the reference's 100 where a GPU
#: makes them cheap; on the CPU quality is flat from about 5 on, so 10, about two thirds
#: of 20's time (BENCHMARKS.md "Frame 0 with 10 L-BFGS iterations on the CPU").
LBFGS_ITERATIONS_BY_DEVICE = {"cuda": 100, "cpu": 10}


@dataclass(frozen=True)
class AnalogyParams:
    """Every knob of the analogy, with the reference code's defaults.

    Attributes
    ----------
    alphas : tuple of 4 float
        Blend weights for levels 4, 3, 2, 1; larger keeps more of the structure
        image (see :data:`ALPHA_PRESETS`).
    mask : {"sigmoid", "step"}
        Response mask: the paper's sigmoid or the official code's hard step.
    kappa, tau : float
        Sigmoid steepness and threshold on the min-max normalised response.
    patch_sizes : tuple of 5 int
        PatchMatch patch side for levels 1..5.
    patchmatch_iterations : int
        PatchMatch rounds per level.
    search_radii : tuple of 4 int
        First random-search radius for levels 1..4; level 5 searches the whole
        map (``max(H, W) / 16`` of the image).
    lbfgs_iterations : int
        L-BFGS iterations per deconvolution at most.
    lbfgs_history : int
        L-BFGS curvature pairs.
    lbfgs_min_decrease : float
        Stop a deconvolution once an iteration lowers its loss by less than
        this share of the starting loss (0: run every iteration).
    seed : int
        Seeds every PatchMatch random draw; same seed and device, same result.
    cuda_graphs : bool
        On a GPU, replay each deconvolution evaluation as one CUDA graph (CPU: ignored).

    Notes
    -----
    The defaults are the reference code's; :meth:`for_device` gives each
    device's measured defaults (those of the command line).
    """

    alphas: tuple[float, float, float, float] = ALPHA_PRESETS["paper"]
    mask: Literal["sigmoid", "step"] = "sigmoid"
    kappa: float = 300.0
    tau: float = 0.05
    patch_sizes: tuple[int, int, int, int, int] = (5, 5, 3, 3, 3)
    patchmatch_iterations: int = 10
    search_radii: tuple[int, int, int, int] = (4, 4, 6, 6)
    lbfgs_iterations: int = 100
    lbfgs_history: int = 4
    lbfgs_min_decrease: float = 0.0
    seed: int = 0
    cuda_graphs: bool = True

    def __post_init__(self):
        if len(self.alphas) != 4 or not all(0.0 <= a <= 1.0 for a in self.alphas):
            raise ValueError(f"alphas must be 4 values in [0, 1], got {self.alphas}")
        if self.mask not in ("sigmoid", "step"):
            raise ValueError(f"mask must be 'sigmoid' or 'step', got {self.mask!r}")
        if self.patchmatch_iterations < 0 or self.lbfgs_iterations < 0:
            raise ValueError("iteration counts must be >= 0")

    @classmethod
    def for_device(cls, device: Device | str, **changes) -> AnalogyParams:
        """The defaults measured for ``device`` (see BENCHMARKS.md), with ``changes``.

        Parameters
        ----------
        device : Device or {"cuda", "cpu", "auto"}
        **changes
            Fields to set instead of the defaults.

        Examples
        --------
        >>> AnalogyParams.for_device("cpu").lbfgs_iterations
        10
        """
        defaults = {"lbfgs_iterations": LBFGS_ITERATIONS_BY_DEVICE[device_kind(device)]}
        return cls(**{**defaults, **changes})

    def alpha(self, level: int) -> float:
        """Blend weight of the features reconstructed at ``level`` (1..4)."""
        return self.alphas[4 - level]

    def patch_size(self, level: int) -> int:
        """Patch side at ``level``; the pixels (level 0) use 3."""
        return 3 if level == 0 else self.patch_sizes[level - 1]

    def search_radius(self, level: int, image_shape: tuple[int, int]) -> int:
        if level == 5:
            return max(1, max(image_shape) // 16)
        return self.search_radii[level - 1]

    def patchmatch_params(
        self, level: int, image_shape: tuple[int, int], direction: int, iterations: int
    ) -> PatchMatchParams:
        return PatchMatchParams(
            patch_size=self.patch_size(level),
            iterations=iterations,
            search_radius=self.search_radius(level, image_shape),
            seed=(self.seed * 1_000_003 + level * 2 + direction) & 0xFFFFFFFF,
        )
