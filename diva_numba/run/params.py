"""The knobs of a video run: :class:`TransferParams`, with each device's measured defaults.

See docs/DESIGN.md section 3 for the frame loop they steer.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field

from diva_numba.finishing.keyframes import KeyframeParams
from diva_numba.gpu.device import Device, device_kind
from diva_numba.image_analogy.params import AnalogyParams
from diva_numba.run.anchor_frames import AnchorParams
from diva_numba.synthesis.alignment import AlignmentParams
from diva_numba.synthesis.pyramid import SynthesisParams
from diva_numba.video.shots import CutDetection

#: Long side of the deep analogy's frames by device (never above the output's). With
#: anchor frames only anchors run the deep analogy, so the size costs on frame 0 and the
#: anchors, not on the frames carried between them; below about 320 px VGG-19's deepest
#: level sees too little of a face to match it (BENCHMARKS.md "Working size 320 on the CPU").
WORK_SIZE_BY_DEVICE = {"cuda": 480, "cpu": 320}
#: Warm-started L-BFGS iterations on seeded frames, by device.
GUIDED_LBFGS_BY_DEVICE = {"cuda": 20, "cpu": 2}


#: The synthesis of video frames: no appearance alignment. Run on a shot's first frame
#: only, it makes that frame jump against the next (warping error 1.00 -> 2.00 on a
#: clip with disocclusions, a painted pan's Lab distance to its ideal 0.63 -> 1.15);
#: run on every frame, its noise from frame to frame drifts (docs/DESIGN.md section 10).
VIDEO_SYNTHESIS = SynthesisParams(alignment=AlignmentParams(rounds=0))


@dataclass(frozen=True)
class TransferParams:
    """How a video is processed.

    Attributes
    ----------
    analogy : AnalogyParams
        The per-frame analogy (frame 0 and ``independent`` runs use it as is).
    work_size : int
        Long side of the frames the deep analogy works on, made even; never
        above the output's.
    size : int or None
        Long side of the output, made even; None keeps the clip's own size.
    synthesis : SynthesisParams
        The guided full-resolution synthesis from the working size to the
        output's (:mod:`diva_numba.synthesis.pyramid`); :data:`VIDEO_SYNTHESIS` by
        default, without the appearance alignment.
    guided_patchmatch_iterations : int
        PatchMatch rounds per level on frames seeded from the previous one.
    guided_lbfgs_iterations : int
        L-BFGS iterations per deconvolution on seeded frames (warm-started), at most.
    guided_lbfgs_min_decrease : float
        A seeded frame's deconvolution stops once an iteration lowers its loss
        by less than this share of the warm start's loss: the budget goes
        where the frame is new (BENCHMARKS.md, "Frame budget").
    new_content_share : float
        Each level's deconvolution solution belongs to an *anchor*, the last
        frame that solved it; a seeded frame moves it once from there along the
        composed optical flow and keeps it, without evaluating the objective,
        until at least this share of the frame is new to the anchor (occluded,
        or come into the picture since). Then that level deconvolves,
        warm-started, and the frame becomes its anchor. Applies to levels 3
        and 2 (BENCHMARKS.md, "Frame budget").
    deep_content_share : float
        The same share for levels 5 and 4, whose sub-networks cost three
        quarters of a deconvolution and see most of the frame through their
        receptive fields: solving them again on new content changed no
        measured quality, so they wait until most of the frame is new.
    deconvolve_new_only : bool
        A level solved again on a seeded frame is solved only in boxes around
        the content new to its anchor (and the sub-network's receptive field
        around them); the rest keeps the moved solution (:mod:`diva_numba.network.regions`).
    cuts : CutDetection
        The shot-cut detector (:mod:`diva_numba.video.shots`). A frame whose
        colour histogram is at least ``cuts.threshold`` from the previous
        frame's starts a new shot: a full analogy, as frame 0. The scale-out
        cuts the clip into chunks with the same detector.
    temporal_weight : float
        Weight of the temporal guide in the synthesis' patch distance: the
        previous output moved along the flow, at pixels the flow trusts; 0
        turns it off. Output pixels are always copied from the style image,
        never from earlier outputs.
    anchors : AnchorParams
        Anchor frames (:mod:`diva_numba.run.anchor_frames`): the deep analogy runs
        on a shot's first frame and wherever the last anchor no longer covers
        the frame, and the other frames are carried from their anchor along a
        flow re-anchored on it, never chained from frame to frame.
    refresh_b_every : int
        Recompute B's latent features every this many frames (0: only on the
        first frame).
    style_frame_as_b : bool
        When the style image is a painting of a frame of the clip (a keyframe
        with the style image's content, as ``--style-frame`` makes), that
        frame's photograph is the analogy's B: its VGG features replace B's
        latent features at every level, so frames are matched photo to photo
        (docs/DESIGN.md section 3, "The style's own frame"). False: B is
        reconstructed as for any style image.
    independent : bool
        Run every frame as a separate image analogy (the baseline).
    flow_preset : str
        OpenCV DIS preset for the optical flow.
    keyframes : KeyframeParams
        How painted keyframes are propagated and combined (used only when a
        run has keyframes).
    preserve_colour : bool
        Keep each frame's own colours: the output's CIE L* with the frame's
        a* and b* (:func:`~diva_numba.finishing.compositing.preserve_colour`).
    mask_feather : float
        Width in pixels over which a mask's effect fades in from its edge.
    crf : float
        x264 quality of the output (18: visually lossless).
    chroma : {"420", "444"}
        Colour resolution of the output: 4:2:0 plays everywhere; 4:4:4 keeps
        saturated colour edges sharp (and steady from frame to frame).

    Notes
    -----
    The defaults are the CPU's; :meth:`for_device` gives each device's
    measured defaults (those of the command line).
    """

    analogy: AnalogyParams = field(default_factory=lambda: AnalogyParams.for_device("cpu"))
    work_size: int = WORK_SIZE_BY_DEVICE["cpu"]
    size: int | None = None
    synthesis: SynthesisParams = field(default_factory=lambda: VIDEO_SYNTHESIS)
    guided_patchmatch_iterations: int = 3
    guided_lbfgs_iterations: int = GUIDED_LBFGS_BY_DEVICE["cpu"]
    guided_lbfgs_min_decrease: float = 0.05
    new_content_share: float = 0.3
    deep_content_share: float = 0.6
    deconvolve_new_only: bool = True
    cuts: CutDetection = field(default_factory=CutDetection)
    temporal_weight: float = 1.0
    anchors: AnchorParams = field(default_factory=AnchorParams)
    refresh_b_every: int = 0
    style_frame_as_b: bool = True
    independent: bool = False
    flow_preset: str = "medium"
    keyframes: KeyframeParams = field(default_factory=KeyframeParams)
    preserve_colour: bool = False
    mask_feather: float = 8.0
    crf: float = 18
    chroma: str = "420"

    def __post_init__(self):
        for name in ("temporal_weight", "mask_feather", "crf"):
            if not math.isfinite(getattr(self, name)) or getattr(self, name) < 0:
                raise ValueError(f"{name} must be a finite number >= 0")
        if not (0.0 <= self.new_content_share <= 1.0 and 0.0 <= self.deep_content_share <= 1.0):
            raise ValueError("new_content_share and deep_content_share must be in [0, 1]")
        if self.work_size < 32:
            raise ValueError("work_size must be at least 32")
        if self.size is not None and self.size < 32:
            raise ValueError("size must be at least 32")

    @classmethod
    def for_device(cls, device: Device | str, **changes) -> TransferParams:
        """The defaults measured for ``device`` (see BENCHMARKS.md), with ``changes``.

        Parameters
        ----------
        device : Device or {"cuda", "cpu", "auto"}
        **changes
            Fields to set instead of the defaults; ``analogy`` defaults to
            :meth:`AnalogyParams.for_device`.

        Examples
        --------
        >>> TransferParams.for_device("cpu", temporal_weight=0.5).work_size
        320
        """
        kind = device_kind(device)
        defaults = {
            "analogy": AnalogyParams.for_device(kind),
            "work_size": WORK_SIZE_BY_DEVICE[kind],
            "guided_lbfgs_iterations": GUIDED_LBFGS_BY_DEVICE[kind],
        }
        return cls(**{**defaults, **changes})

    def new_content_threshold(self, level: int) -> float:
        """Share of new pixels at which a seeded frame solves ``level`` (5..2) again."""
        return self.deep_content_share if level >= 4 else self.new_content_share

    def fingerprint(self) -> dict:
        """The parameters that decide the frames' content, as plain JSON values."""
        data = dataclasses.asdict(self)
        data.pop("crf")
        data.pop("chroma")
        # How the GPU launches the deconvolution, not what it computes: a run resumes
        # with graphs on or off alike.
        data["analogy"].pop("cuda_graphs")
        return json.loads(json.dumps(data))
