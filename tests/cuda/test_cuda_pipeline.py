"""The CUDA code path end to end, under the CUDA simulator, on a CuPy stand-in.

``analogy()`` and a three-frame ``transfer_video()`` run on a CUDA
:class:`~diva_numba.gpu.device.Device` with the tiny model: CuPy calls go to the NumPy-backed
stand-in of ``tests/cupy_standin.py`` (installed as ``sys.modules["cupy"]``), the
Numba kernels run under the simulator (its lean launcher), and the results are
compared with the CPU path's. The stand-in refuses implicit conversions to NumPy, so a
hidden host round trip fails here; explicit transfers and kernel launches are counted
and held to the budgets below (``pytest -s`` prints the measured numbers).

How closely the paths agree: GEMMs are NumPy's ``matmul`` behind both paths, and the
per-element maths is the same ``shared`` float32 code, so the two differ only where
sums are ordered differently: the L-BFGS reductions (float64, CPU ``prange`` partial
sums against the CUDA kernels' fixed two-pass order) and the CPU twins' fast-math
reassociation (patch distances, normalisation). Deconvolution solutions therefore
agree to float32 rounding amplified by a few L-BFGS steps (:data:`SOLUTION_RTOL` of
the map's largest value), and fields agree wherever no two candidates score within
rounding of each other: all but :data:`FIELD_MISMATCH_SHARE` of each level's
positions. Pixels then follow the fields; voting and field resampling are bitwise
equal on both targets (docs/DESIGN.md section 5).
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import sys
from fractions import Fraction

import cupy_standin
import cv2
import numpy as np
import pytest
from clips import pan_frames, photo, write_clip
from numba import cuda
from numba.core import config

from diva_numba.image_analogy.deep_analogy import AnalogyModel, AnalogyParams, analogy
from diva_numba.images import load_image
from diva_numba.kernels import lbfgs_ops
from diva_numba.kernels.patchmatch import PatchMatchParams, patchmatch
from diva_numba.models import vgg
from diva_numba.network.subnetwork import SubNetwork, deconvolve
from diva_numba.optim.lbfgs import LBFGSParams
from diva_numba.run.anchor_frames import AnchorParams
from diva_numba.run.transfer import TransferParams, transfer_video
from diva_numba.synthesis.alignment import AlignmentParams
from diva_numba.synthesis.pyramid import SynthesisParams, synthesize

pytestmark = [
    pytest.mark.cudasim,
    pytest.mark.skipif(
        not config.ENABLE_CUDASIM, reason="the CuPy stand-in runs under the CUDA simulator only"
    ),
]

# --- budgets, as measured (pytest -s prints the numbers); tighten them as launches fuse ---

#: Issue 12's target: launches per L-BFGS iteration at every level (the mean over a
#: deconvolution's 10 iterations, its set-up and line searches included). Launched one
#: by one, levels 2, 3, 4, 5 made 10, 13, 17, 21 in an iteration of one evaluation.
#: A line search that spends its whole budget (a float32 stall that some random problems
#: meet) is left out of the mean: its launches are still held to the per-evaluation count.
ITERATION_LAUNCH_TARGET = 15
#: Launches per L-BFGS evaluation, the evaluations replayed as CUDA graphs: the copy of
#: the input into the graph's buffer, the graph, and the optimiser's two (the reduction
#: of the evaluation's scalars; the step that stores the pair and makes the first trial
#: point, or a line-search trial point). An iteration of one evaluation makes 4.
LAUNCHES_PER_EVALUATION = 4
#: A deconvolution's launches besides: x0 into the optimiser's state, the target into
#: the graph's buffer, the result out of the state.
LAUNCHES_PER_DECONVOLUTION = 3
#: The optimiser's own launches per evaluation (see above), x0's copy aside.
LBFGS_LAUNCHES_PER_EVALUATION = 2
#: Launches of one loss-and-gradient evaluation through its CUDA graph: the input's
#: copy and the graph (the first evaluation of a deconvolution also copies its target).
NETWORK_LAUNCHES_PER_EVALUATION = 2
#: Device<->host transfers per L-BFGS evaluation: the one read of the scalar register.
TRANSFERS_PER_EVALUATION = 1
#: Kernel launches per PatchMatch round: a propagation pass per jump (4) and the search.
PATCHMATCH_LAUNCHES_PER_ROUND = 5
#: Kernel launches of a PatchMatch call besides its rounds (the start).
PATCHMATCH_LAUNCHES_PER_CALL = 1
#: Host->device and device->host transfers of a seeded video frame, the L-BFGS's
#: per-evaluation reads not counted. Uploads: the frame's features and flow, one packed
#: upload of the synthesis' maps per scale (the style's stay on the device), and the flow
#: at the output size that carries the previous output's field; downloads: the
#: working-size A' and field, the synthesised frame, the state. A seeded frame skips the
#: appearance alignment; the first frame of a shot pays its round trip (below).
UPLOADS_PER_FRAME = 9
DOWNLOADS_PER_FRAME = 4
#: The appearance alignment (diva_numba/alignment.py) runs on the host, once per
#: synthesis: the positions go down, the aligned positions and the search mask go up.
ALIGNMENT_UPLOADS = 2
ALIGNMENT_DOWNLOADS = 1

#: Share of a level's field positions where the CPU and the GPU may pick different
#: matches (candidates within float32 rounding of each other).
FIELD_MISMATCH_SHARE = 0.02
#: Deconvolution solutions agree to this fraction of the map's largest value.
SOLUTION_RTOL = 1e-4


def host(array):
    return cupy_standin.asnumpy(array)


def report(title: str, rows: dict) -> None:
    print(f"\n{title}:")
    for name, value in rows.items():
        print(f"  {name}: {value}")


# --- the stand-in is as strict as CuPy --------------------------------------------------------


@cuda.jit
def double(a):
    i = cuda.grid(1)
    if i < a.size:
        a[i] *= 2


def test_the_stand_in_refuses_hidden_transfers(gpu):
    cupy = sys.modules["cupy"]
    _, counters = gpu
    values = cupy.asarray(np.arange(6, dtype=np.float32))
    assert counters.upload_count == 1
    for convert in (np.asarray, float, bool, lambda a: a.item(), lambda a: a + np.ones(6)):
        with pytest.raises(TypeError):
            convert(values if convert is not float else values[:1])
    np.testing.assert_array_equal(values.get(), np.arange(6))
    assert counters.download_count == 1

    double[2, 4](values)
    np.testing.assert_array_equal(cupy.asnumpy(values), 2 * np.arange(6))
    assert counters.launches["double"] == 1
    with pytest.raises(cupy_standin.HiddenTransfer, match="host NumPy array"):
        double[2, 4](np.zeros(6, dtype=np.float32))


# --- budgets of the two inner loops ----------------------------------------------------------


class _Watched:
    """One deconvolution's launches: of each evaluation, and of each whole iteration.

    The network's ``loss_and_gradient`` and the optimiser's ``lbfgs_step`` (which starts
    each iteration) are wrapped while the block runs.
    """

    def __init__(self, counters):
        self.counters = counters
        self.objective = []  # launches of each evaluation
        self.objective_kernels = collections.Counter()
        self.starts = []  # (launches, evaluations) so far, where each iteration starts

    @contextlib.contextmanager
    def watching(self, network, monkeypatch):
        real_loss_and_gradient, real_step = network.loss_and_gradient, lbfgs_ops.lbfgs_step

        def loss_and_gradient(x, wanted, **options):
            before = self.counters.snapshot()
            result = real_loss_and_gradient(x, wanted, **options)
            launched = self.counters.since(before)
            self.objective.append(launched.launch_count)
            self.objective_kernels.update(launched.launches)
            return result

        def step(*args, **kwargs):
            self.starts.append((self.counters.launch_count, len(self.objective)))
            return real_step(*args, **kwargs)

        network.loss_and_gradient = loss_and_gradient
        monkeypatch.setattr(lbfgs_ops, "lbfgs_step", step)
        try:
            yield self
        finally:
            network.loss_and_gradient = real_loss_and_gradient
            monkeypatch.setattr(lbfgs_ops, "lbfgs_step", real_step)

    def iterations_by_evaluations(self) -> dict[int, set[int]]:
        """Launches of each whole iteration, the last aside, by the evaluations it made."""
        found = collections.defaultdict(set)
        for (launches, done), (next_launches, next_done) in itertools.pairwise(self.starts):
            found[next_done - done].add(next_launches - launches)
        return dict(sorted(found.items()))


@pytest.mark.parametrize("level", [2, 3, 4, 5])
def test_lbfgs_budgets(gpu, cpu, tiny_model, rng, level, monkeypatch):
    """L-BFGS on a deconvolution sub-network, its evaluations replayed as CUDA graphs."""
    device, counters = gpu
    cupy = sys.modules["cupy"]
    layers = AnalogyModel(tiny_model, cpu).weights.layers
    network = SubNetwork(layers, level - 2, level)
    initial = rng.uniform(0, 1, (network.in_channels, 6, 5)).astype(np.float32)
    target = rng.uniform(0, 1, network.output_shape(6, 5)).astype(np.float32)
    params = LBFGSParams(max_iterations=10)
    x0, t = cupy.asarray(initial), cupy.asarray(target)

    with cupy_standin.counting(counters) as first:  # a fresh workspace: the capture
        captured = deconvolve(network, t, x0, params=params)
    graphed, eagerly = _Watched(counters), _Watched(counters)
    with cupy_standin.counting(counters) as used, graphed.watching(network, monkeypatch):
        result = deconvolve(network, t, x0, params=params)  # the graph captured above
    with cupy_standin.counting(counters) as eager_used, eagerly.watching(network, monkeypatch):
        eager = deconvolve(network, t, x0, params=params, cuda_graph=False)
    reference = deconvolve(network, target, initial, params=params)

    objective_launches = graphed.objective
    evaluations = len(objective_launches)
    optimizer_launches = used.launch_count - sum(objective_launches)
    # Iterations whose line search spent its whole budget leave the mean (see the target).
    searches = np.diff([done for _, done in graphed.starts] + [evaluations])
    stalled = searches >= params.max_line_search_evaluations
    stalled_launches = LAUNCHES_PER_EVALUATION * int(searches[stalled].sum())
    typical = result.iterations - int(stalled.sum())
    per_iteration = (used.launch_count - stalled_launches) / typical
    with_capture = (first.launch_count - stalled_launches) / typical
    # A capture adds two eager passes once (the reference and the warm-up).
    convs = len(network.layers)
    eager_pass = 2 * convs + sum(name in vgg.POOL_AFTER for name in network.layers) + 1
    by_evaluations = graphed.iterations_by_evaluations()
    report(
        f"L-BFGS on the level-{level} sub-network (6x5 input, history 4)",
        {
            "iterations, evaluations": (result.iterations, evaluations),
            "launches of an iteration, by its evaluations": by_evaluations,
            "... no graph (launched one by one)": eagerly.iterations_by_evaluations(),
            "line searches that spent their budget": int(stalled.sum()),
            "launches per iteration (mean, set-up included)": round(per_iteration, 2),
            "... capture included": round(with_capture, 2),
            "... no graph": round(eager_used.launch_count / eager.iterations, 2),
            "launches per evaluation": round(used.launch_count / evaluations, 2),
            "transfers per evaluation": used.transfer_count / evaluations,
            "optimiser launches per iteration": round(optimizer_launches / result.iterations, 2),
            "network launches per evaluation": dict(collections.Counter(objective_launches)),
            "... without the graph": dict(collections.Counter(eagerly.objective)),
            "recorded into the graph (kernels and GEMMs)": sum(first.recorded.values()),
            "optimiser launches by kernel": dict(used.launches - graphed.objective_kernels),
            "graph": network.graph_status,
        },
    )
    assert evaluations == result.evaluations and result.iterations == params.max_iterations
    assert per_iteration <= ITERATION_LAUNCH_TARGET and with_capture <= ITERATION_LAUNCH_TARGET
    budget = LAUNCHES_PER_EVALUATION * evaluations + LAUNCHES_PER_DECONVOLUTION
    assert used.launch_count <= budget
    assert all(launches == {LAUNCHES_PER_EVALUATION * n} for n, launches in by_evaluations.items())
    assert eagerly.iterations_by_evaluations().get(1, {eager_pass + 2}) == {eager_pass + 2}
    assert captured.evaluations == evaluations
    assert first.launch_count == used.launch_count + 2 * eager_pass
    assert used.transfer_count <= TRANSFERS_PER_EVALUATION * evaluations
    assert optimizer_launches <= LBFGS_LAUNCHES_PER_EVALUATION * evaluations + 1
    # The first evaluation also loads the target into the graph's buffer.
    assert objective_launches[0] <= NETWORK_LAUNCHES_PER_EVALUATION + 1
    assert max(objective_launches[1:]) <= NETWORK_LAUNCHES_PER_EVALUATION
    assert used.launches[cupy_standin.GRAPH_LAUNCH] == evaluations
    assert used.numba_device_arrays == 0
    # The first replay was bitwise the eager pass (the stand-in's GEMMs are NumPy's in
    # both), replays repeat themselves and the eager run, and the run is the CPU's to
    # float32 rounding.
    assert network.graph_check.loss_error == network.graph_check.gradient_error == 0
    np.testing.assert_array_equal(host(result.x), host(captured.x))
    assert eager_used.launches[cupy_standin.GRAPH_LAUNCH] == 0
    assert eager.losses == result.losses
    np.testing.assert_array_equal(host(result.x), host(eager.x))
    assert (result.iterations, result.evaluations) == (reference.iterations, reference.evaluations)
    # Ten iterations amplify the reductions' rounding: to a share of the map's largest value.
    np.testing.assert_allclose(
        host(result.x), reference.x, atol=SOLUTION_RTOL * float(np.abs(reference.x).max())
    )


def test_patchmatch_launches_per_round(gpu, rng):
    device, counters = gpu
    cupy = sys.modules["cupy"]
    # Dyadic features: exact arithmetic on both targets, so the very same fields.
    maps = [(rng.integers(0, 8, (3, 7, 9)) / 8).astype(np.float32) for _ in range(4)]
    on_device = [cupy.asarray(m) for m in maps]
    launches, fields = {}, {}
    for rounds in (1, 3):
        params = PatchMatchParams(patch_size=3, iterations=rounds, search_radius=4, seed=5)
        with cupy_standin.counting(counters) as used:
            field, _ = patchmatch(*on_device, params=params)
        launches[rounds] = used.launch_count
        fields[rounds] = host(field)
        np.testing.assert_array_equal(fields[rounds], patchmatch(*maps, params=params)[0])
    per_round = (launches[3] - launches[1]) / 2
    per_call = launches[1] - per_round
    report(
        "PatchMatch (7x9 maps, patch 3)",
        {"launches per round": per_round, "launches per call besides": per_call},
    )
    assert per_round <= PATCHMATCH_LAUNCHES_PER_ROUND
    assert per_call <= PATCHMATCH_LAUNCHES_PER_CALL


# --- the analogy ------------------------------------------------------------------------------


def _levels_agree(cpu_result, gpu_result) -> dict:
    """Share of differing field positions per level and direction; solutions checked."""
    shares = {}
    coarser_identical = True
    for level in (5, 4, 3, 2, 1):
        for direction in (0, 1):
            cpu_field = cpu_result.level_fields[level][direction]
            gpu_field = gpu_result.level_fields[level][direction]
            if cpu_field is None:
                assert gpu_field is None
                continue
            differs = (np.asarray(cpu_field) != host(gpu_field)).any(axis=-1)
            shares[level, "ab" if direction == 0 else "ba"] = float(differs.mean())
            coarser_identical &= not differs.any()
        if level in cpu_result.deconvolutions and coarser_identical:
            # The same fields voted the same targets: only rounding separates the solutions.
            expected = cpu_result.deconvolutions[level]
            np.testing.assert_allclose(
                host(gpu_result.deconvolutions[level]),
                expected,
                rtol=0,
                atol=SOLUTION_RTOL * float(np.abs(expected).max()),
            )
    assert all(share <= FIELD_MISMATCH_SHARE for share in shares.values()), shares
    return shares


def test_analogy_on_the_gpu_matches_the_cpu(gpu, cpu, tiny_model):
    device, counters = gpu
    image = photo()
    # Different sizes and aspect ratios, odd level sizes: every launch has partial blocks.
    image_a = np.ascontiguousarray(image[100:116, 200:224])
    image_bp = np.ascontiguousarray(image[300:324, 50:70])
    params = AnalogyParams(patchmatch_iterations=2, lbfgs_iterations=2)
    expected = analogy(AnalogyModel(tiny_model, cpu), image_a, image_bp, params=params)
    model = AnalogyModel(tiny_model, device)
    with cupy_standin.counting(counters) as used:
        result = analogy(model, image_a, image_bp, params=params)
    shares = _levels_agree(expected, result)
    report(
        "analogy 16x24 : 24x20 on the simulated GPU",
        {
            "field positions differing from the CPU": shares,
            "launches": used.launch_count,
            "of them CUDA graph replays": used.launches[cupy_standin.GRAPH_LAUNCH],
            "uploads": dict(used.uploads),
            "downloads": dict(used.downloads),
        },
    )
    assert used.numba_device_arrays == 0
    assert used.launches[cupy_standin.GRAPH_LAUNCH] > 0  # the deconvolutions replay graphs
    assert all(network.graph_problem == "" for network in model.subnetworks.values())
    for name in ("a_prime", "b", "nnf_ab", "nnf_ba"):
        got, want = getattr(result, name), getattr(expected, name)
        assert isinstance(got, np.ndarray) and got.dtype == want.dtype and got.shape == want.shape
    differing = np.abs(result.a_prime.astype(int) - expected.a_prime).max(axis=-1) > 0
    assert differing.mean() <= FIELD_MISMATCH_SHARE
    differing = np.abs(result.b.astype(int) - expected.b).max(axis=-1) > 0
    assert differing.mean() <= FIELD_MISMATCH_SHARE


# --- the synthesis ----------------------------------------------------------------------------


def test_the_aligned_synthesis_on_the_gpu_matches_the_cpu(gpu, cpu):
    """Two scales, the alignment at the second: same field as the CPU's, its transfers counted.

    B' is A moved by 3 px in another look (blurred, channels reversed) and the working
    field is the identity: the guides (A against itself at the working size) cannot see
    the move, the alignment finds it.
    """
    device, counters = gpu
    image = photo()
    a = np.ascontiguousarray(image[100:148, 200:264])
    bp = np.ascontiguousarray(cv2.GaussianBlur(image[103:151, 203:267], (3, 3), 0)[..., ::-1])
    work_field = np.stack(np.indices((24, 32)), axis=-1).astype(np.int32)
    latent = cv2.resize(a, (32, 24), interpolation=cv2.INTER_AREA)
    options = {"exemplar_work_shape": (24, 32)}
    expected = synthesize(a, bp, work_field, latent, device=cpu, **options)
    used = {}
    for rounds in (0, AlignmentParams().rounds):
        params = SynthesisParams(alignment=AlignmentParams(rounds=rounds))
        with cupy_standin.counting(counters) as used[rounds]:
            result = synthesize(a, bp, work_field, latent, device=device, params=params,
                                **options)  # fmt: skip
    aligned, plain = used[AlignmentParams().rounds], used[0]
    report(
        "synthesis 48x64 from 24x32 on the simulated GPU",
        {"uploads": dict(aligned.uploads), "downloads": dict(aligned.downloads)},
    )
    differing = (host(result.field) != expected.field).any(axis=-1)
    assert differing.mean() <= FIELD_MISMATCH_SHARE
    truth = np.stack(np.indices(a.shape[:2]), axis=-1) - 3
    assert (host(result.field) == truth).all(axis=-1)[4:-4, 4:-4].mean() > 0.9
    assert aligned.upload_count - plain.upload_count <= ALIGNMENT_UPLOADS
    assert aligned.download_count - plain.download_count <= ALIGNMENT_DOWNLOADS
    assert aligned.numba_device_arrays == 0


# --- the video --------------------------------------------------------------------------------

FRAMES = 3


@pytest.fixture
def clip(tmp_path):
    frames = pan_frames(FRAMES, width=32, height=32, step=(2, 1))
    path = tmp_path / "clip.mp4"
    write_clip(path, frames, fps=Fraction(25))
    style = tmp_path / "style.png"
    cv2.imwrite(str(style), cv2.applyColorMap(frames[0][:, :, 1], cv2.COLORMAP_JET))
    return path, style


VIDEO_PARAMS = TransferParams(
    analogy=AnalogyParams(patchmatch_iterations=1, lbfgs_iterations=1),
    work_size=32,
    guided_patchmatch_iterations=1,
    guided_lbfgs_iterations=1,
    # Every frame seeded: the analogy's state stays on the device from frame to frame.
    anchors=AnchorParams(enabled=False),
)


def _frames(directory):
    return [load_image(directory / f"{index:06d}.png") for index in range(FRAMES)]


def test_video_on_the_gpu_matches_the_cpu_and_stays_on_the_device(
    gpu, cpu, clip, tmp_path, tiny_model, monkeypatch, keep_work_after
):
    device, counters = gpu
    path, style = clip

    # The style's features are computed once per run, the frames' once each.
    feature_calls = []
    real_features = AnalogyModel.features

    def features(self, rgb):
        feature_calls.append(rgb.shape)
        return real_features(self, rgb)

    monkeypatch.setattr(AnalogyModel, "features", features)
    # Keep the work directory as it was after frame 1: the start of a resumed run.
    kept = tmp_path / "after_frame_1"
    keep_work_after(1, kept)
    evaluations = []
    real_loss_and_gradient = SubNetwork.loss_and_gradient

    def loss_and_gradient(self, x, target, **options):
        evaluations.append(1)
        return real_loss_and_gradient(self, x, target, **options)

    monkeypatch.setattr(SubNetwork, "loss_and_gradient", loss_and_gradient)

    per_frame = []  # (what the frame moved and launched, its L-BFGS evaluations)
    last = [counters.snapshot(), 0]

    def on_frame(frame_report):
        now = counters.snapshot()
        per_frame.append((now.since(last[0]), len(evaluations) - last[1]))
        last[:] = [now, len(evaluations)]

    transfer_video(
        style, path, tmp_path / "gpu.mp4", VIDEO_PARAMS, device=device, model=tiny_model,
        keep_frames=tmp_path / "gpu", on_frame=on_frame,
    )  # fmt: skip
    assert feature_calls == [(32, 32, 3)] * (FRAMES + 1)
    transfer_video(
        style, path, tmp_path / "cpu.mp4", VIDEO_PARAMS, device=cpu, model=tiny_model,
        keep_frames=tmp_path / "cpu",
    )  # fmt: skip

    # A run resumed on the GPU after frame 1 (state read back from disk and uploaded)
    # makes the very frame the uninterrupted run made (state kept on the device).
    transfer_video(
        style, path, tmp_path / "resumed.mp4", VIDEO_PARAMS, device=device, model=tiny_model,
        work_dir=kept, resume=True, keep_frames=tmp_path / "resumed",
    )  # fmt: skip
    gpu_frames, cpu_frames = _frames(tmp_path / "gpu"), _frames(tmp_path / "cpu")
    np.testing.assert_array_equal(_frames(tmp_path / "resumed")[2], gpu_frames[2])

    for index, (got, want) in enumerate(zip(gpu_frames, cpu_frames, strict=True)):
        differing = np.abs(got.astype(int) - want).max(axis=-1) > 0
        assert differing.mean() <= FIELD_MISMATCH_SHARE, (index, differing.mean())

    rows = {}
    for index, (used, frame_evaluations) in enumerate(per_frame):
        rows[f"frame {index}"] = (
            f"{used.upload_count} up, {used.download_count} down ({frame_evaluations} L-BFGS "
            f"evaluations), {used.launch_count} launches "
            f"({used.launches[cupy_standin.GRAPH_LAUNCH]} graph replays); up {dict(used.uploads)}, "
            f"down {dict(used.downloads)}"
        )
    report("transfer_video 3 frames 32x32 on the simulated GPU", rows)
    assert sum(used.launches[cupy_standin.GRAPH_LAUNCH] for used, _ in per_frame) > 0
    for used, frame_evaluations in per_frame[1:]:
        lbfgs_reads = TRANSFERS_PER_EVALUATION * frame_evaluations
        assert used.upload_count <= UPLOADS_PER_FRAME
        assert used.download_count <= DOWNLOADS_PER_FRAME + lbfgs_reads
        assert used.numba_device_arrays == 0
