"""The image analogy from files to files, as ``diva-numba analogy`` runs it.

:func:`analogy_files` loads the two images, brings them to their working sizes,
runs :func:`~diva_numba.image_analogy.deep_analogy.analogy` (falling back to the CPU when asked
and a GPU runs out of memory), synthesises A' and B at the images' own sizes
(:mod:`diva_numba.synthesis.pyramid`), optionally refines them in photo mode, and
writes an output directory that appears whole or not at all.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from diva_numba.finishing.compositing import preserve_colour as preserve_colour_of
from diva_numba.gpu.device import Device, resolve_device, to_host, within_memory
from diva_numba.gpu.timing import Profile
from diva_numba.image_analogy.deep_analogy import AnalogyParams, AnalogyResult, analogy, load_model
from diva_numba.images import load_image, resize, save_image, working_size
from diva_numba.outputs import atomic_directory, check_target
from diva_numba.run.progress import AnalogyProgress
from diva_numba.synthesis.pyramid import SynthesisParams, synthesize

log = logging.getLogger("diva_numba")

#: Long side the analogy works at by device, never enlarging (BENCHMARKS.md). On the CPU
#: 320, as for a video's frame 0: at 224 the bundled example's frame 0 came out with
#: no head or face on the bunny, at 320 with both and an ear (43 s -> 93 s on 2 cores).
IMAGE_SIZE_BY_DEVICE = {"cuda": 448, "cpu": 320}


def analogy_files(
    image_a: str | os.PathLike,
    image_bp: str | os.PathLike,
    output: str | os.PathLike,
    params: AnalogyParams | None = None,
    *,
    device: Device | str = "auto",
    model: str | os.PathLike | None = None,
    work_size: int | None = None,
    size: int | None = None,
    ratio: float = 1.0,
    synthesis: SynthesisParams | None = None,
    refine: bool = False,
    save_levels: bool = False,
    preserve_colour: bool = False,
    overwrite: bool = False,
    cpu_fallback: bool | Callable[[str], bool] = False,
    progress: bool = False,
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
        Directory to create; replaced only with ``overwrite``, and only when it
        holds nothing but an earlier output of this tool (never an input).
    params : AnalogyParams, optional
        Default: :meth:`AnalogyParams.for_device` of the device used.
    device : Device or {"auto", "cuda", "cpu"}, default "auto"
    model : path-like, optional
        ONNX feature model; default: the VGG-19 model, fetched on first use.
    work_size : int, optional
        Long side of the images the deep analogy works on; default by device
        (:data:`IMAGE_SIZE_BY_DEVICE`), never enlarging.
    size : int, optional
        Long side of A' and of B; default the images' own sizes.
    ratio : float, default 1.0
        Scale the working size down further, for speed.
    synthesis : SynthesisParams, optional
        The full-resolution synthesis from the working size up.
    refine : bool, default False
        Photo mode: ``A' <- A + WLS(A') - WLS(A)`` (and likewise B).
    save_levels : bool, default False
    preserve_colour : bool, default False
        Keep A's colours in A' (and B''s in B): CIE L* from the analogy, a* and
        b* from the image (:func:`~diva_numba.finishing.compositing.preserve_colour`).
    overwrite : bool, default False
    cpu_fallback : bool or callable, default False
        See :func:`~diva_numba.gpu.device.within_memory`.
    progress : bool, default False
        Report the stages on stderr as they start
        (:class:`~diva_numba.run.progress.AnalogyProgress`: a bar on a terminal, one
        line per stage otherwise), and the model's download.

    Returns
    -------
    AnalogyResult
        ``a_prime``, ``b``, ``nnf_ab`` and ``nnf_ba`` at the output sizes; the
        per-level fields, solutions and latent features at the working sizes.

    Raises
    ------
    InputError, ModelError, DeviceError, OutputError
    """
    image_a, image_bp, output = Path(image_a), Path(image_bp), Path(output)
    device = device if isinstance(device, Device) else resolve_device(device)
    params = params or AnalogyParams.for_device(device)
    inputs = [image_a, image_bp, *([Path(model)] if model is not None else [])]
    check_target(output, overwrite=overwrite, inputs=inputs, directory=True)
    # A' and B are made at the images' own sizes: every pixel is needed.
    a_full = load_image(image_a, full_size=True)
    bp_full = load_image(image_bp, full_size=True)
    sizes = {"device": device, "long_side": work_size, "ratio": ratio}
    a = resize(a_full, *working_shape(a_full, name=str(image_a), **sizes))
    bp = resize(bp_full, *working_shape(bp_full, name=str(image_bp), **sizes))
    a_out = resize(a_full, *output_shape(a_full, size))
    bp_out = resize(bp_full, *output_shape(bp_full, size))
    synthesis = synthesis or SynthesisParams()

    def compute(on: Device) -> AnalogyResult:
        analogy_model = load_model(model, on, progress=progress)
        with AnalogyProgress(mode=None if progress else "off") as reporter:
            profile = Profile(on, on_stage=reporter.stage)
            return finish(analogy(analogy_model, a, bp, params=params, profile=profile), on)

    def finish(result: AnalogyResult, on: Device) -> AnalogyResult:
        """A' and B synthesised at the output sizes, refined and recoloured as asked."""
        with result.profile.stage("synthesis"):
            # A' copies B''s pixels, B copies A's: the same synthesis both ways.
            options = {"device": on, "params": synthesis}
            a_prime = synthesize(
                a_out, bp_out, result.nnf_ab, result.b, exemplar_work_shape=bp.shape[:2], **options
            )
            b = synthesize(
                bp_out, a_out, result.nnf_ba, result.a_prime, exemplar_work_shape=a.shape[:2],
                **options,
            )  # fmt: skip
        result.a_prime, result.nnf_ab = a_prime.image, to_host(a_prime.field)
        result.b, result.nnf_ba = b.image, to_host(b.field)
        if refine:
            from diva_numba.finishing.refine import refine_photo

            with result.profile.stage("refine"):
                result.a_prime = refine_photo(result.a_prime, a_out)
                result.b = refine_photo(result.b, bp_out)
        if preserve_colour:
            result.a_prime = preserve_colour_of(result.a_prime, a_out)
            result.b = preserve_colour_of(result.b, bp_out)
        return result

    smaller = f"--work-size (now {max(*a.shape[:2], *bp.shape[:2])}) or --ratio"
    result = within_memory(device, compute, smaller=smaller, cpu_fallback=cpu_fallback)
    write_analogy(output, result, save_levels=save_levels, overwrite=overwrite, inputs=inputs)
    return result


def output_shape(image: np.ndarray, size: int | None) -> tuple[int, int]:
    """The (H, W) an output of ``image``'s shape is written at: its own, or long side ``size``."""
    height, width = image.shape[:2]
    if size is None:
        return height, width
    scale = size / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def working_shape(
    image: np.ndarray, *, device: Device, long_side: int | None, ratio: float, name: str
) -> tuple[int, int]:
    """The processing (H, W) of an image, with a notice when the area limit scales it."""
    height, width = image.shape[:2]
    side = long_side or min(max(height, width), IMAGE_SIZE_BY_DEVICE[device.kind])
    side = max(1, round(side * ratio))
    shape = working_size(height, width, long_side=side, option="--work-size")
    asked = working_size(height, width, long_side=side, max_area=math.inf, option="--work-size")
    if shape != asked:
        log.warning(
            "%s: a working size of %dx%d is above the area limit; working at %dx%d",
            name, asked[1], asked[0], shape[1], shape[0],
        )  # fmt: skip
    return shape


def write_analogy(
    output: Path,
    result: AnalogyResult,
    *,
    save_levels: bool,
    overwrite: bool,
    inputs: Sequence[os.PathLike] = (),
):
    """Write ``result`` (images and fields at the output sizes) into the directory ``output``.

    An existing ``output`` is replaced only with ``overwrite``, and only when it
    holds nothing but what the tool wrote there before
    (:func:`~diva_numba.outputs.check_target`).
    """
    from diva_numba.image_analogy.visualize import field_colour

    with atomic_directory(output, overwrite=overwrite, inputs=inputs) as staging:
        save_image(staging / "A_prime.png", result.a_prime)
        save_image(staging / "B.png", result.b)
        np.save(staging / "nnf_ab.npy", result.nnf_ab)
        np.save(staging / "nnf_ba.npy", result.nnf_ba)
        if save_levels:
            for level, (field_ab, field_ba) in result.level_fields.items():
                for name, field in (("ab", field_ab), ("ba", field_ba)):
                    host = to_host(field)
                    np.save(staging / f"nnf_{name}_level{level}.npy", host)
                    save_image(staging / f"nnf_{name}_level{level}.png", field_colour(host))
