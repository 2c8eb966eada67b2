"""The write order: batches write in the order they were formed.

Batches are scored concurrently (``max_concurrency``), but each takes its place in one
queue when it is formed and writes only after the one before it has: per key, outputs keep
source order. A commit of an exactly-once pipeline takes a place too, so that no batch
formed after it can join the transaction holding its positions.
"""

from __future__ import annotations

import asyncio
from types import TracebackType


class Turn:
    """One place in the :class:`WriteOrder`, taken when it was created.

    ``async with turn:`` waits until every earlier turn is over and ends this one on exit;
    :meth:`end` ends it without entering (a batch that failed before writing must not hold
    up the ones after it), but never before the turns before it are over: the order holds
    whatever happens to one turn. Ending twice is harmless.
    """

    __slots__ = ("_mine", "_previous")

    def __init__(self, previous: asyncio.Future[None] | None, mine: asyncio.Future[None]) -> None:
        self._previous = previous
        self._mine = mine

    async def __aenter__(self) -> Turn:
        if self._previous is not None:
            # Shielded: a turn cancelled while it waits must not cancel the turn before it
            # (the one after would then stop waiting for it).
            await asyncio.shield(self._previous)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.end()

    def end(self) -> None:
        previous = self._previous
        if previous is not None and not previous.done():
            previous.add_done_callback(lambda _: self.end())
            return
        if not self._mine.done():
            self._mine.set_result(None)


class WriteOrder:
    """Hands out turns in the order they are asked for.

    >>> async def demo():
    ...     order, log = WriteOrder(), []
    ...     first, second = order.turn(), order.turn()
    ...     async def write(turn, name):
    ...         async with turn:
    ...             log.append(name)
    ...     await asyncio.gather(write(second, "second"), write(first, "first"))
    ...     return log
    >>> asyncio.run(demo())
    ['first', 'second']
    """

    def __init__(self) -> None:
        self._last: asyncio.Future[None] | None = None

    def turn(self) -> Turn:
        """The next place in the order: taken now, waited for by ``async with``."""
        mine = asyncio.get_running_loop().create_future()
        previous, self._last = self._last, mine
        return Turn(previous, mine)
