"""One video run, specified once: what :func:`~diva_numba.run.transfer.run_transfer` makes.

A :class:`RunSpec` is built by the command line or by
:func:`~diva_numba.run.transfer.transfer_video` from their arguments, and from
then on it is the run: the planning checks it, its :meth:`~RunSpec.manifest`
is the one fingerprint a work directory is tied to (``--resume``), the frame
loop reads its parameters and opens its finishing from it, and the scale-out
sends it to the Ray workers once. It is frozen and holds only paths and
parameters, so it pickles small.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diva_numba.errors import InputError
from diva_numba.finishing.finisher import Finisher, checked_mask
from diva_numba.finishing.keyframes import Keyframe, check_keys
from diva_numba.gpu.device import Device
from diva_numba.images import resize
from diva_numba.neural_style.params import NeuralStyleParams
from diva_numba.outputs import file_sha256
from diva_numba.run.params import TransferParams
from diva_numba.run.workdir import run_manifest


@dataclass(frozen=True)
class ScaleOut:
    """How a video is spread over workers.

    Attributes
    ----------
    workers : int
        Ray tasks running at once (each holds one GPU, or on the CPU an equal
        share of the cores).
    address : str or None
        An existing Ray cluster (``ray://host:10001`` or ``auto``); None starts
        a local one for the run.
    chunk_frames : int
        Most frames one chunk computes; long shots are split into chunks of
        this length.
    overlap : int
        Frames consecutive chunks of a shot share, blended at the join.
    max_retries : int
        Times a chunk whose worker died is run again before the run fails.
    """

    workers: int = 2
    address: str | None = None
    chunk_frames: int = 96
    overlap: int = 8
    max_retries: int = 3

    def __post_init__(self):
        if self.workers < 1:
            raise ValueError("workers must be at least 1")
        if not 0 <= self.overlap < self.chunk_frames:
            raise ValueError("overlap must be at least 0 and less than chunk_frames")

    def fingerprint(self) -> dict:
        """What decides the frames' content (not how many workers make them)."""
        return {
            "chunk_frames": self.chunk_frames,
            "overlap": self.overlap,
        }


@dataclass(frozen=True)
class RunSpec:
    """Everything a video run is made of, but where it runs and where it writes.

    Attributes
    ----------
    style, clip : Path
        The style image B' and the video.
    params : TransferParams or NeuralStyleParams
        Every knob of the frame loop, the finishing and the encode; the type
        chooses the method (the deep analogy, or neural style).
    keys : tuple of Keyframe
        Paintings of frames of the clip (:mod:`diva_numba.finishing.keyframes`).
    mask : Path or None
        Where to stylise (white); elsewhere the input passes through.
    model : Path or None
        The ONNX feature model; None: the default VGG-19, fetched on first use.
    start : int
    end : int or None
        The frame range ``[start, end)``; None: to the clip's end.
    scale_out : ScaleOut or None
        Chunks on Ray workers; None: one process.
    """

    style: Path
    clip: Path
    params: TransferParams | NeuralStyleParams
    keys: tuple[Keyframe, ...] = ()
    mask: Path | None = None
    model: Path | None = None
    start: int = 0
    end: int | None = None
    scale_out: ScaleOut | None = None

    @classmethod
    def make(
        cls,
        style: str | os.PathLike,
        clip: str | os.PathLike,
        params: TransferParams | None = None,
        *,
        device: Device,
        keys: Sequence[Keyframe] = (),
        mask: str | os.PathLike | None = None,
        model: str | os.PathLike | None = None,
        start: int = 0,
        end: int | None = None,
        scale_out: ScaleOut | None = None,
    ) -> RunSpec:
        """The spec of these arguments; ``params`` default to ``device``'s."""
        return cls(
            style=Path(style),
            clip=Path(clip),
            params=params or TransferParams.for_device(device),
            keys=tuple(keys),
            mask=None if mask is None else Path(mask),
            model=None if model is None else Path(model),
            start=start,
            end=end,
            scale_out=scale_out,
        )

    @property
    def finishes(self) -> bool:
        """True when frames get more than the deep analogy (keyframes, mask, colour)."""
        return bool(self.keys) or self.mask is not None or self.params.preserve_colour

    def inputs(self) -> list[Path]:
        """Every file the run reads (an output must not replace one)."""
        model = [self.model] if self.model is not None else []
        mask = [self.mask] if self.mask is not None else []
        return [self.style, self.clip, *model, *[Path(k.path) for k in self.keys], *mask]

    def style_frame(self) -> int | None:
        """The frame of the clip that the style image paints, or None.

        A keyframe whose image has the style image's content (its SHA-256; as
        ``--style-frame N`` makes) is a painting of that frame; the first such,
        by frame index.
        """
        if not self.keys:
            return None
        style = file_sha256(self.style)
        painted = [k.index for k in self.keys if file_sha256(k.path) == style]
        return min(painted) if painted else None

    def style_photo(self, finisher: Finisher | None, plan) -> np.ndarray | None:
        """The photograph the style image paints, at the style's working size, or None.

        The analogy's B when :attr:`TransferParams.style_frame_as_b` (the frame
        loop's ``style_photo``); it comes from the keyframes' frames, read once.
        """
        if not getattr(self.params, "style_frame_as_b", False) or finisher is None:
            return None
        index = self.style_frame() if finisher.keys is not None else None
        if index is None:
            return None
        return resize(finisher.keys.keys.frames[index], *plan.style.shape[:2])

    def check(self, plan) -> None:
        """Refuse keyframes outside ``plan``'s clip and a mask that does not fit it.

        Raises
        ------
        InputError
        """
        if isinstance(self.params, NeuralStyleParams) and (self.keys or self.scale_out):
            raise InputError("keyframes and workers belong to the analogy method, not neural style")
        check_keys(self.keys, plan.start, plan.end, plan.info.frame_count)
        checked_mask(self.mask, self.params.mask_feather, plan)

    def finisher(self, plan, work_dir: Path) -> Finisher | None:
        """What the frame loop applies after the analogy (None when nothing).

        Propagates the keyframes over ``plan``'s frames first, unless
        ``work_dir`` holds them already.
        """
        if not self.finishes:
            return None
        return Finisher.open(
            self.keys, self.mask, feather=self.params.mask_feather,
            keep_colour=self.params.preserve_colour,
            keyframe_params=getattr(self.params, "keyframes", None),  # neural style has none
            clip=self.clip, plan=plan, work_dir=work_dir,
        )  # fmt: skip

    def manifest(self, plan, device: Device) -> dict:
        """The fingerprint of the run a work directory holds (its ``manifest.json``).

        The inputs by their SHA-256, the frame range and sizes, the parameters
        that decide the frames (:meth:`TransferParams.fingerprint`), the
        finishing's inputs and the chunking; ``device`` is the one entry a
        resumed run may change.
        """
        manifest = run_manifest(self.style, self.clip, plan, self.params, device)
        if self.finishes:
            keys = sorted(self.keys, key=lambda k: k.index)
            manifest["finish"] = {
                "keys": [[k.index, file_sha256(k.path)] for k in keys],
                "mask": (
                    None
                    if self.mask is None
                    else [file_sha256(self.mask), self.params.mask_feather]
                ),
                "preserve_colour": self.params.preserve_colour,
            }
        if self.scale_out is not None:
            manifest["scale_out"] = self.scale_out.fingerprint()
        return manifest
