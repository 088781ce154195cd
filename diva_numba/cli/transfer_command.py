"""``diva-numba transfer``: give every frame of a video the look of a style image."""

from __future__ import annotations

import json
import math
from pathlib import Path

import click
import numpy as np

from diva_numba.cli.analogy_command import INPUT_IMAGE, analogy_options, analogy_params
from diva_numba.cli.common import (
    Device,
    FiniteFloat,
    as_user_errors,
    ask_cpu_fallback,
    by_device,
    default_of,
    device_option,
    notice,
    quiet_option,
)
from diva_numba.cli.stylise_command import (
    MethodCommand,
    neural_options,
    neural_params,
    refuse_other_method,
)
from diva_numba.finishing.keyframes import Keyframe, parse_key
from diva_numba.neural_style.params import NEURAL_WORK_SIZE_BY_DEVICE
from diva_numba.run.anchor_frames import AnchorParams
from diva_numba.run.progress import clock
from diva_numba.run.scale_out import ScaleOut
from diva_numba.run.transfer import GUIDED_LBFGS_BY_DEVICE, WORK_SIZE_BY_DEVICE, TransferParams

PREVIEW_ROWS = 4


@click.command(cls=MethodCommand)
@click.argument("style", type=INPUT_IMAGE)
@click.argument("clip", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--method",
    type=click.Choice(["analogy", "neural-style"]),
    default="analogy",
    show_default=True,
    help="analogy: Deep Image Analogy, for a style image of similar content; neural-style: "
    "Gatys' Gram matrices with Ruder's temporal loss, for any painting.",
)
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Video to write (.mp4, .mov, .mkv); H.264 with the clip's audio.",
)
@click.option(
    "--size",
    type=click.IntRange(32, 8192),
    help="Long side of the output frames in pixels, made even [default: the clip's own].",
)
@click.option(
    "--work-size",
    type=click.IntRange(32, 4096),
    help="Long side of the frames the method works on, made even [default: analogy "
    f"{by_device(WORK_SIZE_BY_DEVICE)}; neural-style {by_device(NEURAL_WORK_SIZE_BY_DEVICE)}; "
    "never above the output's].",
)
@click.option(
    "--start",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="First frame to process (0-based).",
)
@click.option("--end", type=click.IntRange(1), help="Stop before this frame [default: the last].")
@click.option(
    "--guided-iters",
    type=click.IntRange(1, 100),
    default=default_of(TransferParams, "guided_patchmatch_iterations"),
    show_default=True,
    help="PatchMatch iterations per level on frames seeded from the previous one.",
)
@click.option(
    "--guided-lbfgs-iters",
    type=click.IntRange(0, 1000),
    help="Warm-started L-BFGS iterations on later frames "
    f"[default: {by_device(GUIDED_LBFGS_BY_DEVICE)}].",
)
@click.option(
    "--temporal-weight",
    type=FiniteFloat(0.0, 1000.0),
    default=default_of(TransferParams, "temporal_weight"),
    show_default=True,
    help="Weight of the previous output, moved along the flow, as a guide of the "
    "synthesis; 0 turns it off.",
)
@click.option(
    "--anchors/--no-anchors",
    default=default_of(AnchorParams, "enabled"),
    show_default=True,
    help="Run the deep analogy on anchor frames only (shot starts, frames the last anchor "
    "no longer covers, at most --anchor-spacing apart) and carry the other frames from "
    "their anchor; --no-anchors seeds every frame from the one before.",
)
@click.option(
    "--anchor-coverage",
    type=FiniteFloat(0.0, 1.0),
    default=default_of(AnchorParams, "min_coverage"),
    show_default=True,
    help="A frame becomes an anchor when the last anchor reliably covers less than this "
    "share of it.",
)
@click.option(
    "--anchor-spacing",
    type=click.IntRange(1),
    default=default_of(AnchorParams, "max_spacing"),
    show_default=True,
    help="At most this many frames from one anchor frame to the next.",
)
@click.option(
    "--anchor-agreement",
    type=FiniteFloat(0.0, 1000.0),
    default=default_of(AnchorParams, "agreement"),
    show_default=True,
    help="An anchor frame keeps what the frames before it carried where its own analogy "
    "looks as they do within this many CIE Lab units, and mends the rest; 0 starts every "
    "anchor afresh.",
)
@click.option(
    "--anchor-temporal-weight",
    type=FiniteFloat(0.0, 1000.0),
    default=default_of(AnchorParams, "temporal_weight"),
    show_default=True,
    help="Weight of the earlier output as a guide of an anchor frame, which searches "
    "every pixel; larger jumps less at the anchor and mends less.",
)
@click.option(
    "--independent",
    is_flag=True,
    help="Process every frame on its own, without temporal coherence (a separate image "
    "analogy, or per-frame neural style).",
)
@click.option(
    "--work-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where per-frame state is kept for --resume [default: OUTPUT.work].",
)
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its work directory.")
@click.option(
    "--keep-frames",
    type=click.Path(file_okay=False, path_type=Path),
    help="Also write the output frames as PNG files into this directory.",
)
@click.option(
    "--preview",
    is_flag=True,
    help="Keep OUTPUT.preview.png updated with input | output of a few frames.",
)
@click.option(
    "--crf",
    type=FiniteFloat(0, 51),
    default=default_of(TransferParams, "crf"),
    show_default=True,
    help="H.264 quality (lower is better; 18 is visually lossless).",
)
@click.option(
    "--chroma",
    type=click.Choice(["420", "444"]),
    default=default_of(TransferParams, "chroma"),
    show_default=True,
    help="Colour resolution: 420 plays everywhere; 444 keeps saturated colour edges sharp.",
)
@click.option(
    "--style-frame",
    type=click.IntRange(0),
    metavar="N",
    help="STYLE is a painting of frame N of the clip: it is carried along the optical flow "
    "(a keyframe), and the deep analogy, matching each frame against frame N's photograph, "
    "fills in only what frame N does not show.",
)
@click.option(
    "--key",
    "keys",
    multiple=True,
    metavar="N:IMAGE",
    callback=lambda ctx, param, values: _parse_keys(values),
    help="Another painted keyframe: IMAGE is a painting of frame N (repeatable). Each stretch "
    "of the clip follows its nearest keyframes, blended where two meet.",
)
@click.option(
    "--mask",
    "region_mask",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Stylise only where this grey image (or video of the clip's length) is white; "
    "elsewhere the input passes through unchanged.",
)
@click.option(
    "--mask-feather",
    type=FiniteFloat(0, 8192),
    default=default_of(TransferParams, "mask_feather"),
    show_default=True,
    metavar="PX",
    help="Width in pixels over which the effect fades in from the mask's edge.",
)
@click.option(
    "--preserve-colour",
    is_flag=True,
    help="Keep each frame's colours: the output's CIE L* lightness with the frame's a*, b*.",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 1024),
    help="Run the clip in chunks on this many Ray workers at once (one GPU each, or an "
    "equal share of the CPU cores); needs the ray extra [default: one process, no chunks].",
)
@click.option(
    "--ray-address",
    help="Send the chunks to this running Ray cluster instead of starting a local one.",
)
@click.option(
    "--chunk-frames",
    type=click.IntRange(2),
    default=default_of(ScaleOut, "chunk_frames"),
    show_default=True,
    help="With --workers: most frames per chunk; longer shots are split into chunks "
    f"that overlap by {default_of(ScaleOut, 'overlap')} frames, blended at the joins.",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace OUTPUT (and OUTPUT.preview.png, and frames an earlier run kept in "
    "--keep-frames) if they exist; never an input of the run.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the closing summary as one JSON object on standard output, in place of "
    "OUTPUT's path.",
)
@quiet_option
@analogy_options(video=True)
@neural_options(video=True)
@device_option
@as_user_errors
def transfer(style, clip, output, device, quiet, as_json, method, **options):
    """Give every frame of CLIP the look of the STYLE image, without flicker.

    Frame 0 is a full image analogy; the analogy then runs on anchor frames
    (frames the last anchor no longer covers, at most --anchor-spacing apart),
    and every other frame copies the style through its anchor's field, carried
    along the optical flow. The output has the clip's frame count, frame
    timing (a constant rate, or each frame's own time for a variable rate) and
    audio. An interrupted run (Ctrl-C, crash, kill) continues with
    --resume; the output file appears only when the video is complete.

    With --method neural-style every frame is optimised (Gatys et al.) from the
    previous output moved along the optical flow, held to it by a temporal loss
    where the flow is trusted (Ruder et al.): for paintings that share nothing
    with the footage.

    Progress goes to standard error (on a terminal a bar, with the stages of
    frame 0 and the time left; otherwise one line per stage and frame), then a
    closing summary: the output, the preview, the time per frame, the warping
    error. Standard output gets OUTPUT's path, or the summary as JSON with --json.
    """
    from diva_numba.run.spec import RunSpec
    from diva_numba.run.transfer import run_transfer

    refuse_other_method(click.get_current_context(), method)
    scale_out = _scale_out(options)
    if scale_out is not None and options["preview"]:
        raise click.UsageError("--preview works in one process only; leave out --workers")
    if method == "neural-style":
        params = neural_params(device, options, independent=options["independent"],
                               crf=options["crf"], chroma=options["chroma"])  # fmt: skip
    else:
        params = _transfer_params(device, options)
    capped = work_size_notice(clip, options["work_size"], options["size"])
    if capped and not quiet:
        notice(capped)
    spec = RunSpec.make(
        style,
        clip,
        params,
        device=device,
        keys=_keyframes(style, options),
        mask=options["region_mask"],
        model=options["model_path"],
        start=options["start"],
        end=options["end"],
        scale_out=scale_out,
    )
    preview = None
    if options["preview"]:
        # A resumed run goes on updating the preview of the run it continues.
        work_dir = options["work_dir"] or output.with_name(output.name + ".work")
        resuming = options["resume"] and work_dir.is_dir()
        overwrite = options["overwrite"] or resuming
        preview = _Preview(output, overwrite=overwrite, inputs=spec.inputs())
    result = run_transfer(
        spec,
        output,
        device=device,
        work_dir=options["work_dir"],
        resume=options["resume"],
        overwrite=options["overwrite"],
        keep_frames=options["keep_frames"],
        on_frame=preview,
        progress=not quiet,
        cpu_fallback=ask_cpu_fallback,
    )
    if preview is None and options["overwrite"]:
        _Preview.discard(output, inputs=spec.inputs())
    if options["profile"] and result.last_profile is not None:
        click.echo(result.last_profile.table(), err=as_json)
    summary = transfer_summary(result, None if preview is None else preview.path)
    if not quiet:
        click.echo(summary_text(summary), err=True)
    click.echo(json.dumps(summary) if as_json else str(output))


def work_size_notice(clip: Path, work_size: int | None, size: int | None) -> str | None:
    """What to tell a user whose ``--work-size`` is above the output's long side, or None.

    The working size is capped at the output's: frames are never enlarged to be worked
    on unless the output is enlarged too, which ``--size`` asks for.
    """
    if work_size is None:
        return None
    from diva_numba.video.probe import clip_long_side

    output_side = size or clip_long_side(clip)
    output_side -= output_side % 2  # as the output's size is made even
    if work_size <= output_side:
        return None
    return (
        f"--work-size {work_size} is above the output's long side ({output_side}), so the "
        f"frames are worked on at {output_side}; for finer detail on a small clip enlarge "
        f"the output too: --size {work_size} --work-size {work_size}"
    )


def transfer_summary(result, preview: Path | None) -> dict:
    """What a finished run made and how long it took, as ``--json`` prints it."""
    flicker = result.warp_error
    per_frame = result.seconds / result.frames_computed if result.frames_computed else None
    return {
        "output": str(result.output),
        "preview": None if preview is None else str(preview),
        "frames": result.frames,
        "frames_computed": result.frames_computed,
        "width": result.width,
        "height": result.height,
        "seconds": round(result.seconds, 2),
        "seconds_per_frame": None if per_frame is None else round(per_frame, 3),
        "warp_error": None if flicker is None else _rounded(flicker.output_mean),
        "input_warp_error": None if flicker is None else _rounded(flicker.reference_mean),
    }


def summary_text(summary: dict) -> str:
    """The closing summary on standard error: a few lines a person reads at a glance."""
    lines = [
        f"diva-numba: done in {clock(summary['seconds'])}: {summary['output']} "
        f"({summary['width']} x {summary['height']}, {summary['frames']} frames)"
    ]
    if summary["seconds_per_frame"] is not None:
        resumed = summary["frames"] - summary["frames_computed"]
        note = f" ({resumed} frames were done before --resume)" if resumed else ""
        lines.append(f"  time:    {summary['seconds_per_frame']:.2f} s per frame{note}")
    if summary["preview"] is not None:
        lines.append(f"  preview: {summary['preview']} (input | output, a few frames)")
    if summary["warp_error"] is not None:
        lines.append(
            f"  flicker: warping error {summary['warp_error']:.2f} "
            f"(the input clip's own: {summary['input_warp_error']:.2f}; lower is steadier)"
        )
    return "\n".join(lines)


def _rounded(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 3)


def _transfer_params(device: Device, options: dict) -> TransferParams:
    changes = {
        "analogy": analogy_params(device, options),
        "guided_patchmatch_iterations": options["guided_iters"],
        "temporal_weight": options["temporal_weight"],
        "independent": options["independent"],
        "anchors": AnchorParams(
            enabled=options["anchors"],
            min_coverage=options["anchor_coverage"],
            max_spacing=options["anchor_spacing"],
            agreement=options["anchor_agreement"],
            temporal_weight=options["anchor_temporal_weight"],
        ),
        "crf": options["crf"],
        "chroma": options["chroma"],
        "preserve_colour": options["preserve_colour"],
        "mask_feather": options["mask_feather"],
    }
    if options["size"] is not None:
        changes["size"] = options["size"]
    if options["work_size"] is not None:
        changes["work_size"] = options["work_size"]
    if options["guided_lbfgs_iters"] is not None:
        changes["guided_lbfgs_iterations"] = options["guided_lbfgs_iters"]
    return TransferParams.for_device(device, **changes)


def _parse_keys(values) -> list[Keyframe]:
    keys = []
    for value in values:
        try:
            key = parse_key(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--key") from None
        if not key.path.is_file():
            raise click.BadParameter(f"{key.path} does not exist", param_hint="--key")
        keys.append(key)
    return keys


def _keyframes(style: Path, options: dict) -> list[Keyframe]:
    keys = list(options["keys"])
    if options["style_frame"] is not None:
        keys.append(Keyframe(options["style_frame"], style))
    return keys


def _scale_out(options: dict) -> ScaleOut | None:
    if options["workers"] is None and options["ray_address"] is None:
        return None
    chunk_frames = options["chunk_frames"]
    return ScaleOut(
        workers=options["workers"] or 1,
        address=options["ray_address"],
        chunk_frames=chunk_frames,
        overlap=min(default_of(ScaleOut, "overlap"), chunk_frames // 2),
    )


class _Preview:
    """Keeps OUTPUT.preview.png showing input | output of a few frames.

    The file follows the rule of every output (checked before any work): an
    existing one is replaced only with --overwrite, an input never.
    """

    def __init__(self, output: Path, *, overwrite: bool, inputs: list[Path]):
        from diva_numba.outputs import check_target, remove_partials

        self.path = output.with_name(output.name + ".preview.png")
        check_target(self.path, overwrite=overwrite, inputs=inputs)
        remove_partials(self.path.parent, [self.path.name])
        self.rows: list[np.ndarray] = []

    @staticmethod
    def discard(output: Path, *, inputs: list[Path]) -> None:
        """Remove an earlier run's OUTPUT.preview.png, which --overwrite replaces.

        A run without --preview would otherwise leave beside its video a preview
        of another one. An input of the run is never removed.
        """
        from diva_numba.errors import OutputError
        from diva_numba.outputs import refuse_inputs

        path = output.with_name(output.name + ".preview.png")
        try:
            refuse_inputs(path, inputs)
            path.unlink(missing_ok=True)
        except (OutputError, OSError):
            pass  # an input of this run, or a directory: not ours to remove

    def __call__(self, report) -> None:
        if (report.done - 1) % max(1, report.total // PREVIEW_ROWS):
            return
        from diva_numba.images import save_image

        row = np.concatenate([report.input_frame, report.output_frame], axis=1)
        self.rows = [*self.rows, row][-PREVIEW_ROWS:]
        save_image(self.path, np.concatenate(self.rows, axis=0))
