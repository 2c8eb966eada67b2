"""Waiting out a service that is away (a database restarting, a network blip): the same
operation again, with backoff, until it answers, said in the log once and not per attempt.

A sink that is down is treated like a model that is down: nothing is dropped, the writes
wait, the pipeline's flow bound pauses the source while they do, and everything resumes
when the service is back. Only errors that mean "not reachable now" are retried; any other
error is raised at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from headrace.observe.throttle import Throttle

T = TypeVar("T")

log = logging.getLogger("headrace")


class Outage:
    """Runs operations against ``what``, retrying those that fail with a transient error.

    Backoff starts at ``first`` seconds and doubles up to ``cap``. The log says the outage
    began (with the error), then at most once per ``log_every`` seconds that it goes on,
    then once that the service answers again and after how long. ``down`` is true while
    an operation waits for the service (for metrics and health); ``on_down`` (if given) is
    called with true when an outage begins and with false when it ends.
    """

    def __init__(
        self,
        what: str,
        *,
        transient: Callable[[BaseException], bool],
        first: float = 0.1,
        cap: float = 5.0,
        log_every: float = 30.0,
        on_down: Callable[[bool], None] | None = None,
    ) -> None:
        self.what = what
        self.on_down = on_down
        self.transient = transient
        self.first = first
        self.cap = cap
        self.down = False
        self._throttle = Throttle(log_every)

    async def run(
        self,
        op: Callable[[], Awaitable[T]],
        *,
        reset: Callable[[], Awaitable[None]] | None = None,
    ) -> T:
        """``op()``, again after each transient failure; ``reset`` runs after a failure,
        before the wait (e.g. to drop a broken connection)."""
        attempt = 0
        started = 0.0
        while True:
            try:
                result = await op()
            except Exception as exc:
                if not self.transient(exc):
                    raise
                if reset is not None:
                    await reset()
                attempt += 1
                if attempt == 1:
                    started = time.monotonic()
                if not self.down and self.on_down is not None:
                    self.on_down(True)
                self.down = True
                delay = min(self.cap, self.first * 2.0 ** min(attempt - 1, 32))
                held = self._throttle.allow()
                if held is not None:
                    log.warning(
                        "%s is unavailable (%s); retrying with backoff up to %.3g s, attempt %d",
                        self.what,
                        _one_line(exc),
                        self.cap,
                        attempt,
                    )
                await asyncio.sleep(delay)
                continue
            if attempt:
                self.down = False
                if self.on_down is not None:
                    self.on_down(False)
                self._throttle.reset()
                log.warning(
                    "%s answers again after %.1f s and %d failed attempts: resuming",
                    self.what,
                    time.monotonic() - started,
                    attempt,
                )
            return result


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]
