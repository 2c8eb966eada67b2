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
        self._committed: dict[PartitionKey, int] = {}  # confirmed, or the first written

    def written(self, records: Sequence[Record]) -> None:
        """Records about to be written (in read order within each partition)."""
        written, committed = self._written, self._committed
        for r in records:
            key = (r.topic, r.partition)
            end = r.offset + 1
            if end > written.get(key, -1):
                written[key] = end
            if key not in committed:
                committed[key] = r.offset

    def confirmed(self, positions: Mapping[PartitionKey, int]) -> None:
        """The broker confirmed these commit positions."""
        committed = self._committed
        for key, position in positions.items():
            if position > committed.get(key, -1):
                committed[key] = position

    def count(self) -> int:
        committed = self._committed
        return sum(max(0, end - committed.get(key, end)) for key, end in self._written.items())

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
        committed = self._committed
        return any(p > committed.get(k, p) for k, p in positions.items())

    def forget(self, keys: Iterable[PartitionKey]) -> None:
        for key in keys:
            self._written.pop(key, None)
            self._committed.pop(key, None)
