"""Each frame's files written in a background thread, one job at a time."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor


class BackgroundWriter:
    """Writes each frame's files in a background thread, so the next frame need not wait.

    Jobs run one at a time in the order submitted, and at most one is pending:
    :meth:`submit` first waits for the one before (so memory holds one frame's
    host copies at most, and the files of frame t are complete before those of
    frame t + 1 begin). A job's failure, an :class:`~diva_numba.errors.OutputError`
    for a full disk, is raised in the caller's thread by the next :meth:`submit`
    or :meth:`check`, or when the ``with`` block ends; the block's end waits for
    the last job, also when it ends by an exception (which then is the one
    raised), so that an interrupted run keeps every frame it reported finished.

    Examples
    --------
    >>> with BackgroundWriter() as writer:  # doctest: +SKIP
    ...     writer.submit(lambda: work.save_state(host_state))
    """

    def __init__(self):
        self._executor: ThreadPoolExecutor | None = None
        self._pending: Future | None = None

    def __enter__(self) -> BackgroundWriter:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="diva-numba-writer")
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        try:
            self.wait()
        except Exception:
            if exc_type is None:
                raise
            # The block's own exception is the one to report; the frame whose files
            # failed is not finished, and a resumed run computes it again.
        finally:
            self._executor.shutdown(wait=True)
            self._executor = None

    def submit(self, job: Callable[[], None]) -> None:
        """Run ``job`` in the background once the previous job is done."""
        self.wait()
        self._pending = self._executor.submit(job)

    def check(self) -> None:
        """Raise the failure of a finished job now, without waiting for a running one."""
        if self._pending is not None and self._pending.done():
            self.wait()

    def wait(self) -> None:
        """Wait for the pending job; raise its failure."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()


__all__ = ["BackgroundWriter"]
