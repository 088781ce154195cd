"""``diva-numba transfer``: give every frame of a video the look of a style image."""

from __future__ import annotations

import signal
from contextlib import contextmanager
from pathlib import Path

import click
import numpy as np

from diva_numba.cli_analogy import INPUT_IMAGE, analogy_options, build_params, load_model
from diva_numba.cli_common import Device, as_user_errors, device_option, notice, within_memory
from diva_numba.errors import OutputError
from diva_numba.outputs import check_target

#: Working long side by device; the CPU default keeps the bundled example to a
#: few minutes on two cores (see BENCHMARKS.md).
DEFAULT_VIDEO_SIZE = {"cuda": 480, "cpu": 192}
#: Warm-started L-BFGS iterations on seeded frames, by device.
DEFAULT_GUIDED_LBFGS = {"cuda": 20, "cpu": 5}
PREVIEW_ROWS = 4


@click.command()
@click.argument("style", type=INPUT_IMAGE)
@click.argument("clip", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Video to write (.mp4, .mov, .mkv); H.264 with the clip's audio.",
)
@click.option(
    "--size",
    type=click.IntRange(32, 4096),
    help="Long side of the output frames in pixels, made even "
    "[default: 480 on a GPU, 192 on the CPU, never enlarging].",
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
    default=3,
    show_default=True,
    help="PatchMatch iterations per level on frames seeded from the previous one.",
)
@click.option(
    "--guided-lbfgs-iters",
    type=click.IntRange(0, 1000),
    help="Warm-started L-BFGS iterations on later frames [default: 20 on a GPU, 5 on the CPU].",
)
@click.option(
    "--temporal-weight",
    type=click.FloatRange(0.0),
    default=1.0,
    show_default=True,
    help="Pull towards the previous output warped into the frame; 0 turns it off.",
)
@click.option(
    "--independent",
    is_flag=True,
    help="Process every frame as a separate image analogy (no temporal coherence).",
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
    type=click.FloatRange(0, 51),
    default=18,
    show_default=True,
    help="H.264 quality (lower is better; 18 is visually lossless).",
)
@click.option(
    "--chroma",
    type=click.Choice(["420", "444"]),
    default="420",
    show_default=True,
    help="Colour resolution: 420 plays everywhere; 444 keeps saturated colour edges sharp.",
)
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
@analogy_options
@device_option
@as_user_errors
def transfer(style, clip, output, device, **options):
    """Give every frame of CLIP the look of the STYLE image, without flicker.

    Frame 0 is a full image analogy; later frames are seeded from the previous
    one through the optical flow. The output has the clip's frame count, frame
    timing (a constant rate, or each frame's own time for a variable rate) and
    audio. An interrupted run (Ctrl-C, crash, kill) continues with
    --resume; the output file appears only when the video is complete.
    """
    from diva_numba.transfer import (
        WorkDirectory,
        encode_video,
        plan_transfer,
        run_manifest,
        stylise_frames,
    )

    params = _transfer_params(device, options)
    check_target(output, overwrite=options["overwrite"])
    plan = plan_transfer(style, clip, params, start=options["start"], end=options["end"])
    work_dir = options["work_dir"] or output.with_name(output.name + ".work")
    total = plan.end - plan.start
    keep_hint = (
        f"the finished frames are kept in {work_dir}; fix that and run the same command "
        "with --resume to continue"
    )

    reporter = _Reporter(total, output, preview=options["preview"])

    def compute(on: Device):
        manifest = run_manifest(style, clip, plan, params, on)
        # A retry on the CPU after running out of GPU memory continues the same run.
        work = WorkDirectory.open(work_dir, manifest, resume=options["resume"] or on != device)
        reporter.done = work.finished_frames(plan.start, plan.end)
        if reporter.done:
            notice(f"resuming after {reporter.done} of {total} frames")
        model = load_model(options["model_path"], on)
        try:
            with reporter:
                stylise_frames(model, plan, clip, work, params, on_frame=reporter.frame)
        except OutputError as exc:
            raise OutputError(f"{exc}; {keep_hint}") from None
        return work

    try:
        with _terminate_as_interrupt():
            work = within_memory(
                device, compute, smaller=f"--size (now {max(plan.width, plan.height)})"
            )
            try:
                encode_video(
                    plan,
                    clip,
                    work,
                    output,
                    crf=params.crf,
                    chroma=params.chroma,
                    overwrite=options["overwrite"],
                    keep_frames=options["keep_frames"],
                )
            except OutputError as exc:
                raise OutputError(f"{exc}; {keep_hint}") from None
    except KeyboardInterrupt:
        error = click.ClickException(
            f"interrupted after {reporter.done} of {total} frames; the work is kept in "
            f"{work_dir}; run the same command with --resume to continue"
        )
        error.exit_code = 130
        raise error from None
    if options["profile"] and reporter.last_profile is not None:
        click.echo(reporter.last_profile.table())
    _remove_tree(work_dir)
    click.echo(str(output))


def _transfer_params(device: Device, options: dict):
    from diva_numba.transfer import TransferParams

    analogy = build_params(
        device,
        alpha=options["alpha"],
        mask=options["mask"],
        iters=options["iters"],
        lbfgs_iters=options["lbfgs_iters"],
        seed=options["seed"],
    )
    guided_lbfgs = options["guided_lbfgs_iters"]
    return TransferParams(
        analogy=analogy,
        long_side=options["size"] or DEFAULT_VIDEO_SIZE[device.kind],
        guided_patchmatch_iterations=options["guided_iters"],
        guided_lbfgs_iterations=(
            DEFAULT_GUIDED_LBFGS[device.kind] if guided_lbfgs is None else guided_lbfgs
        ),
        temporal_weight=options["temporal_weight"],
        independent=options["independent"],
        crf=options["crf"],
        chroma=options["chroma"],
    )


class _Reporter:
    """Progress bar with seconds per frame and ETA, and the optional preview sheet."""

    def __init__(self, total: int, output: Path, *, preview: bool):
        self.total = total
        self.done = 0
        self.preview_path = output.with_name(output.name + ".preview.png") if preview else None
        self.preview_every = max(1, total // PREVIEW_ROWS)
        self.rows: list[np.ndarray] = []
        self.last_profile = None
        self.bar = None

    def __enter__(self):
        from tqdm import tqdm

        self.bar = tqdm(
            total=self.total, initial=self.done, unit="frame", dynamic_ncols=True, desc="transfer"
        )
        return self

    def __exit__(self, *exc_info):
        self.bar.close()

    def frame(self, report) -> None:
        self.done += 1
        self.last_profile = report.profile
        self.bar.set_postfix_str(f"{report.seconds:.1f} s/frame")
        self.bar.update(1)
        if self.preview_path is not None and (self.done - 1) % self.preview_every == 0:
            self._update_preview(report.input_frame, report.output_frame)

    def _update_preview(self, input_frame: np.ndarray, output_frame: np.ndarray) -> None:
        from diva_numba.imageio import save_image

        self.rows = [*self.rows, np.concatenate([input_frame, output_frame], axis=1)]
        self.rows = self.rows[-PREVIEW_ROWS:]
        save_image(self.preview_path, np.concatenate(self.rows, axis=0))


@contextmanager
def _terminate_as_interrupt():
    """Treat SIGTERM like Ctrl-C, so a killed run stops cleanly and can resume."""

    def handler(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
