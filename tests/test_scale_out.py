"""`--workers`: a clip in chunks on local Ray workers, joined without seams, and a dead worker.

Ray runs here for real (a local cluster of worker processes, over loopback).
"""

import dataclasses
import os
import signal
import threading
import time
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from clips import pan_frames, write_clip

pytest.importorskip("ray", reason="Ray is not installed (pip install 'diva-numba[ray]')")

from diva_numba import TransferParams, transfer_video  # noqa: E402
from diva_numba.cli import cli  # noqa: E402
from diva_numba.gpu.device import resolve_device  # noqa: E402
from diva_numba.image_analogy.deep_analogy import AnalogyParams, load_model  # noqa: E402
from diva_numba.images import load_image  # noqa: E402
from diva_numba.run.chunks import blend_join, join_weight, plan_chunks  # noqa: E402
from diva_numba.run.frame_loop import stylise_frames  # noqa: E402
from diva_numba.run.planning import plan_transfer  # noqa: E402
from diva_numba.run.scale_out import ScaleOut  # noqa: E402
from diva_numba.run.spec import RunSpec  # noqa: E402
from diva_numba.run.workdir import WorkDirectory, run_manifest  # noqa: E402
from diva_numba.video import probe_video  # noqa: E402

pytestmark = pytest.mark.slow

FRAMES, CUT = 18, 10
PARAMS = TransferParams.for_device(
    "cpu",
    analogy=AnalogyParams.for_device("cpu", patchmatch_iterations=1, lbfgs_iterations=1),
    guided_patchmatch_iterations=1,
    guided_lbfgs_iterations=0,
)
FAST = ["--iters", "1", "--lbfgs-iters", "1", "--guided-iters", "1", "--guided-lbfgs-iters", "0"]


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """Two shots (a cut at frame 10) of 64x48 pans, with audio, and a style image."""
    folder = tmp_path_factory.mktemp("clip")
    first = pan_frames(CUT, origin=(100, 100))
    second = pan_frames(FRAMES - CUT, origin=(300, 380), step=(-2, -2))[:, :, :, ::-1]
    path = folder / "clip.mp4"
    write_clip(path, np.concatenate([first, second]), fps=Fraction(25), audio_seconds=1.0)
    style = folder / "style.png"
    cv2.imwrite(str(style), cv2.applyColorMap(first[0][:, :, 1], cv2.COLORMAP_JET))
    return path, style


def one_process_frames(clip, style, model, chunk, folder: Path) -> dict[int, np.ndarray]:
    """What a single process makes of ``chunk`` on its own."""
    device = resolve_device("cpu")
    plan = plan_transfer(style, clip, PARAMS, start=0, end=None)
    plan = dataclasses.replace(plan, start=chunk.start, end=chunk.end)
    manifest = run_manifest(style, clip, plan, PARAMS, device)
    work = WorkDirectory.open(folder / f"{chunk.start}-{chunk.end}", manifest, resume=False)
    stylise_frames(load_model(model, device), RunSpec(style, clip, PARAMS), plan, work)
    return {i: load_image(work.frame_path(i)) for i in range(chunk.start, chunk.end)}


def expected_frames(clip, style, model, chunks, folder):
    """The chunks run one by one in this process, then joined as the workers' are."""
    alone = [one_process_frames(clip, style, model, chunk, folder) for chunk in chunks]
    joined = {}
    for number, chunk in enumerate(chunks):
        for index, frame in alone[number].items():
            position = index - chunk.start
            if position < chunk.lead:
                earlier = alone[number - 1][index]
                frame = blend_join(earlier, frame, join_weight(position, chunk.lead))
            joined[index] = frame
    return joined


def assert_same_frames(made: Path, expected: dict[int, np.ndarray]) -> None:
    """Equal up to BLAS rounding across thread counts (1 per worker here, 2 in-process)."""
    for index, frame in expected.items():
        difference = np.abs(load_image(made / f"{index:06d}.png").astype(int) - frame)
        assert difference.max() <= 2 and difference.mean() < 0.05, index


def test_two_workers_from_the_command_line(clip, tmp_path, tiny_model):
    path, style = clip
    out, frames = tmp_path / "out.mp4", tmp_path / "frames"
    args = ["transfer", str(style), str(path), "-o", str(out), "--model", str(tiny_model),
            "--device", "cpu", "--workers", "2", "--chunk-frames", "6", "--keep-frames",
            str(frames), *FAST]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    made = probe_video(out)
    assert made.frame_count == FRAMES and made.has_audio and made.fps == Fraction(25)
    assert not (tmp_path / "out.mp4.work").exists()
    # The cut is found, so no chunk spans it; the CLI overlaps chunks of 6 by 3 frames.
    chunks = plan_chunks(0, FRAMES, [CUT], chunk_frames=6, overlap=3)
    assert not any(c.start < CUT < c.end for c in chunks) and len(chunks) == 3
    assert_same_frames(frames, expected_frames(path, style, tiny_model, chunks, tmp_path / "one"))


def ray_workers_running(function: str) -> list[int]:
    """Process ids of Ray workers whose title says they run ``function`` now."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            title = (entry / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        if title.startswith(f"ray::{function}"):
            pids.append(int(entry.name))
    return pids


def finished_frames(chunk_dir: Path) -> dict[Path, int]:
    """A chunk's finished frames and their mtimes: those up to the frame whose state it
    saved. A frame's PNG is written before its state, so a run stopped between the two
    leaves a PNG that is not finished, and a resumed run makes it again."""
    state = chunk_dir / "state.npz"
    if not state.exists():
        return {}
    with np.load(state) as arrays:
        last = int(arrays["index"])
    pngs = (chunk_dir / "frames").glob("*.png")
    return {p: p.stat().st_mtime_ns for p in pngs if int(p.stem) <= last}


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds Ray's worker processes in /proc")
def test_a_killed_worker_loses_only_its_chunks_unfinished_frames(clip, tmp_path, tiny_model):
    path, style = clip
    out, frames, work = tmp_path / "out.mp4", tmp_path / "frames", tmp_path / "out.mp4.work"
    scale_out = ScaleOut(workers=2, chunk_frames=CUT, overlap=0)  # one chunk a shot
    killed = {}

    def kill_a_worker_after_its_second_frame():
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not killed:
            for chunk_dir in sorted(work.glob("chunks/*")):
                try:
                    finished = finished_frames(chunk_dir)
                except OSError:  # the work directory removed at the end of the run
                    continue
                pids = ray_workers_running("run_chunk")
                if len(finished) >= 2 and pids:
                    killed.update(chunk=chunk_dir, kept=finished)
                    os.kill(pids[0], signal.SIGKILL)
                    return
            time.sleep(0.05)

    watcher = threading.Thread(target=kill_a_worker_after_its_second_frame, daemon=True)
    watcher.start()
    result = transfer_video(style, path, out, PARAMS, device="cpu", model=tiny_model,
                            keep_frames=frames, scale_out=scale_out)  # fmt: skip
    watcher.join()
    assert killed, "no worker was killed: the test did not test anything"
    assert result.frames == FRAMES and probe_video(out).frame_count == FRAMES
    # Which chunk's worker died is up to the scheduler; every finished frame survived it.
    for frame, mtime in killed["kept"].items():
        assert not frame.exists() or frame.stat().st_mtime_ns == mtime
    chunks = plan_chunks(0, FRAMES, [CUT], chunk_frames=CUT, overlap=0)
    assert_same_frames(frames, expected_frames(path, style, tiny_model, chunks, tmp_path / "one"))


def test_an_interrupted_run_resumes_chunk_by_chunk(clip, tmp_path, tiny_model):
    from diva_numba import Interrupted

    path, style = clip
    out, frames, work = tmp_path / "out.mp4", tmp_path / "frames", tmp_path / "out.mp4.work"
    scale_out = ScaleOut(workers=2, chunk_frames=CUT, overlap=0)
    run = {"style": style, "clip": path, "output": out, "params": PARAMS, "device": "cpu",
           "model": tiny_model, "keep_frames": frames, "scale_out": scale_out}  # fmt: skip

    def interrupt_after_the_first_finished_frame():
        # As early as it can, so that the run (seconds long) is not over before the
        # interrupt reaches it.
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            try:
                if any(finished_frames(chunk) for chunk in work.glob("chunks/*")):
                    # A real SIGINT, as Ctrl-C sends: it also wakes a main thread blocked
                    # in a wait on the workers, which a flag set by interrupt_main may not.
                    os.kill(os.getpid(), signal.SIGINT)
                    return
            except Exception:  # noqa: BLE001 - the work directory going at the end of the run
                pass
            time.sleep(0.02)

    threading.Thread(target=interrupt_after_the_first_finished_frame, daemon=True).start()
    # Ctrl-C's own handler, whatever an earlier test in this process left there.
    handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(Interrupted, match="--resume"):
            transfer_video(**run)
    finally:
        signal.signal(signal.SIGINT, handler)
    assert not out.exists() and work.is_dir()
    done_before = {}
    for chunk in work.glob("chunks/*"):
        done_before.update(finished_frames(chunk))
    assert done_before, "no frame was finished before the interrupt: the test tested nothing"
    with pytest.raises(Exception, match="pass --resume"):
        transfer_video(**run)
    rewritten, watching = set(), threading.Event()

    def watch_finished_frames():  # until the finished run removes its work directory
        while not watching.is_set():
            for frame, mtime in done_before.items():
                try:
                    if frame.stat().st_mtime_ns != mtime:
                        rewritten.add(frame)
                except FileNotFoundError:
                    pass
            time.sleep(0.02)

    watcher = threading.Thread(target=watch_finished_frames, daemon=True)
    watcher.start()
    assert transfer_video(**run, resume=True).frames == FRAMES
    watching.set()
    watcher.join()
    assert not rewritten, "frames finished before the interrupt were computed again"
    chunks = plan_chunks(0, FRAMES, [CUT], chunk_frames=CUT, overlap=0)
    assert_same_frames(frames, expected_frames(path, style, tiny_model, chunks, tmp_path / "one"))
