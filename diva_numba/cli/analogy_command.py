"""``diva-numba analogy``: Deep Image Analogy for one image pair."""

from __future__ import annotations

import time
from pathlib import Path

import click

from diva_numba.cli.common import (
    Device,
    FiniteFloat,
    as_user_errors,
    ask_cpu_fallback,
    by_device,
    default_of,
    device_option,
    quiet_option,
)
from diva_numba.image_analogy.deep_analogy import (
    ALPHA_PRESETS,
    LBFGS_ITERATIONS_BY_DEVICE,
    AnalogyParams,
)
from diva_numba.run.analogy_files import IMAGE_SIZE_BY_DEVICE
from diva_numba.run.progress import clock

INPUT_IMAGE = click.Path(exists=True, dir_okay=False, readable=True, path_type=Path)


def parse_alphas(value: str) -> tuple[float, float, float, float]:
    """``--alpha`` as a preset name or four comma-separated numbers (levels 4..1)."""
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


#: Where `transfer` runs its options of the analogy (`analogy` runs them on its one pair).
FULL_ANALOGY_FRAMES = (
    "on full analogies: the first frame analysed, shot cuts, every frame with --independent"
)


def analogy_options(*, video: bool):
    """Options of the analogy itself, shared by `analogy` and `transfer` (``video``).

    Their help says which frames of a video they act on, and which option
    tunes the others.
    """

    def on_video(guided_option: str) -> str:
        return f" ({FULL_ANALOGY_FRAMES}; later frames: {guided_option})" if video else ""

    return _stack(
        click.option(
            "--model",
            "model_path",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            envvar="DIVA_NUMBA_MODEL",
            show_envvar=True,
            help="ONNX feature model to use instead of the default VGG-19 (fetched on first "
            "use into the user's cache directory, or DIVA_NUMBA_CACHE).",
        ),
        click.option(
            "--alpha",
            default="paper",
            show_default=True,
            help="Structure weight per level 4..1: a preset (low, paper, high) or four "
            "numbers. Larger keeps more of the structure image.",
        ),
        click.option(
            "--response-mask",
            "mask",
            type=click.Choice(["sigmoid", "step"]),
            default=default_of(AnalogyParams, "mask"),
            show_default=True,
            help="Response mask: the paper's sigmoid or the reference code's hard step.",
        ),
        click.option(
            "--iters",
            type=click.IntRange(1, 100),
            default=default_of(AnalogyParams, "patchmatch_iterations"),
            show_default=True,
            help="PatchMatch iterations per level" + on_video("--guided-iters") + ".",
        ),
        click.option(
            "--lbfgs-iters",
            type=click.IntRange(0, 1000),
            help="L-BFGS iterations per deconvolution at most"
            + on_video("--guided-lbfgs-iters")
            + f" [default: {by_device(LBFGS_ITERATIONS_BY_DEVICE)}; see BENCHMARKS.md].",
        ),
        click.option(
            "--seed",
            type=int,
            default=default_of(AnalogyParams, "seed"),
            show_default=True,
            help="Random seed.",
        ),
        click.option("--profile", is_flag=True, help="Print the time of each stage and level."),
    )


#: Size options of `analogy`.
image_size_options = _stack(
    click.option(
        "--size",
        type=click.IntRange(32, 8192),
        help="Long side of A_prime.png and B.png in pixels [default: the images' own].",
    ),
    click.option(
        "--work-size",
        type=click.IntRange(32, 4096),
        help="Long side of the images the deep analogy works on "
        f"[default: {by_device(IMAGE_SIZE_BY_DEVICE)}, never enlarging].",
    ),
    click.option(
        "--ratio",
        type=FiniteFloat(0.05, 1.0),
        default=1.0,
        show_default=True,
        help="Scale the working size down further by this factor, for speed.",
    ),
)


def analogy_params(device: Device, options: dict) -> AnalogyParams:
    """:class:`AnalogyParams` for ``device`` from the parsed :func:`analogy_options`."""
    changes = {
        "alphas": parse_alphas(options["alpha"]),
        "mask": options["mask"],
        "patchmatch_iterations": options["iters"],
        "seed": options["seed"],
    }
    if options["lbfgs_iters"] is not None:
        changes["lbfgs_iterations"] = options["lbfgs_iters"]
    return AnalogyParams.for_device(device, **changes)


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
@analogy_options(video=False)
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
@click.option(
    "--preserve-colour",
    is_flag=True,
    help="Keep A's colours: A' takes its CIE L* lightness from the analogy and a*, b* from A.",
)
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
@quiet_option
@device_option
@as_user_errors
def analogy(image_a, image_bp, output, size, work_size, ratio, refine, save_levels, preserve_colour,
            overwrite, device, quiet, **options):  # fmt: skip
    """Image analogy A : A' :: B : B' for a structure image A and a style image B'.

    Writes to OUTPUT: A_prime.png (A's structure with B''s look), B.png (B''s
    structure with A's look), nnf_ab.npy and nnf_ba.npy (int32 (H, W, 2): for each
    pixel of A its (y, x) match in B', and the reverse), all at the input sizes.

    The stages show on standard error as they start (a bar on a terminal, one
    line each otherwise), then how long it took; standard output gets OUTPUT.
    """
    from diva_numba.run.analogy_files import analogy_files

    started = time.perf_counter()
    result = analogy_files(
        image_a,
        image_bp,
        output,
        analogy_params(device, options),
        device=device,
        model=options["model_path"],
        work_size=work_size,
        size=size,
        ratio=ratio,
        refine=refine,
        save_levels=save_levels,
        preserve_colour=preserve_colour,
        overwrite=overwrite,
        cpu_fallback=ask_cpu_fallback,
        progress=not quiet,
    )
    if options["profile"]:
        click.echo(result.profile.table())
    if not quiet:
        click.echo(
            f"diva-numba: done in {clock(time.perf_counter() - started)}: {output}/ holds "
            "A_prime.png, B.png, nnf_ab.npy, nnf_ba.npy",
            err=True,
        )
    click.echo(str(output))
