"""Flow control: bounds on records and bytes in flight between source and sinks.

The bound is a pair of watermarks. Reaching the high one (``max_records`` or ``max_bytes``)
pauses the source; the source resumes once both counts fall to the low one
(``resume_at`` times each bound). The gap between them keeps a source from flapping between
paused and running on every batch.
"""

from __future__ import annotations

import asyncio


class FlowControl:
    """Counts records and bytes in flight, and says when to pause and resume reading.

    The reader :meth:`admit`s what it read and the engine :meth:`release`s records when
    they reach a terminal state. Admission never blocks: a source that keeps delivering
    while paused (a Kafka consumer's prefetched records) is admitted over the bound, which
    is why the bound is a watermark, not a wall.

    >>> flow = FlowControl(max_records=10, max_bytes=1000, resume_at=0.5)
    >>> flow.admit(8, 100); flow.over_high
    False
    >>> flow.admit(2, 100); flow.over_high
    True
    >>> flow.release(4, 40); flow.below_low
    False
    >>> flow.release(1, 10); flow.below_low
    True
    """

    def __init__(self, max_records: int, max_bytes: int | None = None, resume_at: float = 0.5):
        if max_records < 1:
            raise ValueError(f"the in-flight record bound must be at least 1, got {max_records}")
        if max_bytes is not None and max_bytes < 1:
            raise ValueError(f"the in-flight byte bound must be at least 1, got {max_bytes}")
        if not 0 <= resume_at < 1:
            raise ValueError(f"resume_at must be in [0, 1), got {resume_at}")
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.resume_records = int(max_records * resume_at)
        self.resume_bytes = int(max_bytes * resume_at) if max_bytes is not None else None
        self.count = 0
        self.bytes = 0
        self.peak = 0
        self.peak_bytes = 0
        self._changed = asyncio.Event()

    @property
    def over_high(self) -> bool:
        """At or above a bound: time to pause reading."""
        if self.count >= self.max_records:
            return True
        return self.max_bytes is not None and self.bytes >= self.max_bytes

    @property
    def below_low(self) -> bool:
        """At or below both resume marks (or empty): reading may resume."""
        if self.count == 0:
            return True
        if self.count > self.resume_records:
            return False
        return self.resume_bytes is None or self.bytes <= self.resume_bytes

    def fraction(self) -> float:
        """How full the tighter of the two bounds is (0 empty, 1 at the bound)."""
        f = self.count / self.max_records
        if self.max_bytes is not None:
            f = max(f, self.bytes / self.max_bytes)
        return f

    def admit(self, n: int, nbytes: int = 0) -> None:
        self.count += n
        self.bytes += nbytes
        if self.count > self.peak:
            self.peak = self.count
        if self.bytes > self.peak_bytes:
            self.peak_bytes = self.bytes

    def release(self, n: int, nbytes: int = 0) -> None:
        self.count -= n
        self.bytes -= nbytes
        self._changed.set()

    async def wait_below_low(self) -> None:
        """Return once :attr:`below_low` holds."""
        while not self.below_low:
            self._changed.clear()
            await self._changed.wait()
