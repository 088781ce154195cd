"""``diva-numba metrics``: measurements of finished videos."""

from __future__ import annotations

import json
import math

import click

from diva_numba.cli.common import as_user_errors
from diva_numba.video.flow import DEFAULT_PRESET


@click.group()
def metrics():
    """Measure videos: how much a stylised video flickers, how much texture it keeps."""


@metrics.command("warp-error")
@click.argument("output", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--reference",
    "-r",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="The input video whose motion the output should follow.",
)
@click.option(
    "--reference-start",
    type=click.IntRange(0),
    metavar="N",
    help="OUTPUT shows the reference from its frame N on (a transfer with --start N); "
    "it is measured against as many reference frames from N as it has "
    "[default: the same frames].",
)
@click.option(
    "--flow-preset",
    type=click.Choice(["ultrafast", "fast", "medium"]),
    default=DEFAULT_PRESET,
    show_default=True,
    help="DIS optical flow preset used on the reference.",
)
@click.option(
    "--style",
    "-s",
    type=click.Path(exists=True, dir_okay=False),
    help="The style image: also report the texture retention (see `metrics texture`).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@as_user_errors
def warp_error(output: str, reference: str, reference_start: int | None, flow_preset: str,
               style: str | None, as_json: bool):  # fmt: skip
    """Temporal warping error of OUTPUT, and of the reference for comparison.

    For each pair of consecutive frames: the mean absolute difference
    (0..255, averaged over RGB) between frame t and frame t-1 warped into it
    by the reference's optical flow, over pixels the flow is reliable for.
    Lower is steadier; the reference's own value is the floor. Measured at
    OUTPUT's size.
    """
    from tqdm import tqdm

    from diva_numba.video.metrics import video_warp_error
    from diva_numba.video.texture import video_texture_retention

    def progress(frames, total):
        # disable=None: a bar on a terminal only, never in logs or pipes.
        return tqdm(frames, total=total, desc="warp error", unit="frame", leave=False, disable=None)

    result = video_warp_error(output, reference, preset=flow_preset, progress=progress,
                              reference_start=reference_start)  # fmt: skip
    texture = None if style is None else video_texture_retention(output, style)
    first = reference_start or 0  # pairs are named by the reference's frames
    if as_json:
        report = _as_dict(result, output, reference, flow_preset, first=first)
        if texture is not None:
            report["texture"] = _texture_dict(texture, output, style)
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(
        f"warping error of {output} against the motion of {reference} "
        f"(0..255, at {result.width}x{result.height}, DIS {flow_preset})"
    )
    click.echo(f"{'frames':>12}  {'output':>8}  {'reference':>9}  {'reliable':>8}")
    for pair, (out, ref, valid) in enumerate(
        zip(result.output, result.reference, result.valid_fraction, strict=True)
    ):
        label = f"{first + pair}-{first + pair + 1}"
        click.echo(f"{label:>12}  {out:8.3f}  {ref:9.3f}  {valid:8.1%}")
    click.echo(f"{'mean':>12}  {result.output_mean:8.3f}  {result.reference_mean:9.3f}")
    if texture is not None:
        click.echo(f"texture retention against {style}: {texture.retention:.3f}")


@metrics.command("texture")
@click.argument("output", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--style",
    "-s",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="The style image the video was given.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@as_user_errors
def texture(output: str, style: str, as_json: bool):
    """Texture retention of OUTPUT: how much of the style image's texture it keeps.

    The mean gradient magnitude of OUTPUT's frames (grey level, central
    differences) over the style image's, with the style image shrunk to
    OUTPUT's long side (never enlarged), the scale at which the synthesis copies
    its pixels. 1 keeps the painting's strokes as strong as they are; a
    synthesis that averages them away scores lower.
    """
    from diva_numba.video.texture import video_texture_retention

    result = video_texture_retention(output, style)
    if as_json:
        click.echo(json.dumps(_texture_dict(result, output, style), indent=2))
        return
    height, width = result.style_shape
    click.echo(f"texture retention of {output} against {style} (style at {width}x{height})")
    click.echo(f"{'frames':>12}  {len(result.frames):8d}")
    click.echo(f"{'output':>12}  {result.frames.mean():8.3f}  mean gradient, 0..255 a pixel")
    click.echo(f"{'style':>12}  {result.style:8.3f}")
    click.echo(f"{'retention':>12}  {result.retention:8.3f}")


def _texture_dict(result, output: str, style: str) -> dict:
    height, width = result.style_shape
    return {
        "output": output,
        "style": style,
        "style_width": width,
        "style_height": height,
        "frames": [round(float(v), 6) for v in result.frames],
        "output_gradient": round(float(result.frames.mean()), 6),
        "style_gradient": round(float(result.style), 6),
        "retention": None if math.isnan(result.retention) else round(result.retention, 6),
    }


def _as_dict(result, output: str, reference: str, flow_preset: str, *, first: int) -> dict:
    def number(value: float) -> float | None:
        return None if math.isnan(value) else round(float(value), 6)

    return {
        "output": output,
        "reference": reference,
        "width": result.width,
        "height": result.height,
        "flow_preset": flow_preset,
        "reference_start": first,
        "pairs": [
            {
                "frames": [first + pair, first + pair + 1],
                "output": number(out),
                "reference": number(ref),
                "reliable_fraction": number(valid),
            }
            for pair, (out, ref, valid) in enumerate(
                zip(result.output, result.reference, result.valid_fraction, strict=True)
            )
        ],
        "mean": {"output": number(result.output_mean), "reference": number(result.reference_mean)},
    }


__all__ = ["metrics"]
