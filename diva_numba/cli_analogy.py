"""``diva-numba analogy``: Deep Image Analogy for one image pair."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from diva_numba.cli_common import Device, as_user_errors, device_option, notice, within_memory

INPUT_IMAGE = click.Path(exists=True, dir_okay=False, readable=True, path_type=Path)


def parse_alphas(value: str) -> tuple[float, float, float, float]:
    """``--alpha`` as a preset name or four comma-separated numbers (levels 4..1)."""
    from diva_numba.analogy import ALPHA_PRESETS

    if value in ALPHA_PRESETS:
        return ALPHA_PRESETS[value]
    try:
        numbers = tuple(float(part) for part in value.split(","))
    except ValueError:
        numbers = ()
    if len(numbers) != 4 or not all(0.0 <= n <= 1.0 for n in numbers):
        presets = ", ".join(ALPHA_PRESETS)
        raise click.BadParameter(
            f"use one of {presets} or four numbers in [0, 1] like 0.8,0.7,0.6,0.1"
        )
    return numbers  # type: ignore[return-value]


def _stack(*options):
    """One decorator applying ``options`` in the order listed (first is outermost)."""

    def apply(command):
        for option in reversed(options):
            command = option(command)
        return command

    return apply


#: Options of the analogy itself, shared by `analogy` and `transfer`.
analogy_options = _stack(
    click.option(
        "--model",
        "model_path",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        envvar="DIVA_NUMBA_MODEL",
        help="ONNX feature model to use instead of the default one (fetched on first use).",
    ),
    click.option(
        "--alpha",
        default="paper",
        show_default=True,
        help="Structure weight per level 4..1: a preset (low, paper, high) or four "
        "numbers. Larger keeps more of the structure image.",
    ),
    click.option(
        "--mask",
        type=click.Choice(["sigmoid", "step"]),
        default="sigmoid",
        show_default=True,
        help="Response mask: the paper's sigmoid or the reference code's hard step.",
    ),
    click.option(
        "--iters",
        type=click.IntRange(1, 100),
        default=10,
        show_default=True,
        help="PatchMatch iterations per level (on a video's first frame).",
    ),
    click.option(
        "--lbfgs-iters",
        type=click.IntRange(0, 1000),
        help="L-BFGS iterations per deconvolution at most (on a video's first frame) "
        "[default: 100 on a GPU, 20 on the CPU; see BENCHMARKS.md].",
    ),
    click.option("--seed", type=int, default=0, show_default=True, help="Random seed."),
    click.option("--profile", is_flag=True, help="Print the time of each stage and level."),
)

#: Working-size options of `analogy`.
image_size_options = _stack(
    click.option(
        "--size",
        type=click.IntRange(32, 4096),
        help="Long side of the working images in pixels "
        "[default: 448 on a GPU, 224 on the CPU, never enlarging].",
    ),
    click.option(
        "--ratio",
        type=click.FloatRange(0.05, 1.0),
        default=1.0,
        show_default=True,
        help="Scale the working size down further by this factor, for speed.",
    ),
)


#: Defaults chosen from the measurements in BENCHMARKS.md.
DEFAULT_SIZE = {"cuda": 448, "cpu": 224}
DEFAULT_LBFGS_ITERATIONS = {"cuda": 100, "cpu": 20}


def build_params(device: Device, *, alpha, mask, iters, lbfgs_iters, seed):
    from diva_numba.analogy import AnalogyParams

    if lbfgs_iters is None:
        lbfgs_iters = DEFAULT_LBFGS_ITERATIONS[device.kind]
    return AnalogyParams(
        alphas=parse_alphas(alpha),
        mask=mask,
        patchmatch_iterations=iters,
        lbfgs_iterations=lbfgs_iters,
        seed=seed,
    )


def working_shape(image: np.ndarray, device: Device, *, size, ratio, name: str):
    """The processing (H, W) of an image, with a notice when it is scaled down."""
    from diva_numba.imageio import MAX_AREA, working_size

    height, width = image.shape[:2]
    long_side = size or min(max(height, width), DEFAULT_SIZE[device.kind])
    long_side = max(1, round(long_side * ratio))
    shape = working_size(height, width, long_side=long_side)
    if height * width > MAX_AREA and shape[0] * shape[1] <= MAX_AREA:
        notice(
            f"{name}: {width}x{height} is above the area limit; working at {shape[1]}x{shape[0]}"
        )
    return shape


def load_model(model_path: Path | None, device: Device):
    from diva_numba.analogy import AnalogyModel
    from diva_numba.models.store import ensure_model

    return AnalogyModel(model_path or ensure_model(progress=True), device)


@click.command()
@click.argument("image_a", type=INPUT_IMAGE)
@click.argument("image_bp", type=INPUT_IMAGE)
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory to write (created; must not exist unless --overwrite).",
)
@image_size_options
@analogy_options
@click.option(
    "--refine",
    is_flag=True,
    help="Photo mode: keep the structure image's fine detail under the new colours "
    "(A' <- A + WLS(A') - WLS(A), edge-aware smoothing guided by A).",
)
@click.option(
    "--save-levels",
    is_flag=True,
    help="Also write every level's fields (.npy) and a flow-colour picture of each.",
)
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
@device_option
@as_user_errors
def analogy(image_a, image_bp, output, model_path, size, ratio, alpha, mask, iters, lbfgs_iters,
            seed, profile, refine, save_levels, overwrite, device):  # fmt: skip
    """Image analogy A : A' :: B : B' for a structure image A and a style image B'.

    Writes to OUTPUT: A_prime.png (A's structure with B''s look), B.png (B''s
    structure with A's look), nnf_ab.npy and nnf_ba.npy (int32 (H, W, 2): for each
    pixel of A its (y, x) match in B', and the reverse), all at the input sizes.
    """
    from diva_numba.analogy import analogy as run_analogy
    from diva_numba.imageio import load_image, resize
    from diva_numba.outputs import check_target

    check_target(output, overwrite=overwrite)
    params = build_params(device, alpha=alpha, mask=mask, iters=iters, lbfgs_iters=lbfgs_iters,
                          seed=seed)  # fmt: skip
    a_full = load_image(image_a)
    bp_full = load_image(image_bp)
    a = resize(a_full, *working_shape(a_full, device, size=size, ratio=ratio, name=str(image_a)))
    bp = resize(bp_full, *working_shape(bp_full, device, size=size, ratio=ratio,
                                        name=str(image_bp)))  # fmt: skip

    def compute(on: Device):
        result = run_analogy(load_model(model_path, on), a, bp, params=params)
        if refine:
            from diva_numba.refine import refine_photo

            with result.profile.stage("refine"):
                result.a_prime = refine_photo(result.a_prime, a)
                result.b = refine_photo(result.b, bp)
        return result

    long_side = max(*a.shape[:2], *bp.shape[:2])
    result = within_memory(device, compute, smaller=f"--size (now {long_side}) or --ratio")
    _write_analogy(output, result, a_full.shape[:2], bp_full.shape[:2], save_levels, overwrite)
    if profile:
        click.echo(result.profile.table())
    click.echo(str(output))


def _write_analogy(output: Path, result, shape_a, shape_bp, save_levels: bool, overwrite: bool):
    from diva_numba.device import to_host
    from diva_numba.imageio import resize, save_image
    from diva_numba.kernels.nnf_resample import upsample_field
    from diva_numba.outputs import atomic_directory
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
