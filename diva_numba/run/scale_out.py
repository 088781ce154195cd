"""Long videos over many workers: chunks of the clip as Ray tasks, one device each.

:func:`run_chunks` is the chunked frame loop behind ``transfer_video(...,
scale_out=ScaleOut(...))`` and ``diva-numba transfer --workers N``: it finds
the shot cuts, splits the range into overlapping chunks
(:mod:`diva_numba.run.chunks`), runs every chunk as a Ray task that holds one GPU
(``num_gpus=1``) or a share of the CPU threads, and joins the chunks' frames
into the run's work directory, blending the overlaps. Each chunk keeps its own
resumable work directory, so a worker that dies loses only its chunk's
unfinished frames: Ray runs the task again and it continues from its last
finished frame, as ``--resume`` does for a whole run. See docs/DESIGN.md
section 3.

Ray is an optional dependency (``pip install 'diva-numba[ray]'``). By default a
local cluster is started for the run and stopped after it; with ``address`` the
tasks go to an existing cluster, whose nodes must have diva-numba installed and
see the clip, the style image and the work directory at the same paths.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from diva_numba.errors import DeviceError, DivaError, InputError
from diva_numba.images import resize, save_image
from diva_numba.outputs import AtomicFile, write_atomically
from diva_numba.run.chunks import Chunk, blend_join, join_weight, plan_chunks
from diva_numba.run.planning import TransferPlan
from diva_numba.run.spec import RunSpec, ScaleOut
from diva_numba.run.workdir import WorkDirectory, WorkLock
from diva_numba.video import read_frames
from diva_numba.video.shots import CutDetection, find_cuts

log = logging.getLogger("diva_numba")

#: How often the driver looks at the chunks' progress, in seconds.
POLL_SECONDS = 0.5
#: How long a cluster's address may take to accept a connection, in seconds.
CONNECT_SECONDS = 5.0
#: Ports an address without one means: Ray Client's for ``ray://``, the GCS's otherwise.
DEFAULT_PORTS = {"ray": 10001, "": 6379}
#: The environment variable Ray reads a cluster's address from (for ``auto``).
RAY_ADDRESS = "RAY_ADDRESS"


@dataclass(frozen=True)
class ChunkRun:
    """What every chunk of a run shares; sent to the cluster once (``ray.put``)."""

    spec: RunSpec
    plan: TransferPlan
    device_kind: str
    manifest: dict
    threads: int | None


@dataclass(frozen=True)
class ChunkJob:
    """One chunk: its frames and its work directory (sent to its task by value)."""

    chunk: Chunk
    work_dir: Path


def run_chunks(
    spec: RunSpec,
    plan: TransferPlan,
    device,
    *,
    work_dir: Path,
    manifest: dict,
    resume: bool,
    counter,
) -> WorkDirectory:
    """Compute every frame of ``plan`` in chunks on Ray workers; the joined frames' directory.

    Parameters
    ----------
    spec : RunSpec
        The run; ``spec.scale_out`` says how it is spread. Keyframes, mask and
        colour are applied by every chunk (a chunk propagates the keyframes
        over its own span).
    plan : TransferPlan
    device : Device
        Its kind is the workers' device.
    work_dir : Path
        The run's work directory; chunks work in ``work_dir/chunks/``.
    manifest : dict
        The run's fingerprint (:meth:`RunSpec.manifest`).
    resume : bool
    counter
        Progress: its ``done`` is kept up to date, its ``advance(n)`` called.

    Returns
    -------
    WorkDirectory
        Holding every frame of the range, ready for encoding.

    Raises
    ------
    DeviceError
        Ray is not installed or cannot start, or a chunk failed on every try.
    """
    ray = _import_ray()
    scale_out = spec.scale_out
    top = WorkDirectory.open(work_dir, manifest, resume=resume)
    cuts = _cuts(top, plan, spec.clip, spec.params.cuts)
    chunks = plan_chunks(
        plan.start, plan.end, cuts, chunk_frames=scale_out.chunk_frames, overlap=scale_out.overlap
    )
    log.debug("chunks: %s", ", ".join(f"{c.start}-{c.end}" for c in chunks))
    threads = None if device.is_cuda or scale_out.address else _threads_each(scale_out.workers)
    shared = ChunkRun(spec, plan, device.kind, manifest, threads)
    jobs = [
        ChunkJob(chunk, work_dir / "chunks" / f"{chunk.start:06d}-{chunk.end:06d}")
        for chunk in chunks
    ]
    if spec.model is None:
        from diva_numba.models.store import ensure_model

        ensure_model(progress=True)  # once, here, rather than racing in every worker
    with _cluster(ray, scale_out, device, threads) as cluster:
        task = cluster.remote(run_chunk).options(
            num_gpus=1 if device.is_cuda else 0,
            num_cpus=threads or 1,
            max_retries=scale_out.max_retries,
        )
        shared_reference = cluster.put(shared)
        pending = {task.remote(shared_reference, job): job for job in jobs}
        while pending:
            ready, _ = cluster.wait(list(pending), timeout=POLL_SECONDS, num_returns=1)
            _report(counter, jobs, plan)
            for reference in ready:
                job = pending.pop(reference)
                _result(cluster, reference, job)
        _report(counter, jobs, plan)
    _join(top, jobs)
    return top


def run_chunk(run: ChunkRun, job: ChunkJob) -> str:
    """Stylise one chunk into its work directory (what a worker runs); resumes if begun."""
    from diva_numba.gpu.device import resolve_device
    from diva_numba.image_analogy.deep_analogy import load_model
    from diva_numba.run.frame_loop import stylise_frames

    if run.threads:
        import numba

        numba.set_num_threads(run.threads)
    device = resolve_device(run.device_kind)
    chunk = job.chunk
    manifest = {**run.manifest, "frames": [chunk.start, chunk.end]}
    # A worker of an interrupted run may still be writing this chunk's last frame.
    with WorkLock(job.work_dir, wait=True):
        work = WorkDirectory.open(job.work_dir, manifest, resume=True)
        if work.finished_frames(chunk.start, chunk.end) < chunk.frames:
            model = load_model(run.spec.model, device, progress=False)
            plan = dataclasses.replace(run.plan, start=chunk.start, end=chunk.end)
            stylise_frames(model, run.spec, plan, work)
    return str(job.work_dir)


def check_cluster(scale_out: ScaleOut) -> None:
    """Refuse a run whose workers cannot be had, before its work directory is made.

    Ray must be installed; a cluster's address must accept a TCP connection within
    :data:`CONNECT_SECONDS`. Without that check ``ray.init`` waits for an absent
    cluster for many minutes, deaf to Ctrl-C. ``auto`` is the address in the
    ``RAY_ADDRESS`` environment variable, which is checked the same way, or
    else the cluster Ray finds on this machine itself.

    Raises
    ------
    DeviceError
        Ray is not installed, or the address is malformed or unreachable.
    """
    _import_ray()
    address, named = scale_out.address, ""
    if address == "auto" and os.environ.get(RAY_ADDRESS):  # what ray.init reads for "auto"
        address, named = os.environ[RAY_ADDRESS], f" (from {RAY_ADDRESS})"
    if address is None or address in ("auto", "local"):  # Ray finds or starts these itself
        return
    host, port = cluster_host_port(address)
    try:
        socket.create_connection((host, port), timeout=CONNECT_SECONDS).close()
    except OSError as exc:
        reason = "no answer" if isinstance(exc, TimeoutError) else exc.strerror or str(exc)
        raise DeviceError(
            f"cannot reach the Ray cluster at {address}{named} ({reason}); is it running?"
        ) from None


def cluster_host_port(address: str) -> tuple[str, int]:
    """The host and port of a Ray address: ``host:port``, ``ray://host[:port]``, ``[::1]:port``.

    Raises
    ------
    DeviceError
        Not an address of that form.
    """
    scheme, _, rest = address.rpartition("://")
    try:
        parts = urlsplit(f"//{rest}")
        port = parts.port
    except ValueError:
        parts, port = None, None
    if parts is None or not parts.hostname or scheme not in DEFAULT_PORTS or parts.path:
        raise DeviceError(
            f"{address!r} is not a Ray cluster address (host:port, ray://host:port or auto)"
        )
    return parts.hostname, DEFAULT_PORTS[scheme] if port is None else port


def _import_ray():
    try:
        import ray
    except ImportError:
        raise DeviceError(
            "--workers needs Ray, which is not installed: pip install 'diva-numba[ray]'"
        ) from None
    return ray


@contextmanager
def _cluster(ray, scale_out: ScaleOut, device, threads: int | None):
    """A Ray session: the given cluster, or a local one started and stopped here."""
    from diva_numba.environment import RUNTIME_DEFAULTS

    env = {name: os.environ.get(name, value) for name, (value, _) in RUNTIME_DEFAULTS.items()}
    if threads:
        env.update({name: str(threads) for name in _THREAD_VARIABLES})
    options = {
        "runtime_env": {"env_vars": env},
        "logging_level": logging.WARNING,
        "log_to_driver": False,
        "configure_logging": False,
    }
    if scale_out.address is None:
        options.update(
            # "local": a cluster of this run's own, never one that RAY_ADDRESS or an
            # earlier Ray cluster on this machine points ray.init at.
            address="local",
            num_cpus=scale_out.workers * (threads or 1),
            num_gpus=scale_out.workers if device.is_cuda else 0,
            include_dashboard=False,
            # The whole cluster on this machine, reached over loopback only.
            _node_ip_address="127.0.0.1",
        )
    else:
        options["address"] = scale_out.address
    # Ray's own Python warnings (token authentication, ...) follow the project's level,
    # so that -q leaves them out too.
    ray_logger = logging.getLogger("ray")
    level = ray_logger.level
    ray_logger.setLevel(max(logging.WARNING, log.getEffectiveLevel()))
    try:
        try:
            ray.init(**options)
        except Exception as exc:
            where = scale_out.address or "a local Ray cluster"
            raise DeviceError(f"cannot start {where}: {type(exc).__name__}: {exc}") from None
        try:
            yield ray
        finally:
            ray.shutdown()
    finally:
        ray_logger.setLevel(level)


#: Thread-pool sizes a CPU worker is limited to (Numba, OpenMP, OpenBLAS).
_THREAD_VARIABLES = ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def _threads_each(workers: int) -> int:
    import numba

    return max(1, numba.config.NUMBA_NUM_THREADS // workers)


def _result(ray, reference, job: ChunkJob) -> None:
    """Wait for one chunk; its failure as one DivaError line."""
    chunk = job.chunk
    try:
        ray.get(reference)
    except ray.exceptions.RayTaskError as exc:
        cause = exc.cause if isinstance(exc.cause, BaseException) else None
        if isinstance(cause, DivaError):
            raise cause from None
        raise DeviceError(
            f"frames {chunk.start}-{chunk.end - 1} failed on a worker: {cause or exc}; run "
            "again with --resume to continue"
        ) from None
    except ray.exceptions.RayError as exc:
        raise DeviceError(
            f"frames {chunk.start}-{chunk.end - 1}: the worker was lost "
            f"({type(exc).__name__}) more often than --max-retries allows; run again with "
            "--resume to continue"
        ) from None


def _cuts(top: WorkDirectory, plan, clip: Path, detection: CutDetection) -> list[int]:
    """The shot cuts of the range, found once per run and kept in its work directory."""
    path = top.path / "cuts.json"
    if path.exists():
        try:
            return [int(c) for c in json.loads(path.read_text())]
        except (OSError, ValueError, TypeError):
            raise InputError(
                f"work directory {top.path}: cuts.json is damaged; remove it"
            ) from None
    started = time.perf_counter()
    frames = (
        resize(frame, *plan.work_shape)
        for _, frame in read_frames(clip, start=plan.start, end=plan.end)
    )
    cuts = [plan.start + i for i in find_cuts(frames, detection=detection)]
    log.debug("shot cuts %s found in %.1f s", cuts, time.perf_counter() - started)
    write_atomically(path, json.dumps(cuts).encode())
    return cuts


def _report(counter, jobs: list[ChunkJob], plan) -> None:
    """Count the finished frames of every chunk (overlaps once) for the progress bar."""
    done = 0
    for job in jobs:
        frames = job.work_dir / "frames"
        finished = sum(1 for _ in frames.glob("*.png")) if frames.is_dir() else 0
        done += max(0, finished - job.chunk.lead)
    counter.advance(min(done, plan.end - plan.start) - counter.done)


def _join(top: WorkDirectory, jobs: list[ChunkJob]) -> None:
    """Every frame into ``top``: a chunk's own frames as they are, overlaps blended."""
    top.frames.mkdir(parents=True, exist_ok=True)
    previous = None
    for job in jobs:
        chunk = job.chunk
        work = WorkDirectory(job.work_dir, {**top.manifest, "frames": [chunk.start, chunk.end]})
        for index in range(job.chunk.start, job.chunk.end):
            position = index - job.chunk.start
            if position < job.chunk.lead:
                earlier = previous.read_frame(index)
                later = work.read_frame(index)
                weight = join_weight(position, job.chunk.lead)
                save_image(top.frame_path(index), blend_join(earlier, later, weight))
            else:
                with AtomicFile(top.frame_path(index)) as temp:
                    shutil.copyfile(work.frame_path(index), temp)
        previous = work
