"""Wall time per stage and level of an analogy, as ``--profile`` prints it."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from diva_numba.gpu.device import Device


class Profile:
    """Wall time per (stage, level), synchronising the GPU around each stage.

    ``on_stage(name, level)``, when given, is called as each stage starts
    (progress reports, :mod:`diva_numba.run.progress`).
    """

    def __init__(
        self, device: Device, *, on_stage: Callable[[str, int | None], None] | None = None
    ):
        self.device = device
        self.on_stage = on_stage
        self.rows: list[tuple[str, int | None, float]] = []
        self.deconvolution_flops: dict[int, float] = {}

    def add_deconvolution_flops(self, level: int, flops: float) -> None:
        self.deconvolution_flops[level] = self.deconvolution_flops.get(level, 0.0) + flops

    def _sync(self) -> None:
        if self.device.is_cuda:
            import cupy

            cupy.cuda.get_current_stream().synchronize()

    @contextmanager
    def stage(self, name: str, level: int | None = None) -> Iterator[None]:
        if self.on_stage is not None:
            self.on_stage(name, level)
        self._sync()
        start = time.perf_counter()
        yield
        self._sync()
        self.rows.append((name, level, time.perf_counter() - start))

    def total(self, name: str | None = None) -> float:
        return sum(t for stage, _, t in self.rows if name is None or stage == name)

    def table(self) -> str:
        """A text table of seconds per stage (rows) and level (columns)."""
        stages = list(dict.fromkeys(stage for stage, _, _ in self.rows))
        levels = sorted({lv for _, lv, _ in self.rows if lv is not None}, reverse=True)
        header = f"{'stage':<16}" + "".join(f"{'L' + str(lv):>9}" for lv in levels)
        lines = [header + f"{'total':>9}"]
        for stage in stages:
            cells = []
            for lv in levels:
                t = sum(s for st, lvl, s in self.rows if st == stage and lvl == lv)
                cells.append(f"{t:9.3f}" if t else f"{'':>9}")
            lines.append(f"{stage:<16}" + "".join(cells) + f"{self.total(stage):9.3f}")
        lines.append(f"{'total':<16}" + " " * 9 * len(levels) + f"{self.total():9.3f}")
        if self.deconvolution_flops:
            cells = []
            for lv in levels:
                seconds = sum(t for st, lvl, t in self.rows if st == "deconvolution" and lvl == lv)
                flops = self.deconvolution_flops.get(lv, 0.0)
                cells.append(f"{flops / seconds / 1e9:9.1f}" if flops and seconds else " " * 9)
            flops = sum(self.deconvolution_flops.values())
            seconds = self.total("deconvolution")
            lines.append(
                f"{'deconv GFLOP/s':<16}" + "".join(cells) + f"{flops / seconds / 1e9:9.1f}"
            )
        return "\n".join(lines)
