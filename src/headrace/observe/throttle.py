"""Saying a repeated thing once: log lines about a failure that goes on (a model that is
down, a database that is away, a broker that cannot be reached) without a line per attempt.

A model down for 10 s once logged 15 "still failing" warnings, and librdkafka reports an
unreachable broker every ~50 ms: the line that matters (it started; it is still so; it
ended) drowned in copies.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable

_DIGITS = re.compile(r"\d+")


class Throttle:
    """Lets a message through the first time, then at most once per ``every`` seconds,
    counting what it held back in between.

    >>> t = Throttle(every=30.0, clock=iter([0.0, 1.0, 2.0, 31.0]).__next__)
    >>> [t.allow() for _ in range(4)]
    [0, None, None, 2]

    ``allow`` returns how many were held back since the last one let through (``0`` the
    first time), or ``None`` to hold this one back.
    """

    def __init__(self, every: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.every = every
        self.clock = clock
        self._last: float | None = None
        self._held = 0

    def allow(self) -> int | None:
        now = self.clock()
        if self._last is not None and now - self._last < self.every:
            self._held += 1
            return None
        held, self._held, self._last = self._held, 0, now
        return held

    def reset(self) -> None:
        """The condition ended: the next message goes through at once."""
        self._last, self._held = None, 0


class RepeatFilter(logging.Filter):
    """A logging filter that passes each distinct message once per ``every`` seconds and
    appends how many copies it dropped in between (for chatty library loggers). Messages
    that differ only in their numbers ("after 0ms", "after 1ms") count as one.

    >>> f = RepeatFilter(every=30.0, clock=lambda: 0.0)
    >>> def rec(msg):
    ...     return logging.LogRecord("x", logging.ERROR, "", 0, msg, None, None)
    >>> [f.filter(rec(f"refused (after {i}ms)")) for i in range(3)]
    [True, False, False]
    """

    def __init__(self, every: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.every = every
        self.clock = clock
        self._seen: dict[tuple[int, str], Throttle] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True  # debug and info lines are off by default; keep them whole
        key = (record.levelno, _DIGITS.sub("#", record.getMessage()))
        throttle = self._seen.get(key)
        if throttle is None:
            if len(self._seen) > 1000:  # distinct messages without end: start over
                self._seen.clear()
            throttle = self._seen[key] = Throttle(self.every, self.clock)
        held = throttle.allow()
        if held is None:
            return False
        if held:
            record.msg = f"{record.getMessage()} (and {held} more like it in {self.every:g} s)"
            record.args = None
        return True
