"""Neural style on the command line: ``diva-numba stylise``, and its part of ``transfer``.

``transfer`` runs either method (``--method``); its ``--help`` lists the options
in three groups, those of both methods, the analogy's and neural style's
(:class:`MethodCommand`), and an option given for the method that does not use it
is refused with one line (:func:`refuse_other_method`).
"""

from __future__ import annotations

import math
from pathlib import Path

import click
from click.core import ParameterSource

from diva_numba.cli.common import (
    FiniteFloat,
    as_user_errors,
    by_device,
    default_of,
    device_option,
    quiet_option,
)
from diva_numba.neural_style.params import (
    CONTENT_LAYERS,
    FIRST_ITERATIONS_BY_DEVICE,
    LATER_ITERATIONS_BY_DEVICE,
    NEURAL_WORK_SIZE_BY_DEVICE,
    STYLE_LAYERS,
    NeuralStyleParams,
)
from diva_numba.run.progress import clock

INPUT_IMAGE = click.Path(exists=True, dir_okay=False, readable=True, path_type=Path)

#: ``transfer``'s options that the neural-style method uses, besides its own.
SHARED_OPTIONS = frozenset({
    "output", "size", "work_size", "start", "end", "independent", "work_dir", "resume",
    "keep_frames", "preview", "crf", "chroma", "region_mask", "mask_feather",
    "preserve_colour", "overwrite", "model_path", "seed", "device_name", "method", "help",
    "quiet", "as_json",
})  # fmt: skip
#: The options of the neural-style method alone.
NEURAL_OPTIONS = frozenset({
    "style_weight", "style_layer_weights", "content_layer", "tv_weight", "init",
    "first_iters", "later_iters", "temporal_loss_weight", "long_term",
})  # fmt: skip


def _numbers(count: int | None, kind):
    def parse(ctx, param, value):
        if value is None:
            return None
        try:
            numbers = tuple(kind(part) for part in value.split(",") if part.strip())
        except ValueError:
            numbers = None
        # float() reads "nan" and "inf", and a weight of either only wrecks the loss.
        if numbers is not None and not all(math.isfinite(number) for number in numbers):
            raise click.BadParameter(f"expected finite numbers, got {value!r}")
        if numbers is None or (count is not None and len(numbers) != count):
            wanted = f"{count} " if count is not None else ""
            raise click.BadParameter(f"expected {wanted}comma-separated numbers, got {value!r}")
        return numbers

    return parse


def neural_options(*, video: bool):
    """The neural-style options (with the temporal ones when ``video``)."""
    options = [
        click.option(
            "--style-weight",
            type=FiniteFloat(0.0),
            default=default_of(NeuralStyleParams, "style_weight"),
            show_default=True,
            help="Weight of the style (Gram matrices) against the content: larger paints more.",
        ),
        click.option(
            "--style-layer-weights",
            metavar="W1,..,W5",
            callback=_numbers(len(STYLE_LAYERS), float),
            help=f"Weight of each style layer, {', '.join(STYLE_LAYERS)} [default: 1 each].",
        ),
        click.option(
            "--content-layer",
            type=click.Choice(CONTENT_LAYERS),
            metavar="LAYER",
            default=default_of(NeuralStyleParams, "content_layer"),
            show_default=True,
            help="Where the content is compared, relu1_1 .. relu5_1 (deeper lets the strokes "
            "change more).",
        ),
        click.option(
            "--tv-weight",
            type=FiniteFloat(0.0),
            default=default_of(NeuralStyleParams, "tv_weight"),
            show_default=True,
            help="Weight of the total variation (smoothness) term.",
        ),
        click.option(
            "--init",
            type=click.Choice(["content", "noise"]),
            default=default_of(NeuralStyleParams, "init"),
            show_default=True,
            help="Start of the optimisation (a video's first frame): the image itself or noise.",
        ),
        click.option(
            "--first-iters",
            type=click.IntRange(1, 10000),
            help="L-BFGS iterations of "
            + ("a shot's first frame" if video else "the image")
            + f" [default: {by_device(FIRST_ITERATIONS_BY_DEVICE)}].",
        ),
    ]
    if video:
        options += [
            click.option(
                "--later-iters",
                type=click.IntRange(1, 10000),
                help="L-BFGS iterations of a later frame, started from the previous output "
                f"moved along the flow [default: {by_device(LATER_ITERATIONS_BY_DEVICE)}].",
            ),
            click.option(
                "--temporal-loss-weight",
                type=FiniteFloat(0.0),
                default=default_of(NeuralStyleParams, "temporal_weight"),
                show_default=True,
                help="Weight of the distance to the previous output moved along the flow "
                "(where the flow is trusted); 0 turns it off.",
            ),
            click.option(
                "--long-term",
                metavar="J1,J2,..",
                callback=_numbers(None, int),
                help="Also hold each frame to the outputs of these earlier frames (offsets of "
                "2 or more, e.g. 2,4): Ruder et al.'s long-term loss [default: none].",
            ),
        ]

    def apply(command):
        for option in reversed(options):
            command = option(command)
        return command

    return apply


def neural_params(device, options: dict, **changes) -> NeuralStyleParams:
    """:class:`NeuralStyleParams` for ``device`` from the parsed :func:`neural_options`."""
    values = {
        "style_weight": options["style_weight"],
        "content_layer": options["content_layer"],
        "tv_weight": options["tv_weight"],
        "init": options["init"],
        "preserve_colour": options["preserve_colour"],
        "mask_feather": options["mask_feather"],
        "seed": options["seed"],
        **changes,
    }
    optional = {
        "style_layer_weights": "style_layer_weights",
        "first_iters": "iterations",
        "later_iters": "later_iterations",
        "long_term": "long_term",
        "temporal_loss_weight": "temporal_weight",
        "size": "size",
        "work_size": "work_size",
    }
    for option, field_name in optional.items():
        if options.get(option) is not None:
            values[field_name] = options[option]
    try:
        return NeuralStyleParams.for_device(device, **values)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


class MethodCommand(click.Command):
    """A command whose help lists the options of each method in a section of its own."""

    def format_options(self, ctx, formatter):
        sections = {"both": [], "analogy": [], "neural-style": []}
        help_option = self.get_help_option(ctx)
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None or not isinstance(param, click.Option):
                continue
            method = "both" if param is help_option else _method_of(param.name)
            sections[method].append(record)
        titles = {
            "both": "Options (both methods)",
            "analogy": "Analogy options (--method analogy)",
            "neural-style": "Neural-style options (--method neural-style)",
        }
        for key, records in sections.items():
            if records:
                with formatter.section(titles[key]):
                    formatter.write_dl(records)


def _method_of(name: str) -> str:
    if name in SHARED_OPTIONS:
        return "both"
    return "neural-style" if name in NEURAL_OPTIONS else "analogy"


def refuse_other_method(ctx: click.Context, method: str) -> None:
    """Refuse, in one line, an option given on the command line that ``method`` does not use."""
    for param in ctx.command.get_params(ctx):
        if not isinstance(param, click.Option) or _method_of(param.name) in ("both", method):
            continue
        if ctx.get_parameter_source(param.name) in (
            ParameterSource.COMMANDLINE,
            ParameterSource.ENVIRONMENT,
        ):
            flag = max(param.opts, key=len)
            other = "analogy" if method == "neural-style" else "neural-style"
            raise click.UsageError(f"{flag} applies to --method {other} only")


@click.command()
@click.argument("style", type=INPUT_IMAGE)
@click.argument("image", type=INPUT_IMAGE)
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Image to write (PNG, JPEG, ...).",
)
@click.option(
    "--size",
    type=click.IntRange(32, 16384),
    help="Long side of the output in pixels [default: the image's own].",
)
@click.option(
    "--work-size",
    type=click.IntRange(32, 4096),
    help="Long side of the image the optimisation works on "
    f"[default: {by_device(NEURAL_WORK_SIZE_BY_DEVICE)}]; the result is enlarged to --size.",
)
@neural_options(video=False)
@click.option(
    "--seed",
    type=int,
    default=default_of(NeuralStyleParams, "seed"),
    show_default=True,
    help="Seed of the noise start (--init noise).",
)
@click.option(
    "--mask",
    "region_mask",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Stylise only where this grey image is white; elsewhere the image is kept.",
)
@click.option(
    "--mask-feather",
    type=FiniteFloat(0, 8192),
    default=default_of(NeuralStyleParams, "mask_feather"),
    show_default=True,
    metavar="PX",
    help="Width in pixels over which the effect fades in from the mask's edge.",
)
@click.option(
    "--preserve-colour",
    is_flag=True,
    help="Keep the image's colours: the result's CIE L* lightness with the image's a*, b*.",
)
@click.option(
    "--model",
    "model_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    envvar="DIVA_NUMBA_MODEL",
    show_envvar=True,
    help="ONNX feature model to use instead of the default one (fetched on first use).",
)
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
@quiet_option
@device_option
@as_user_errors
def stylise(style, image, output, device, quiet, **options):
    """Paint IMAGE in the manner of the STYLE image (neural style, Gatys et al.).

    The image's VGG-19 content (relu4_2) is kept while the Gram matrices of its
    features are brought to the style's, by L-BFGS on the pixels. The style may
    show anything: unlike the analogy, it needs no content in common with IMAGE.

    Standard output gets OUTPUT; standard error how the optimisation went.
    """
    from diva_numba.neural_style.styler import stylise as stylise_files

    result = stylise_files(
        style,
        image,
        output,
        neural_params(device, options),
        device=device,
        model=options["model_path"],
        mask=options["region_mask"],
        overwrite=options["overwrite"],
    )
    losses = result.lbfgs.losses
    if not quiet:
        click.echo(
            f"diva-numba: done in {clock(result.seconds)}: {result.lbfgs.iterations} L-BFGS "
            f"iterations, loss {losses[0]:.4g} -> {losses[-1]:.4g}",
            err=True,
        )
    click.echo(str(output))
