"""What the HTTP server and the rest of Headrace share, without the HTTP stack: the errors
it raises and what it asks of a running pipeline.

Kept apart from :mod:`headrace.observe.http` so that importing Headrace does not import
aiohttp (about 15,000 more objects for the garbage collector to walk in every run that
serves no HTTP: an in-process pipeline, a test).
"""

from __future__ import annotations

import errno
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from headrace.errors import HeadraceError


class MetricsPortError(HeadraceError, OSError):
    """The HTTP server cannot listen where it was told to (the port is taken, or not ours
    to take). Raised before the pipeline reads anything; the message says what is wrong
    and what to do, in one sentence."""

    def __init__(self, host: str, port: int, cause: OSError) -> None:
        if cause.errno == errno.EADDRINUSE:
            why = "the port is already in use; stop what holds it, or choose another port"
            why += " (0 picks a free one)"
        elif cause.errno == errno.EACCES:
            why = "no permission to use the port; choose one above 1023"
        else:
            why = f"{cause.strerror or cause}; check the host and port"
        super().__init__(f"cannot serve metrics on {host}:{port}: {why}")
        self.errno = cause.errno
        self.host = host
        self.port = port


class Refused(HeadraceError):
    """An admin action that cannot be done now: answered 409 with its message."""


class Operations(Protocol):
    """What the server asks of a running pipeline
    (:class:`headrace.runtime.operations.Operations`)."""

    def healthy(self) -> bool: ...

    def ready(self) -> str | None:
        """``None`` when ready, else why not."""

    def status(self) -> dict[str, Any]: ...

    def actions(self) -> Mapping[str, Callable[[], Awaitable[dict[str, Any]]]]:
        """The admin calls by path; each answers a JSON body or raises
        :class:`Refused`."""
