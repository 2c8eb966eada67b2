"""Closing the parts of a run (sinks, the source, window state) one after another."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("headrace")


async def close_logging(name: str, close: Callable[[], Awaitable[None]]) -> None:
    """``await close()``, logging a failure instead of raising it: one part that does not
    close must not keep the others open."""
    try:
        await close()
    except Exception as exc:
        log.error("closing %s failed: %s", name, exc)
