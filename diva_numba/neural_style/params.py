"""The knobs of the neural-style method: :class:`NeuralStyleParams`, with each device's defaults.

See :mod:`diva_numba.neural_style.loss` for the loss they weigh and
:mod:`diva_numba.run.neural_frame_loop` for the frame loop they steer.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field

from diva_numba.gpu.device import Device, device_kind
from diva_numba.video.shots import CutDetection

#: Long side of the frames the optimisation works on, by device (BENCHMARKS.md,
#: "Neural style": a later frame at 256 px takes about 13 s on two quiet CPU cores).
NEURAL_WORK_SIZE_BY_DEVICE = {"cuda": 512, "cpu": 256}
#: L-BFGS iterations of a shot's first frame (and of a still image), by device.
FIRST_ITERATIONS_BY_DEVICE = {"cuda": 500, "cpu": 200}
#: L-BFGS iterations of a later frame, started from the previous output moved
#: along the flow, by device.
LATER_ITERATIONS_BY_DEVICE = {"cuda": 150, "cpu": 20}

#: The layers whose Gram matrices make the style, finest first (Gatys et al. 2016).
STYLE_LAYERS: tuple[str, ...] = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
#: Layers the content may be taken at.
CONTENT_LAYERS: tuple[str, ...] = (
    "relu1_1", "relu1_2", "relu2_1", "relu2_2", "relu3_1", "relu3_2", "relu3_3",
    "relu3_4", "relu4_1", "relu4_2", "relu4_3", "relu4_4", "relu5_1",
)  # fmt: skip


@dataclass(frozen=True)
class NeuralStyleParams:
    """How the neural-style method (Gatys et al. 2016, Ruder et al. 2016) stylises.

    The loss of an image ``x`` (the network's input, level 0) is::

        content(x) + style_weight * sum_l w_l style_l(x) + tv_weight * tv(x)
                   + temporal_weight * temporal(x)

    each term a mean over its elements (:mod:`diva_numba.neural_style.loss`), so that
    the weights do not depend on the image size. The content and style weights are
    those of Ruder et al.'s code (content 5, style 100), divided by the content's;
    the temporal weight is 100 times theirs (1000 / 5), measured: at their weight a
    later frame's 20 L-BFGS steps move the pixels the flow trusts by 3-5 levels of
    255, and bikes' warping error is 3.8 times the input's own; at 20000, 1.1 times
    (docs/DESIGN.md section 11).

    Attributes
    ----------
    style_weight : float
        Weight of the style (Gram matrix) loss against the content's: larger
        paints more and keeps less of the frame.
    style_layer_weights : tuple of 5 float
        ``w_l`` of relu1_1 .. relu5_1.
    content_layer : str
        Where the content is compared: relu4_2, as published (deep enough that
        strokes may change, shallow enough that objects keep their outline).
    tv_weight : float
        Weight of the total variation (squared differences of neighbouring pixels),
        which removes the high-frequency noise the style loss alone leaves.
    init : {"content", "noise"}
        Start of a shot's first frame: the frame itself, or noise (``seed``).
    seed : int
        Seed of the noise start.
    iterations : int
        L-BFGS iterations of a still image and of a shot's first frame.
    later_iterations : int
        L-BFGS iterations of a later frame, which starts from the previous output
        moved along the optical flow.
    temporal_weight : float
        Weight of Ruder et al.'s short-term temporal loss: the distance to the
        previous output moved along the flow, where the forward-backward flow check
        trusts it. 0 turns it off (frames still start from the moved output).
        Lower lets later frames repaint more of what they show (more flicker).
    long_term : tuple of int
        Offsets ``j > 1`` of earlier frames that also constrain a frame (Ruder et
        al.'s long-term loss, e.g. ``(2, 4)``): each pixel is held to the nearest
        earlier frame whose flow trusts it. Empty: short-term only.
    carry_output : bool
        A later frame's output at the output size is the previous output moved
        along the flow at that size, plus the optimisation's change enlarged
        (:func:`diva_numba.run.neural_frame_loop.carry_output`); False enlarges
        every frame's result afresh (bicubic), which re-samples the strokes.
    independent : bool
        Stylise every frame on its own from ``init``, without temporal loss or
        warm start (per-frame Gatys, the baseline).
    work_size : int
        Long side of the image the optimisation works on, made even for video.
    size : int or None
        Long side of the output (video frames: made even); None keeps the input's.
        The result is enlarged (bicubic) from the working size.
    preserve_colour : bool
        Keep the input's colours: the result's CIE L* with the input's a*, b*.
    mask_feather : float
        Width in pixels over which a mask's effect fades in from its edge.
    flow_preset : str
        OpenCV DIS preset of the optical flow.
    cuts : CutDetection
        The shot-cut detector (:mod:`diva_numba.video.shots`): a frame that
        starts a new shot starts afresh, as frame 0.
    crf : float
        x264 quality of an output video.
    chroma : {"420", "444"}
        Colour resolution of an output video.
    """

    style_weight: float = 20.0
    style_layer_weights: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0, 1.0)
    content_layer: str = "relu4_2"
    tv_weight: float = 1.0
    init: str = "content"
    seed: int = 0
    iterations: int = FIRST_ITERATIONS_BY_DEVICE["cpu"]
    later_iterations: int = LATER_ITERATIONS_BY_DEVICE["cpu"]
    temporal_weight: float = 20000.0
    long_term: tuple[int, ...] = ()
    carry_output: bool = True
    independent: bool = False
    work_size: int = NEURAL_WORK_SIZE_BY_DEVICE["cpu"]
    size: int | None = None
    preserve_colour: bool = False
    mask_feather: float = 8.0
    flow_preset: str = "medium"
    cuts: CutDetection = field(default_factory=CutDetection)
    crf: float = 18
    chroma: str = "420"

    def __post_init__(self):
        object.__setattr__(self, "style_layer_weights", tuple(map(float, self.style_layer_weights)))
        object.__setattr__(self, "long_term", tuple(sorted(set(map(int, self.long_term)))))
        if len(self.style_layer_weights) != len(STYLE_LAYERS):
            raise ValueError(
                f"style_layer_weights needs {len(STYLE_LAYERS)} numbers, one per "
                f"{', '.join(STYLE_LAYERS)}"
            )
        for name in ("style_weight", "tv_weight", "temporal_weight", "mask_feather"):
            if not 0 <= getattr(self, name) < math.inf:
                raise ValueError(f"{name} must be finite and >= 0, got {getattr(self, name)}")
        if not all(0 <= weight < math.inf for weight in self.style_layer_weights):
            raise ValueError("style_layer_weights must be finite and >= 0")
        if self.content_layer not in CONTENT_LAYERS:
            raise ValueError(
                f"content_layer must be one of {', '.join(CONTENT_LAYERS)}, got "
                f"{self.content_layer!r}"
            )
        if self.init not in ("content", "noise"):
            raise ValueError(f"init must be 'content' or 'noise', got {self.init!r}")
        if self.iterations < 1 or self.later_iterations < 1:
            raise ValueError("iterations and later_iterations must be at least 1")
        if any(offset < 2 for offset in self.long_term):
            raise ValueError("long_term offsets must be 2 or more (1 is the short-term loss)")
        if self.work_size < 32:
            raise ValueError("work_size must be at least 32")
        if self.size is not None and self.size < 32:
            raise ValueError("size must be at least 32")

    @classmethod
    def for_device(cls, device: Device | str, **changes) -> NeuralStyleParams:
        """The defaults of ``device`` (BENCHMARKS.md, "Neural style"), with ``changes``.

        Examples
        --------
        >>> NeuralStyleParams.for_device("cpu", style_weight=50).work_size
        256
        """
        kind = device_kind(device)
        defaults = {
            "work_size": NEURAL_WORK_SIZE_BY_DEVICE[kind],
            "iterations": FIRST_ITERATIONS_BY_DEVICE[kind],
            "later_iterations": LATER_ITERATIONS_BY_DEVICE[kind],
        }
        return cls(**{**defaults, **changes})

    def fingerprint(self) -> dict:
        """The parameters that decide the frames' content, as plain JSON values."""
        data = dataclasses.asdict(self)
        data.pop("crf")
        data.pop("chroma")
        data["method"] = "neural-style"
        return json.loads(json.dumps(data))
