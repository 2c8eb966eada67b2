"""Flow control: bounds on records and bytes in flight between source and sinks.

The bound is a pair of watermarks. Reaching the high one (``max_records`` or ``max_bytes``)
pauses the source; a source whose pause is costly (a Kafka consumer drops what it had
prefetched) resumes once both counts fall to the low one (``resume_at`` times each
bound): the gap keeps it from flapping between paused and running on every batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from headrace.batch import parts_of
from headrace.record import Record


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


class PartitionShares:
    """Each partition's share of the in-flight bound, for sources that pause partitions one
    by one (Kafka).

    Pausing every partition at the bound is not fair: a Kafka consumer discards what it
    had prefetched for a paused partition, and after a resume the first poll fills the
    window from whichever partitions' fetches came back first, so the others starve. A
    partition holding its share (``max_records`` over the partitions assigned) is paused
    alone and resumed when it is down to ``resume_at`` of it; the others go on.

    >>> shares = PartitionShares(max_records=100, resume_at=0.5)
    >>> from headrace.record import Record
    >>> def rec(offset):
    ...     return Record(key=None, value=None, event_time=0.0, topic="t", partition=0,
    ...                   offset=offset)
    >>> shares.admit([rec(i) for i in range(50)])
    >>> sorted(shares.full(assigned=2)), sorted(shares.full(assigned=4))
    ([('t', 0)], [('t', 0)])
    >>> shares.release([rec(i) for i in range(30)])
    >>> sorted(shares.drained({("t", 0)}, assigned=2))
    [('t', 0)]
    """

    def __init__(self, max_records: int, resume_at: float = 0.5) -> None:
        self.max_records = max_records
        self.resume_at = resume_at
        self.counts: dict[tuple[str, int], int] = {}

    def share(self, assigned: int) -> int:
        return max(1, self.max_records // max(1, assigned))

    def admit(self, records: Sequence[Record]) -> None:
        self._add(records, 1)

    def release(self, records: Sequence[Record]) -> None:
        self._add(records, -1)

    def full(self, assigned: int) -> set[tuple[str, int]]:
        """Partitions at or above their share."""
        share = self.share(assigned)
        return {k for k, n in self.counts.items() if n >= share}

    def drained(self, held: set[tuple[str, int]], assigned: int) -> set[tuple[str, int]]:
        """Of ``held``, the partitions down to ``resume_at`` of their share."""
        low = int(self.share(assigned) * self.resume_at)
        counts = self.counts
        return {k for k in held if counts.get(k, 0) <= low}

    def forget(self, key: tuple[str, int]) -> None:
        self.counts.pop(key, None)

    def _add(self, records: Sequence[Record], sign: int) -> None:
        counts = self.counts
        parts = parts_of(records)
        if parts is not None:  # each of one partition: no record is built
            for p in parts:
                key = (p.topic, p.partition)
                counts[key] = counts.get(key, 0) + sign * len(p)
            return
        # Runs of one partition are the common case: count them without a tuple per record.
        topic: str | None = None
        partition = -1
        run = 0
        for r in records:
            if r.partition != partition or r.topic != topic:
                if run:
                    key = (topic or "", partition)
                    counts[key] = counts.get(key, 0) + sign * run
                topic, partition, run = r.topic, r.partition, 0
            run += 1
        if run:
            key = (topic or "", partition)
            counts[key] = counts.get(key, 0) + sign * run
