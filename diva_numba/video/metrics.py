"""Temporal stability of a video: the warping error.

For each pair of consecutive frames t-1, t the warping error of an output
video O is the mean, over the pixels p of frame t that are not occluded, of

    |O_t(p) - O_{t-1}(p + f(p))|

averaged over the three channels, in 0..255 units, where f is the backward
optical flow (t to t-1) of the *reference* (input) video, O_{t-1} is sampled
bilinearly, and the occlusion mask is that of the reference
(:func:`diva_numba.video.flow.occlusion_mask`). A stylised video that flickers
scores higher than one that moves with its input; the reference's own score,
measured the same way, is the floor that a perfectly stable output would
reach (its residue is flow error and compression noise).

Where output and reference differ in size, everything is measured at the
**output's** size: the reference frames are resized (area averaging when
shrinking, bilinear when enlarging) and their flow computed at that size. The
output's pixels, which are what is judged, are never resampled; the
reference's own score is computed at the same size so the two numbers compare.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

import cv2
import numpy as np

from diva_numba.errors import InputError
from diva_numba.video import probe_video, read_frames
from diva_numba.video.flow import DEFAULT_PRESET, FlowPreset, flow_pair, occlusion_mask, warp_image


@dataclass(frozen=True)
class WarpError:
    """Warping errors of an output video and of its reference, per frame pair.

    Attributes
    ----------
    output : numpy.ndarray
        float64 ``(T-1,)``: error of the output for pairs (0, 1), (1, 2), ...;
        NaN for a pair with no reliable pixel (a scene cut).
    reference : numpy.ndarray
        float64 ``(T-1,)``: the same for the reference video.
    valid_fraction : numpy.ndarray
        float64 ``(T-1,)``: share of the pixels that were not occluded.
    width, height : int
        Size at which the errors were measured (the output's).
    """

    output: np.ndarray
    reference: np.ndarray
    valid_fraction: np.ndarray
    width: int
    height: int

    @property
    def output_mean(self) -> float:
        """Mean of :attr:`output` over the pairs that have one (NaN if none)."""
        return _mean(self.output)

    @property
    def reference_mean(self) -> float:
        """Mean of :attr:`reference` over the pairs that have one (NaN if none)."""
        return _mean(self.reference)


def warp_error(
    output_frames: Iterable[np.ndarray],
    reference_frames: Iterable[np.ndarray],
    *,
    preset: FlowPreset = DEFAULT_PRESET,
) -> WarpError:
    """Warping error of a video against the motion of its reference.

    Both sequences are consumed one frame at a time, so memory does not grow
    with their length. Pass the reference as both arguments to measure the
    reference alone (both results are then equal).

    Parameters
    ----------
    output_frames : iterable of numpy.ndarray
        uint8 ``(H, W, 3)`` RGB frames of the video to judge.
    reference_frames : iterable of numpy.ndarray
        uint8 ``(H', W', 3)`` RGB frames of the input video, as many as
        ``output_frames``; resized to ``(H, W)`` when they differ.
    preset : {"ultrafast", "fast", "medium"}, optional
        DIS preset of the reference's flow.

    Returns
    -------
    WarpError

    Raises
    ------
    InputError
        The two sequences differ in length, or have fewer than 2 frames.
    """
    errors_output: list[float] = []
    errors_reference: list[float] = []
    valid_fractions: list[float] = []
    previous_output = previous_reference = previous_reference_float = None
    output_iter, reference_iter = iter(output_frames), iter(reference_frames)
    count = 0
    while True:
        output, reference = next(output_iter, None), next(reference_iter, None)
        if output is None or reference is None:
            if output is not None or reference is not None:
                longer = "output" if output is not None else "reference"
                raise InputError(
                    f"output and reference differ in frame count: the {longer} has more "
                    f"than {count} frames"
                )
            break
        count += 1
        output = _rgb(output, "output")
        reference = _resized(_rgb(reference, "reference"), output.shape[:2])
        output_float = output.astype(np.float32)
        reference_float = reference.astype(np.float32)
        if previous_output is not None:
            forward, backward = flow_pair(previous_reference, reference, preset=preset)
            reliable = occlusion_mask(forward, backward) == 0
            valid_fractions.append(float(reliable.mean()))
            errors_output.append(_pair_error(previous_output, output_float, backward, reliable))
            errors_reference.append(
                _pair_error(previous_reference_float, reference_float, backward, reliable)
            )
        previous_output = output_float
        previous_reference, previous_reference_float = reference, reference_float
    if count < 2:
        raise InputError(f"the warping error needs at least 2 frames, got {count}")
    height, width = previous_output.shape[:2]
    return WarpError(
        output=np.asarray(errors_output, dtype=np.float64),
        reference=np.asarray(errors_reference, dtype=np.float64),
        valid_fraction=np.asarray(valid_fractions, dtype=np.float64),
        width=width,
        height=height,
    )


def video_warp_error(
    output_path: str | os.PathLike,
    reference_path: str | os.PathLike,
    *,
    preset: FlowPreset = DEFAULT_PRESET,
    progress=None,
    reference_start: int | None = None,
) -> WarpError:
    """:func:`warp_error` of two video files, decoded frame by frame.

    Parameters
    ----------
    output_path, reference_path : str or os.PathLike
    preset : {"ultrafast", "fast", "medium"}, optional
    progress : callable or None, optional
        Wraps the reference's frame iterator, e.g.
        ``lambda frames, total: tqdm(frames, total=total)``.
    reference_start : int, optional
        The reference's frame that the output's first frame shows (an output
        made of part of the clip, ``transfer --start``); the output is measured
        against as many reference frames from there as it has. None: the two
        have the same frames.

    Raises
    ------
    InputError
        Unreadable files; different frame counts, or (with ``reference_start``)
        a reference too short for the output from there.
    """
    output_info = probe_video(output_path)
    reference_info = probe_video(reference_path)
    count = output_info.frame_count
    if reference_start is None:
        if count != reference_info.frame_count:
            raise InputError(
                f"{output_path} has {count} frames but "
                f"{reference_path} has {reference_info.frame_count}"
            )
        reference_start = 0
    elif reference_start < 0 or reference_start + count > reference_info.frame_count:
        raise InputError(
            f"{output_path} has {count} frames but {reference_path} has "
            f"{reference_info.frame_count}, not {count} from frame {reference_start}"
        )
    output_frames = (frame for _, frame in read_frames(output_path))
    reference_frames = (
        frame
        for _, frame in read_frames(
            reference_path, start=reference_start, end=reference_start + count
        )
    )
    if progress is not None:
        reference_frames = progress(reference_frames, count)
    return warp_error(output_frames, reference_frames, preset=preset)


def _pair_error(
    previous: np.ndarray, current: np.ndarray, backward: np.ndarray, reliable: np.ndarray
) -> float:
    """Mean over reliable pixels of the channel-mean of |current - previous warped|."""
    if not reliable.any():
        return float("nan")
    difference = np.abs(current - warp_image(previous, backward))
    # Every pixel has 3 channels, so the mean of all entries is the mean of channel means.
    return float(difference[reliable].mean(dtype=np.float64))


def _rgb(frame, name: str) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"{name} frames must be uint8 (H, W, 3), got {frame.dtype} {frame.shape}")
    return frame


def _resized(frame: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    height, width = shape
    if frame.shape[:2] == (height, width):
        return frame
    shrinking = height * width < frame.shape[0] * frame.shape[1]
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(frame, (width, height), interpolation=interpolation)


def _mean(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else float("nan")


__all__ = ["WarpError", "video_warp_error", "warp_error"]
