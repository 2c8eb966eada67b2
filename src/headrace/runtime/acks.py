"""Records written to sinks that acknowledge are done once acknowledged, not when written.

At-least-once into Kafka: a batch's records are settled (their positions may be committed)
once the broker acknowledged every output of theirs, so a commit needs no flush, which
would also wait for every batch written after them. Until then they count as in flight.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from headrace.connectors.base import AcknowledgingSink, Sink
from headrace.record import Record

#: Called with records that reached a terminal state, and how many of them were scored.
Settle = Callable[[Sequence[Record], int], None]


class Acknowledgements:
    """Settles records once the acknowledging sinks they were written to have them.
    ``on_failure`` is called with the first write that failed: its records are never
    settled, so no position passes them."""

    def __init__(self, on_failure: Callable[[BaseException], None]) -> None:
        self.on_failure = on_failure
        self.pending = 0
        self._none_pending = asyncio.Event()
        self._none_pending.set()
        self.failed: BaseException | None = None

    def settle(
        self, sinks: Sequence[Sink], settle: Settle, records: Sequence[Record], scored: int
    ) -> None:
        """``settle(records, scored)`` once every one of ``sinks`` that acknowledges has
        its writes so far durable; at once if none does."""
        acking = [s for s in sinks if isinstance(s, AcknowledgingSink)]
        if not acking:
            settle(records, scored)
            return
        left = len(acking)
        self.pending += 1
        self._none_pending.clear()

        def acknowledged(error: BaseException | None) -> None:
            nonlocal left
            if left <= 0:
                return
            left = 0 if error is not None else left - 1
            if left:
                return
            self.pending -= 1
            if not self.pending:
                self._none_pending.set()
            if error is not None:
                if self.failed is None:
                    self.failed = error
                    self.on_failure(error)
                return
            settle(records, scored)

        for sink in acking:
            sink.when_acknowledged(acknowledged)

    async def wait(self) -> None:
        """Return once every write so far was acknowledged (or failed)."""
        await self._none_pending.wait()
