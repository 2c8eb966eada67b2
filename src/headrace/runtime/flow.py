"""Flow control: a bound on records in flight between source and sinks."""

from __future__ import annotations

import asyncio


class InFlightLimit:
    """Credits for records in flight. The reader takes credits before it reads on; the
    engine returns them when records reach a terminal state. A chunk larger than the whole
    limit is let through alone, so a big chunk cannot deadlock the pipeline.

    >>> import asyncio
    >>> async def demo():
    ...     limit = InFlightLimit(10)
    ...     await limit.acquire(8)
    ...     waiter = asyncio.create_task(limit.acquire(5))
    ...     await asyncio.sleep(0)
    ...     blocked = not waiter.done()
    ...     limit.release(8)
    ...     await waiter
    ...     return blocked, limit.count
    >>> asyncio.run(demo())
    (True, 5)
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"the in-flight limit must be at least 1, got {limit}")
        self.limit = limit
        self.count = 0
        self.peak = 0
        self._freed = asyncio.Event()

    async def acquire(self, n: int) -> None:
        while self.count and self.count + n > self.limit:
            self._freed.clear()
            await self._freed.wait()
        self.count += n
        self.peak = max(self.peak, self.count)

    def release(self, n: int) -> None:
        self.count -= n
        self._freed.set()
