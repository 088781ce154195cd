"""The image analogy from files to files, as ``diva-numba analogy`` runs it.

:func:`analogy_files` loads the two images, brings them to their working sizes,
runs :func:`~diva_numba.deep_analogy.analogy` (falling back to the CPU when asked
and a GPU runs out of memory), optionally refines the result in photo mode,
and writes an output directory that appears whole or not at all.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from diva_numba.compositing import preserve_colour as preserve_colour_of
from diva_numba.deep_analogy import AnalogyParams, AnalogyResult, analogy, load_model
from diva_numba.device import Device, resolve_device, to_host, within_memory
from diva_numba.imageio import MAX_AREA, load_image, resize, save_image, working_size
from diva_numba.kernels.nnf_resample import upsample_field
from diva_numba.outputs import atomic_directory, check_target

log = logging.getLogger("diva_numba")

#: Long side the analogy works at by device, never enlarging (BENCHMARKS.md).
IMAGE_SIZE_BY_DEVICE = {"cuda": 448, "cpu": 224}


def analogy_files(
    image_a: str | os.PathLike,
    image_bp: str | os.PathLike,
    output: str | os.PathLike,
    params: AnalogyParams | None = None,
    *,
    device: Device | str = "auto",
    model: str | os.PathLike | None = None,
    long_side: int | None = None,
    ratio: float = 1.0,
    refine: bool = False,
    save_levels: bool = False,
    preserve_colour: bool = False,
    overwrite: bool = False,
    cpu_fallback: bool | Callable[[str], bool] = False,
) -> AnalogyResult:
    """Image analogy A : A' :: B : B' from two image files into a directory.

    ``output`` receives ``A_prime.png`` (A's structure with B''s look),
    ``B.png`` (B''s structure with A's look), ``nnf_ab.npy`` and ``nnf_ba.npy``
    (int32 ``(H, W, 2)``: for each pixel of A its ``(y, x)`` match in B', and the
    reverse), all at the input images' sizes; with ``save_levels`` also every
    level's fields and a flow-colour picture of each.

    Parameters
    ----------
    image_a, image_bp : path-like
        The structure image A and the style image B'.
    output : path-like
        Directory to create; replaced only with ``overwrite`` (and never when it
        holds an input).
    params : AnalogyParams, optional
        Default: :meth:`AnalogyParams.for_device` of the device used.
    device : Device or {"auto", "cuda", "cpu"}, default "auto"
    model : path-like, optional
        ONNX feature model; default: the VGG-19 model, fetched on first use.
    long_side : int, optional
        Long side of the working images; default by device
        (:data:`IMAGE_SIZE_BY_DEVICE`), never enlarging.
    ratio : float, default 1.0
        Scale the working size down further, for speed.
    refine : bool, default False
        Photo mode: ``A' <- A + WLS(A') - WLS(A)`` (and likewise B).
    save_levels : bool, default False
    preserve_colour : bool, default False
        Keep A's colours in A' (and B''s in B): CIE L* from the analogy, a* and
        b* from the image (:func:`~diva_numba.compositing.preserve_colour`).
    overwrite : bool, default False
    cpu_fallback : bool or callable, default False
        See :func:`~diva_numba.device.within_memory`.

    Returns
    -------
    AnalogyResult
        At the working sizes.

    Raises
    ------
    InputError, ModelError, DeviceError, OutputError
    """
    image_a, image_bp, output = Path(image_a), Path(image_bp), Path(output)
    device = device if isinstance(device, Device) else resolve_device(device)
    params = params or AnalogyParams.for_device(device)
    inputs = [image_a, image_bp, *([Path(model)] if model is not None else [])]
    check_target(output, overwrite=overwrite, inputs=inputs)
    a_full = load_image(image_a)
    bp_full = load_image(image_bp)
    sizes = {"device": device, "long_side": long_side, "ratio": ratio}
    a = resize(a_full, *working_shape(a_full, name=str(image_a), **sizes))
    bp = resize(bp_full, *working_shape(bp_full, name=str(image_bp), **sizes))

    def compute(on: Device) -> AnalogyResult:
        result = analogy(load_model(model, on), a, bp, params=params)
        if refine:
            from diva_numba.refine import refine_photo

            with result.profile.stage("refine"):
                result.a_prime = refine_photo(result.a_prime, a)
                result.b = refine_photo(result.b, bp)
        if preserve_colour:
            result.a_prime = preserve_colour_of(result.a_prime, a)
            result.b = preserve_colour_of(result.b, bp)
        return result

    smaller = f"--size (now {max(*a.shape[:2], *bp.shape[:2])}) or --ratio"
    result = within_memory(device, compute, smaller=smaller, cpu_fallback=cpu_fallback)
    write_analogy(output, result, a_full.shape[:2], bp_full.shape[:2], save_levels=save_levels,
                  overwrite=overwrite)  # fmt: skip
    return result


def working_shape(
    image: np.ndarray, *, device: Device, long_side: int | None, ratio: float, name: str
) -> tuple[int, int]:
    """The processing (H, W) of an image, with a notice when the area limit scales it."""
    height, width = image.shape[:2]
    side = long_side or min(max(height, width), IMAGE_SIZE_BY_DEVICE[device.kind])
    side = max(1, round(side * ratio))
    shape = working_size(height, width, long_side=side)
    if height * width > MAX_AREA and shape[0] * shape[1] <= MAX_AREA:
        log.warning(
            "%s: %dx%d is above the area limit; working at %dx%d",
            name, width, height, shape[1], shape[0],
        )  # fmt: skip
    return shape


def write_analogy(
    output: Path,
    result: AnalogyResult,
    shape_a: tuple[int, int],
    shape_bp: tuple[int, int],
    *,
    save_levels: bool,
    overwrite: bool,
) -> None:
    """Write ``result`` into the directory ``output``, the images and fields at the given sizes."""
    from diva_numba.visualize import field_colour

    with atomic_directory(output, overwrite=overwrite) as staging:
        save_image(staging / "A_prime.png", resize(result.a_prime, *shape_a))
        save_image(staging / "B.png", resize(result.b, *shape_bp))
        nnf_ab = upsample_field(result.nnf_ab, target_shape=shape_a, source_shape=shape_bp)
        nnf_ba = upsample_field(result.nnf_ba, target_shape=shape_bp, source_shape=shape_a)
        np.save(staging / "nnf_ab.npy", nnf_ab)
        np.save(staging / "nnf_ba.npy", nnf_ba)
        if save_levels:
            for level, (field_ab, field_ba) in result.level_fields.items():
                for name, field in (("ab", field_ab), ("ba", field_ba)):
                    host = to_host(field)
                    np.save(staging / f"nnf_{name}_level{level}.npy", host)
                    save_image(staging / f"nnf_{name}_level{level}.png", field_colour(host))
