"""Progress of the long steps on standard error: stages, frames, and the time left.

A full image analogy (a video's first frame, a shot cut, ``diva-numba
analogy``) takes minutes on a CPU, so its stages are reported as they start:
the features, each level's PatchMatch and deconvolution, the synthesis
(:class:`~diva_numba.gpu.timing.Profile` calls ``on_stage`` for every stage it
times). On a terminal they show on the progress bar; elsewhere (a log, a pipe)
each is one line, without carriage returns.

The time left of a video counts the frames still to come at the average time
of the frames already made *of the kind that is still to come*: later frames
are seeded from the one before, so a full analogy's time (frame 0's, often 20
times a seeded frame's) is not extrapolated to them. Until a seeded frame is
done the bar says the estimate is still to come.
"""

from __future__ import annotations

import io
import os
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TextIO

import numpy as np

#: How a frame was made (:attr:`FrameReport.kind`): a full analogy, an
#: analogy seeded from the previous frame, an anchor frame (seeded from the previous
#: anchor), carried from its anchor, or from the keyframes alone. Stages of the
#: run before its frames (the keyframes' propagation) come as ``"prepare"``.
FrameKind = Literal["full", "seeded", "anchor", "carried", "keyframes", "prepare"]


@dataclass
class FrameReport:
    """What the frame loop tells its caller after each frame.

    Attributes
    ----------
    index : int
        The frame's index in the clip.
    done, total : int
        Frames of the run finished so far (this one included), and in all.
    seconds : float
        Time this frame took.
    input_frame, output_frame : uint8 array (H, W, 3)
        The frame and its stylised output, at the output size.
    profile : Profile
        Time per stage and level of this frame's analogy.
    kind : {"full", "seeded", "anchor", "carried", "keyframes"}
        How the frame was made: a full analogy, seeded from the previous frame,
        an anchor frame seeded from the previous anchor, carried from its anchor
        frame (no analogy), or from the keyframes alone
        (:data:`~diva_numba.run.progress.FrameKind`).
    """

    index: int
    done: int
    total: int
    seconds: float
    input_frame: np.ndarray
    output_frame: np.ndarray
    profile: object
    kind: FrameKind = "full"


#: ``on_stage(index, kind, stage, level)``: a stage of frame ``index`` starts.
StageCallback = Callable[[int, FrameKind, str, "int | None"], None]

#: How progress is shown: a bar redrawn in place, one line per event, or not at all.
Mode = Literal["bar", "lines", "off"]

#: Seeded frames whose times make the estimate of the time left (the latest ones).
RECENT_FRAMES = 12


def display_mode(stream: TextIO | None = None, *, quiet: bool = False) -> Mode:
    """``off`` when quiet, ``bar`` on a terminal, else ``lines``.

    A terminal that reports no width (a pseudo-terminal nobody sized, as some
    CI runners and ``script`` give) gets lines: a bar there shows nothing.
    """
    if quiet:
        return "off"
    stream = stream or sys.stderr
    if not (hasattr(stream, "isatty") and stream.isatty()):
        return "lines"
    try:
        columns = os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return "bar"
    return "bar" if columns > 0 else "lines"


#: The stages a log (``lines``) shows of a full analogy; the bar shows every stage.
MAIN_STAGES = frozenset({"features", "patchmatch", "deconvolution", "synthesis"})


def stage_label(name: str, level: int | None) -> str:
    """``"level 4: patchmatch"``: a stage as the progress shows it (levels run 5 to 1)."""
    return name if level is None else f"level {level}: {name}"


def clock(seconds: float) -> str:
    """``"1:05"`` or ``"1:02:03"``."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


class _Display:
    """A tqdm bar on a terminal, ``what: text`` lines elsewhere, or nothing."""

    def __init__(self, what: str, total: int, unit: str, mode: Mode, stream: TextIO | None,
                 initial: int = 0):  # fmt: skip
        self.what, self.mode = what, mode
        self.stream = stream or sys.stderr
        self.bar = None
        if mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(
                total=total, initial=initial, unit=unit, desc=what, file=self.stream,
                dynamic_ncols=True,
                # A bar of fixed width, so that it stays put while the stage text changes.
                bar_format="{desc}: {n_fmt}/{total_fmt} {unit}s |{bar:24}| {elapsed}{postfix}",
            )  # fmt: skip

    def show(self, text: str, *, advance: int = 0, line: bool = True) -> None:
        """Put ``text`` on the bar (moving it on by ``advance``), or print it as a line."""
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=not advance)
            if advance:
                self.bar.update(advance)
        elif self.mode == "lines" and line:
            print(f"{self.what}: {text}", file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class VideoProgress:
    """Progress of a video run: frames on a bar, full analogies stage by stage.

    Parameters
    ----------
    total : int
        Frames of the run.
    done : int, optional
        Frames finished before (a resumed run).
    mode : {"bar", "lines", "off"}, optional
        Default: :func:`display_mode` of ``stream``.
    stream : file, optional
        Default: standard error.
    """

    def __init__(self, total: int, done: int = 0, *, mode: Mode | None = None,
                 stream: TextIO | None = None):  # fmt: skip
        self.total, self.done = total, done
        self.mode = mode or display_mode(stream)
        self.stream = stream
        self.recent: deque[float] = deque(maxlen=RECENT_FRAMES)
        self.display: _Display | None = None
        self.started = time.perf_counter()

    def __enter__(self) -> VideoProgress:
        self.display = _Display("transfer", self.total, "frame", self.mode, self.stream, self.done)
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc_info) -> None:
        if self.display is not None:
            self.display.close()
            self.display = None

    def time_left(self) -> float | None:
        """Seconds the frames still to come will take, or None before a seeded frame."""
        if not self.recent:
            return None
        return (self.total - self.done) * sum(self.recent) / len(self.recent)

    def _left(self) -> str:
        left = self.time_left()
        return "time left: after the next frame" if left is None else (
            f"about {clock(left)} left"
        )  # fmt: skip

    def stage(self, index: int, kind: FrameKind, name: str, level: int | None) -> None:
        """A stage of frame ``index`` starts; full analogies show every stage."""
        if self.display is None:
            return
        if kind == "prepare":
            self.display.show(name)
        elif kind == "full":
            text = f"frame {index}, full analogy, {stage_label(name, level)}"
            if self.mode == "lines":
                self.display.show(text, line=name in MAIN_STAGES)
            else:
                self.display.show(f"{text}; {self._left()}")
        else:
            self.display.show(f"frame {index}: {stage_label(name, level)}; {self._left()}",
                              line=False)  # fmt: skip

    def frame(self, index: int, kind: FrameKind, seconds: float) -> None:
        """Frame ``index`` is finished, made as ``kind`` in ``seconds``."""
        self.done += 1
        if kind != "full":
            self.recent.append(seconds)
        if self.display is not None:
            self.display.show(
                f"frame {index} ({kind}) took {seconds:.1f} s; {self._left()}",
                advance=1,
            )

    def advance(self, frames: int) -> None:
        """``frames`` more frames made elsewhere (workers): the average rate since the start."""
        if frames <= 0:
            return
        self.done += frames
        elapsed = time.perf_counter() - self.started
        self.recent.clear()
        self.recent.append(elapsed / max(1, self.done))
        if self.display is not None:
            self.display.show(f"{self.done}/{self.total} frames; {self._left()}", advance=frames)


class AnalogyProgress:
    """Progress of one image analogy: its stages on a bar of its levels.

    The bar counts the features, the five levels, the pixels and the synthesis;
    each stage shows as it starts (``patchmatch L3``).
    """

    STEPS = 8

    def __init__(self, *, mode: Mode | None = None, stream: TextIO | None = None):
        self.mode = mode or display_mode(stream)
        self.stream = stream
        self.display: _Display | None = None
        self.step = 0
        self.current: int | str | None = None

    def __enter__(self) -> AnalogyProgress:
        self.display = _Display("analogy", self.STEPS, "step", self.mode, self.stream)
        return self

    def __exit__(self, *exc_info) -> None:
        if self.display is not None:
            if exc_info[0] is None and self.display.bar is not None:
                self.display.bar.update(self.STEPS - self.display.bar.n)
            self.display.close()
            self.display = None

    def stage(self, name: str, level: int | None) -> None:
        """A stage starts: the bar moves on when the level (or the step) changes."""
        if self.display is None:
            return
        step = level if level is not None else name
        bar = self.display.bar
        moved = self.current is not None and step != self.current
        advance = int(moved and (bar is None or bar.n < self.STEPS - 1))
        self.current = step
        self.display.show(stage_label(name, level), advance=advance, line=name in MAIN_STAGES)


__all__ = [
    "AnalogyProgress",
    "MAIN_STAGES",
    "FrameKind",
    "Mode",
    "VideoProgress",
    "clock",
    "display_mode",
    "stage_label",
]
