"""How a run is going: started, stopping, failed; and waiting for its progress.

The parts of the engine share one :class:`RunState`. The first failure is kept (later ones
are consequences) and wakes everything waiting on progress, so that a revocation or a
commit waiting for records to finish does not wait out its timeout for records that never
will.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from headrace.errors import HeadraceError


class PipelineError(HeadraceError, RuntimeError):
    """The pipeline stopped because something it cannot skip went wrong."""


class RunState:
    """``running`` between start and the end of reading and scoring; ``stopping`` once a
    graceful stop was asked for; ``fatal`` the first failure."""

    def __init__(self) -> None:
        self.running = False
        self.stopping = False
        self.fatal: BaseException | None = None
        self._waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []

    def fail(self, exc: BaseException) -> None:
        """Keep the first failure, and wake whoever waits on progress."""
        if self.fatal is None:
            self.fatal = exc
        self.wake()

    async def until(self, condition: Callable[[], bool], timeout: float) -> None:  # noqa: ASYNC109
        """Return once ``condition()`` holds (checked at every :meth:`wake`); raise
        ``TimeoutError`` after ``timeout`` seconds, :class:`PipelineError` if the run fails
        meanwhile."""
        if condition():
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (condition, future)
        self._waiters.append(entry)
        try:
            async with asyncio.timeout(timeout):
                await future
        finally:
            if entry in self._waiters:
                self._waiters.remove(entry)

    def wake(self) -> None:
        """Something finished: let waiters whose condition holds now go on."""
        if not self._waiters:
            return
        fatal = self.fatal
        for condition, future in list(self._waiters):
            if future.done():
                continue
            if fatal is not None:
                future.set_exception(PipelineError(f"the pipeline failed: {fatal}"))
            elif condition():
                future.set_result(None)
