"""Shot cuts: where a clip stops being one continuous take.

One detector serves the whole project. The distance of two frames is the total
variation between their colour histograms (:func:`shot_distance`: HSV, small
and blurred by the resize, so motion moves little mass between bins). A frame
starts a new shot when that distance is large in absolute terms and, where the
shot's recent distances are known, large against them too
(:meth:`CutDetection.is_cut`): fast motion raises them, a cut stands out.

Two callers: the scale-out reads the whole range once before planning its
chunks (:func:`find_cuts`, with the shot's history), and the frame loop, which
only knows a frame's predecessor (a resumed run has no more), applies the
threshold to that pair alone. Within a shot, even a fast pan stays under 0.1;
cuts between shots measure 0.9 and more (docs/DESIGN.md section 3).

The detector is our own: PySceneDetect, the maintained library for this, pulls
in the full ``opencv-python`` build, which cannot be installed beside the
headless OpenCV this project uses.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

#: Histogram bins over hue, saturation and value.
HISTOGRAM_BINS = (16, 4, 4)
#: Long side the frames are compared at.
DETECTION_SIDE = 64


@dataclass(frozen=True)
class CutDetection:
    """How shot cuts are found.

    Attributes
    ----------
    threshold : float
        Smallest histogram distance (total variation, 0..1) that is a cut.
    contrast : float
        Where the shot's recent distances are known, a cut must also exceed
        this many times their median (fast motion raises that median).
    window : int
        How many recent frame pairs that median looks at.
    """

    threshold: float = 0.35
    contrast: float = 4.0
    window: int = 8

    def __post_init__(self):
        if self.window < 1:
            raise ValueError("window must be at least 1")

    def is_cut(self, distance: float, recent: Sequence[float] = ()) -> bool:
        """Whether a pair at ``distance`` is a cut, after pairs at ``recent`` distances."""
        usual = float(np.median(recent)) if len(recent) else 0.0
        return distance >= self.threshold and distance >= self.contrast * usual


def colour_signature(frame: np.ndarray) -> np.ndarray:
    """Normalised HSV histogram of an RGB uint8 ``(H, W, 3)`` frame, float32 (bins,)."""
    height, width = frame.shape[:2]
    scale = DETECTION_SIDE / max(height, width)
    small = cv2.resize(
        frame, (max(1, round(width * scale)), max(1, round(height * scale))),
        interpolation=cv2.INTER_AREA,
    )  # fmt: skip
    hsv = cv2.cvtColor(small, cv2.COLOR_RGB2HSV)
    histogram = cv2.calcHist([hsv], [0, 1, 2], None, list(HISTOGRAM_BINS), [0, 180, 0, 256, 0, 256])
    histogram = histogram.ravel().astype(np.float32)
    return histogram / max(float(histogram.sum()), 1.0)


def signature_distance(previous: np.ndarray, current: np.ndarray) -> float:
    """Total variation (0..1) between two :func:`colour_signature` histograms."""
    return 0.5 * float(np.abs(current - previous).sum())


def shot_distance(previous: np.ndarray, frame: np.ndarray) -> float:
    """The detector's distance (0..1) between two RGB uint8 frames."""
    return signature_distance(colour_signature(previous), colour_signature(frame))


def find_cuts(
    frames: Iterable[np.ndarray],
    *,
    detection: CutDetection = CutDetection(),  # noqa: B008
) -> list[int]:
    """Indices (into ``frames``) of the frames that start a new shot, the first excluded.

    Parameters
    ----------
    frames : iterable of uint8 arrays (H, W, 3)
        The frames in order (RGB); read once.
    detection : CutDetection

    Returns
    -------
    list of int
    """
    cuts = []
    previous = None
    recent: list[float] = []
    for index, frame in enumerate(frames):
        signature = colour_signature(frame)
        if previous is not None:
            distance = signature_distance(previous, signature)
            if detection.is_cut(distance, recent):
                cuts.append(index)
                recent = []
            else:
                recent = [*recent, distance][-detection.window :]
        previous = signature
    return cuts
