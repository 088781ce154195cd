"""Painted keyframes carried through the clip along the optical flow.

A keyframe is a painting of one frame N of the clip. For another frame t the
precise correspondence is the one between the photographs t and N, which
share one look, so optical flow is accurate there, unlike any match between a
photograph and a painting. Each keyframe is propagated forward (to the next
keyframe) and backward (to the previous one, or the start of the range):

* the flow from frame t to frame N is *chained* from the neighbour's (the
  frame-to-frame flow composed with the neighbour's flow to N) and then
  *re-anchored* on frame N: DIS refines it directly against frame N, with the
  chain as its initial guess. The chain reaches large displacements that DIS
  alone misses; the re-anchoring keeps errors from adding up frame by frame;
* a pixel's reliability is the forward-backward consistency of the flows
  between t and N (with motion boundaries and pixels whose content is not in
  frame N) times the agreement of frame t with frame N warped into it;
* the painting is warped into frame t (bicubic).

Between two keyframes the two propagations are combined with weights that
fall linearly with the distance to each keyframe and scale with each pixel's
reliability; where neither is reliable (content frame N does not show) the
deep analogy of frame t fills in. The pictures are mixed in the gradient
domain (:mod:`diva_numba.finishing.poisson`), so that where the weights switch
quickly (a keyframe's content ends) two paintings meet without an edge. See
docs/DESIGN.md section 3.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from diva_numba.errors import InputError
from diva_numba.finishing.poisson import PoissonParams, blend
from diva_numba.images import load_image, resize
from diva_numba.video.flow import compose, flow_pair, occlusion_mask, warp_image

log = logging.getLogger("diva_numba")


@dataclass(frozen=True)
class KeyframeParams:
    """How keyframes are propagated and combined.

    Attributes
    ----------
    colour_sigma : float
        Mean RGB difference (0..255) between frame t and the keyframe's frame
        warped into it at which a pixel's reliability falls to 1/e.
    reliability_blur : float
        Gaussian sigma (pixels) softening the reliability maps, so that the
        switch between a keyframe and the analogy never shows as an edge.
    new_content_share : float
        The deep analogy runs on a frame only when more than this share of
        its pixels is covered by no keyframe (reliability below 1/2).
    flow_preset : str
        OpenCV DIS preset of every flow.
    blend : {"poisson", "average"}
        How the pictures of a frame (keyframes, the analogy) are mixed:
        ``"average"`` is their per-pixel weighted average; ``"poisson"``
        (the default) keeps the average's colours and the pictures' own
        gradients mixed by the same weights, without the edge the weights
        draw where they switch (:func:`diva_numba.finishing.poisson.blend`). Where
        three different paintings meet, the Lab gradient across the switch
        is 1.9-3.5 times that far from it with the average, 1.4-1.5 times
        with the blend (1.0-1.2 for one painting; docs/DESIGN.md section 3),
        for 0.25-0.5 s a frame at 1920x1080.
    poisson : PoissonParams
        The gradient-domain solve (how far a seam's step is spread).
    hold : float
        In (0, 1]: how firmly the colours of a pixel that no keyframe owns
        (where keyframes mix, or the analogy fills in) are held, against 1
        where one keyframe has all the weight. 1 (the default) holds every
        pixel alike, one DCT solve; lower keeps the keyframes' colours closer
        and lets the mixed and analogy regions take up the steps, by
        conjugate gradients, 3-4 times slower.
    """

    colour_sigma: float = 12.0
    reliability_blur: float = 1.5
    new_content_share: float = 0.002
    flow_preset: str = "medium"
    blend: str = "poisson"
    poisson: PoissonParams = field(default_factory=PoissonParams)
    hold: float = 1.0

    def __post_init__(self):
        if self.blend not in ("poisson", "average"):
            raise ValueError(f"blend must be 'poisson' or 'average', not {self.blend!r}")
        if not 0.0 < self.hold <= 1.0:
            raise ValueError(f"hold must be in (0, 1], not {self.hold}")


@dataclass(frozen=True)
class Keyframe:
    """A painting of frame ``index`` (the image file it comes from)."""

    index: int
    path: Path


def parse_key(text: str) -> Keyframe:
    """``N:IMAGE`` as the command line's ``--key`` takes it."""
    number, sep, image = text.partition(":")
    if not sep or not number.strip().isdigit() or not image:
        raise ValueError(f"use FRAME:IMAGE, like 40:painted-40.png (got {text!r})")
    return Keyframe(int(number), Path(image))


@dataclass
class Propagation:
    """One keyframe's flow into a frame and how far to trust it.

    Attributes
    ----------
    key : int
        The keyframe's frame index.
    to_key : float32 array (H, W, 2)
        Flow ``(dx, dy)`` from the frame to the keyframe's frame.
    from_key : float32 array (H, W, 2)
        Flow from the keyframe's frame to the frame.
    reliability : float32 array (H, W)
        In [0, 1].
    """

    key: int
    to_key: np.ndarray
    from_key: np.ndarray
    reliability: np.ndarray


class KeyframeSet:
    """The keyframes of a run, at the working size, and their propagation.

    Parameters
    ----------
    keys : sequence of Keyframe
    frames : dict of int to uint8 array (H, W, 3)
        The clip's frames at the keyframes' indices, at the working size.
    shape : (H, W)
        The working size.
    params : KeyframeParams
    """

    def __init__(self, keys, frames: dict[int, np.ndarray], shape, params: KeyframeParams):
        self.params = params
        self.indices = sorted(key.index for key in keys)
        if len(set(self.indices)) != len(self.indices):
            raise InputError("two keyframes paint the same frame")
        self.paintings = {k.index: resize(load_image(k.path), *shape) for k in keys}
        self.frames = frames

    def neighbours(self, index: int) -> list[int]:
        """The nearest keyframe at or before ``index`` and the nearest after it."""
        before = [k for k in self.indices if k <= index]
        after = [k for k in self.indices if k > index]
        return before[-1:] + after[:1]

    def propagate(
        self, key: int, index: int, frame: np.ndarray, step: tuple | None, previous
    ) -> Propagation:
        """The keyframe ``key`` carried into frame ``index`` from its neighbour's propagation.

        Parameters
        ----------
        key, index : int
        frame : uint8 array (H, W, 3)
            Frame ``index`` at the working size.
        step : (to_neighbour, from_neighbour) or None
            Flows between ``frame`` and the neighbour that ``previous`` was
            made for (None for the keyframe's own frame).
        previous : Propagation or None
        """
        if index == key:
            zero = np.zeros((*frame.shape[:2], 2), np.float32)
            return Propagation(key, zero, zero, np.ones(frame.shape[:2], np.float32))
        return propagate(self.frames[key], key, frame, step, previous, self.params)

    def combine(self, index: int, propagations: list[Propagation]):
        """The keyframes' picture of frame ``index`` and how much of it they cover.

        Returns
        -------
        picture : float32 array (H, W, 3)
            Their weighted average (:meth:`layers` gives them one by one).
        coverage : float32 array (H, W)
            In [0, 1]: 1 where a keyframe is fully trusted, 0 where none is.
        """
        layers = self.layers(index, propagations)
        return layers.average(), layers.coverage

    def layers(self, index: int, propagations: list[Propagation]) -> KeyPictures:
        """The warped paintings of frame ``index``, their weights and coverage."""
        distance, pictures = [], []
        for propagation in propagations:
            distance.append(_distance_weight(index, propagation.key, propagations))
            painting = self.paintings[propagation.key].astype(np.float32)
            pictures.append(
                np.clip(warp_image(painting, propagation.to_key, interpolation="cubic"), 0, 255)
            )
        trusted = [w * p.reliability for w, p in zip(distance, propagations, strict=True)]
        total = np.sum(trusted, axis=0)
        # Where no keyframe is trusted the distance alone decides (a fallback
        # that shows only when the analogy does not run).
        some = total > 1e-4
        weights = [np.where(some, t / np.maximum(total, 1e-4), np.float32(d)).astype(np.float32)
                   for t, d in zip(trusted, distance, strict=True)]  # fmt: skip
        untrusted = np.prod([1.0 - p.reliability for p in propagations], axis=0)
        return KeyPictures(pictures, weights, (1.0 - untrusted).astype(np.float32))

    def needs_analogy(self, coverage: np.ndarray) -> bool:
        """Whether enough of the frame is new content for the deep analogy to run."""
        return float(np.mean(coverage < 0.5)) > self.params.new_content_share


def propagate(anchor: np.ndarray, key: int, frame: np.ndarray, step: tuple | None, previous,
              params: KeyframeParams) -> Propagation:  # fmt: skip
    """Frame ``key`` (``anchor``) carried into ``frame``: chained, then re-anchored on it.

    The flow from ``frame`` to ``anchor`` starts from the neighbour's
    (``previous``) composed with the ``step`` between the two frames, and DIS
    refines it directly against ``anchor``: the chain reaches large motion, the
    re-anchoring keeps its errors from adding up. Keyframes and the anchor frames of
    an analogy (:mod:`diva_numba.run.anchor_frames`) are carried alike.

    Parameters
    ----------
    anchor : uint8 array (H, W, 3)
        Frame ``key`` at the working size.
    key : int
    frame : uint8 array (H, W, 3)
        The frame to carry it into, at the working size.
    step : (to_neighbour, from_neighbour) or None
        Flows between ``frame`` and the neighbour ``previous`` was made for.
    previous : Propagation or None
    params : KeyframeParams
        The flows' preset and the reliability's scales.
    """
    to_init = from_init = None
    if step is not None and previous is not None:
        to_neighbour, from_neighbour = step
        to_init = compose(to_neighbour, previous.to_key)
        from_init = compose(previous.from_key, from_neighbour)
    to_key = _dis(frame, anchor, to_init, params.flow_preset)
    from_key = _dis(anchor, frame, from_init, params.flow_preset)
    return Propagation(key, to_key, from_key, reliability(frame, anchor, to_key, from_key, params))


def reliability(frame, anchor, to_key, from_key, params: KeyframeParams) -> np.ndarray:
    """float32 (H, W) in [0, 1]: flow consistency times colour agreement, blurred."""
    consistent = 1.0 - occlusion_mask(from_key, to_key).astype(np.float32)
    warped = warp_image(anchor.astype(np.float32), to_key)
    difference = np.abs(frame.astype(np.float32) - warped).mean(axis=2)
    agreement = np.exp(-((difference / params.colour_sigma) ** 2))
    trusted = consistent * agreement
    if params.reliability_blur > 0:
        trusted = cv2.GaussianBlur(trusted, (0, 0), params.reliability_blur)
    return trusted.astype(np.float32)


def propagate_all(keys: KeyframeSet, frames: np.ndarray, first: int, start: int, end: int, store):
    """Propagate every keyframe forward and backward over ``frames``; results to ``store``.

    Parameters
    ----------
    keys : KeyframeSet
    frames : uint8 array (N, H, W, 3)
        Frames ``first .. first + N - 1`` at the working size (a memory map is fine).
    first : int
        Index of ``frames[0]`` in the clip; the span reaches every keyframe
        that is the nearest one of a frame in ``[start, end)``.
    start, end : int
        The frames whose propagations are kept.
    store : callable
        ``store(index, propagation)`` for every kept frame and neighbour.
    """
    preset = keys.params.flow_preset
    last = first + len(frames)
    for direction in (1, -1):
        previous = None
        order = range(first, last) if direction == 1 else range(last - 1, first - 1, -1)
        for index in order:
            pick = keys.neighbours(index)
            key = pick[0] if direction == 1 and pick[0] <= index else None
            if direction == -1:
                key = next((k for k in pick if k > index), None)
            if key is None:
                previous = None
                continue
            frame = np.asarray(frames[index - first])
            step = None
            if previous is not None and previous.key == key:
                neighbour = np.asarray(frames[index - first - direction])
                step = step_flows(frame, neighbour, preset)
            else:
                previous = None
            propagation = keys.propagate(key, index, frame, step, previous)
            if start <= index < end:
                store(index, propagation)
            previous = propagation


@dataclass
class KeyPictures:
    """The keyframes' picture of one frame, painting by painting.

    Attributes
    ----------
    pictures : list of float32 arrays (H, W, 3)
        Each neighbouring keyframe's painting warped into the frame, 0..255.
    weights : list of float32 arrays (H, W)
        Their share at each pixel; they sum to one.
    coverage : float32 array (H, W)
        In [0, 1]: how much the keyframes show (1 - prod(1 - reliability)).
    """

    pictures: list
    weights: list
    coverage: np.ndarray

    def average(self) -> np.ndarray:
        """The per-pixel weighted average, float32 (H, W, 3)."""
        out = np.zeros_like(self.pictures[0])
        for picture, weight in zip(self.pictures, self.weights, strict=True):
            out += weight[..., None] * picture
        return out


def composite_keys(keys: KeyPictures, analogy_output: np.ndarray | None, params: KeyframeParams):
    """The keyframes' picture, the analogy's output where they do not reach; uint8.

    Parameters
    ----------
    keys : KeyPictures
    analogy_output : uint8 array (H, W, 3) or None
        The deep analogy of the frame, None where it did not run; it gets the
        weight ``1 - coverage``.
    params : KeyframeParams
        ``blend`` says how the pictures are mixed.

    Returns
    -------
    uint8 array (H, W, 3)
    """
    sources, weights = list(keys.pictures), list(keys.weights)
    if analogy_output is not None:
        weights = [keys.coverage * w for w in weights] + [1.0 - keys.coverage]
        sources.append(analogy_output.astype(np.float32))
    if params.blend == "average" or len(sources) == 1:
        picture = KeyPictures(sources, weights, keys.coverage).average()
    else:
        anchoring = None
        if params.hold < 1.0:
            # 1 where one keyframe has all the weight, falling fast (8th
            # power) to ``hold`` where keyframes mix or the analogy fills in.
            owned = np.max(weights[: len(keys.pictures)], axis=0) ** 8
            anchoring = (params.hold + (1.0 - params.hold) * owned).astype(np.float32)
        picture = blend(sources, weights, params.poisson, anchoring)
    return np.clip(np.rint(picture), 0, 255).astype(np.uint8)


def step_flows(frame: np.ndarray, neighbour: np.ndarray, preset: str):
    """(flow frame -> neighbour, flow neighbour -> frame)."""
    forward, backward = flow_pair(neighbour, frame, preset=preset)
    return backward, forward


def _distance_weight(index: int, key: int, propagations: list[Propagation]) -> float:
    if len(propagations) == 1:
        return 1.0
    first, last = sorted(p.key for p in propagations)
    return (last - index) / (last - first) if key == first else (index - first) / (last - first)


def _dis(source: np.ndarray, target: np.ndarray, initial, preset: str) -> np.ndarray:
    from diva_numba.video.flow import _DIS_PRESETS, _grey

    dis = cv2.DISOpticalFlow_create(_DIS_PRESETS[preset])
    flow = None if initial is None else np.ascontiguousarray(initial, dtype=np.float32)
    return dis.calc(_grey(source), _grey(target), flow)


def check_keys(keys, start: int, end: int, frame_count: int) -> None:
    """Refuse keyframes outside the clip."""
    for key in keys:
        if not 0 <= key.index < frame_count:
            raise InputError(
                f"keyframe {key.index}:{key.path} is outside the clip's {frame_count} frames"
            )
        if not Path(key.path).is_file():
            raise InputError(f"{key.path} does not exist")
    if keys and not any(start <= k.index < end for k in keys):
        log.info("no keyframe inside frames %d-%d; the nearest ones are carried in", start, end - 1)


__all__ = [
    "KeyPictures",
    "Keyframe",
    "KeyframeParams",
    "KeyframeSet",
    "Propagation",
    "composite_keys",
    "parse_key",
    "propagate",
    "reliability",
    "step_flows",
]


class KeyframeRun:
    """The keyframes' propagations for the frames of a run, kept in its work directory.

    :meth:`prepare` propagates every keyframe once (forward and backward over
    the span of frames that reaches them) into ``work_dir/keys/``; a resumed
    run finds them there. :meth:`picture` then gives each frame's picture.

    Parameters
    ----------
    keys : KeyframeSet
    directory : Path
        ``work_dir/keys``.
    """

    def __init__(self, keys: KeyframeSet, directory: Path):
        self.keys = keys
        self.directory = directory

    @classmethod
    def prepare(cls, keyframes, clip: Path, plan, work_dir: Path, params: KeyframeParams):
        """Propagate ``keyframes`` over ``plan``'s range (once per work directory).

        Parameters
        ----------
        keyframes : sequence of Keyframe
        clip : Path
        plan : TransferPlan
            Its range and working size.
        work_dir : Path
        params : KeyframeParams
        """
        from diva_numba.outputs import write_atomically
        from diva_numba.video import read_frames

        indices = sorted(k.index for k in keyframes)
        before = [k for k in indices if k <= plan.start]
        after = [k for k in indices if k >= plan.end - 1]
        first = min(plan.start, before[-1] if before else plan.start, indices[0])
        last = max(plan.end, (after[0] + 1) if after else plan.end, indices[-1] + 1)
        directory = Path(work_dir) / "keys"
        directory.mkdir(parents=True, exist_ok=True)
        shape = (plan.height, plan.width)
        span = np.lib.format.open_memmap(
            directory / "span.npy", mode="w+", dtype=np.uint8, shape=(last - first, *shape, 3)
        ) if not (directory / "complete").exists() else None  # fmt: skip
        frames = {}
        if span is not None:
            for index, frame in read_frames(clip, start=first, end=last):
                span[index - first] = resize(frame, *shape)
            frames = {k: np.array(span[k - first]) for k in indices}
        else:
            for index, frame in read_frames(clip, start=indices[0], end=indices[-1] + 1):
                if index in indices:
                    frames[index] = resize(frame, *shape)
        keys = KeyframeSet(keyframes, frames, shape, params)
        run = cls(keys, directory)
        if span is not None:
            propagate_all(keys, span, first, plan.start, plan.end, run._store)
            del span
            (directory / "span.npy").unlink()
            write_atomically(directory / "complete", b"")
        return run

    def _store(self, index: int, propagation: Propagation) -> None:
        from diva_numba.outputs import AtomicFile

        path = self.directory / f"{index:06d}-{propagation.key:06d}.npz"
        with AtomicFile(path) as temp, open(temp, "wb") as handle:
            np.savez(handle, to_key=propagation.to_key,
                     reliability=propagation.reliability.astype(np.float16))  # fmt: skip

    def picture(self, index: int) -> KeyPictures:
        """The keyframes' pictures of frame ``index``; see :meth:`KeyframeSet.layers`."""
        propagations = []
        for key in self.keys.neighbours(index):
            path = self.directory / f"{index:06d}-{key:06d}.npz"
            with np.load(path) as arrays:
                to_key = arrays["to_key"]
                reliability = arrays["reliability"].astype(np.float32)
            propagations.append(Propagation(key, to_key, to_key, reliability))
        return self.keys.layers(index, propagations)
