"""The ceiling on what a crash can write twice.

At-least-once, a record whose output was written and whose position was not yet committed
is written again after a crash. :class:`Uncommitted` counts those records, per partition,
from the positions the broker confirmed, and says whether a batch may be written without
going over ``limit``: the engine holds a batch back until commits catch up.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from headrace.connectors.base import PartitionKey
from headrace.record import Record
from headrace.runtime.offsets import runs


class Uncommitted:
    """Records written and not yet covered by a confirmed commit, counted by offsets (so
    records set aside between them count too: the bound errs high, never low).

    >>> from headrace.record import Record
    >>> u = Uncommitted(limit=4)
    >>> u.written([Record(key=None, value=None, event_time=0.0, topic="t", partition=0,
    ...                   offset=o) for o in (10, 11, 12)])
    >>> u.count(), u.room(1), u.room(2)
    (3, True, False)
    >>> u.confirmed({("t", 0): 12})
    >>> u.count()
    1
    """

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self._written: dict[PartitionKey, int] = {}  # the offset after the last written
        self._first: dict[PartitionKey, int] = {}  # the lowest offset written
        self._committed: dict[PartitionKey, int] = {}  # the highest position confirmed

    def written(self, records: Sequence[Record]) -> None:
        """Records about to be written: batches of a partition may come out of offset
        order (a higher priority's batch overtakes), so the lowest offset written counts
        from where it is, not the first batch's."""
        written, first = self._written, self._first
        for topic, partition, lo, hi in runs(records):
            key = (topic, partition)
            if hi > written.get(key, -1):
                written[key] = hi
            if lo < first.get(key, lo + 1):
                first[key] = lo

    def confirmed(self, positions: Mapping[PartitionKey, int]) -> None:
        """The broker confirmed these commit positions."""
        committed = self._committed
        for key, position in positions.items():
            if position > committed.get(key, -1):
                committed[key] = position

    def count(self) -> int:
        first, committed = self._first, self._committed
        return sum(
            max(0, end - max(first[key], committed.get(key, -1)))
            for key, end in self._written.items()
        )

    def room(self, n: int) -> bool:
        """Whether ``n`` more records may be written: always when nothing is uncommitted,
        so that a batch larger than the limit still goes, alone."""
        if self.limit is None:
            return True
        count = self.count()
        return count == 0 or count + n <= self.limit

    def behind(self, positions: Mapping[PartitionKey, int]) -> bool:
        """Whether any of ``positions`` (what may be committed now) is past what the
        broker confirmed: a confirmation that would make room may still come."""
        first, committed = self._first, self._committed
        return any(
            k in first and p > max(first[k], committed.get(k, -1)) for k, p in positions.items()
        )

    def forget(self, keys: Iterable[PartitionKey]) -> None:
        for key in keys:
            self._written.pop(key, None)
            self._first.pop(key, None)
            self._committed.pop(key, None)
