"""Which source positions are safe to commit.

Records may reach their terminal state (written to every sink, dead-lettered, or shed and
recorded) out of order. A partition's commit position is the offset of its first record that
has not: everything below it is finished. Following Kafka, a commit position is the next
offset to read, so committing it and restarting re-reads exactly the unfinished records.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from headrace.errors import HeadraceError
from headrace.record import Record

PartitionKey = tuple[str, int]


class _Partition:
    __slots__ = ("last_tracked", "order", "position", "unfinished")

    def __init__(self, first_offset: int) -> None:
        self.order: deque[int] = deque()  # tracked offsets, oldest first
        self.unfinished: set[int] = set()
        self.last_tracked = first_offset - 1
        self.position = first_offset

    def advance(self) -> None:
        order, unfinished = self.order, self.unfinished
        while order and order[0] not in unfinished:
            order.popleft()
        self.position = order[0] if order else self.last_tracked + 1


class OffsetTrackerError(HeadraceError, RuntimeError):
    """The tracker was told something impossible: a sign of a bug upstream."""


class OffsetTracker:
    """Tracks records from read to terminal state, per (topic, partition).

    >>> from headrace.record import Record
    >>> t = OffsetTracker()
    >>> rs = [Record(key=None, value=None, event_time=0.0, topic="t", partition=0, offset=o)
    ...       for o in range(3)]
    >>> t.track(rs)
    >>> t.done([rs[2], rs[0]])  # out of order: offset 1 is still unfinished
    >>> t.positions()
    {('t', 0): 1}
    >>> t.done([rs[1]])
    >>> t.positions()
    {('t', 0): 3}
    """

    def __init__(self) -> None:
        self._partitions: dict[PartitionKey, _Partition] = {}
        self._committed: dict[PartitionKey, int] = {}

    def track(self, records: Iterable[Record]) -> None:
        """Register records in the order they were read. Offsets must increase per partition."""
        parts = self._partitions
        key: PartitionKey | None = None
        part: _Partition | None = None
        for r in records:
            k = (r.topic, r.partition)
            if k != key:
                key = k
                part = parts.get(k)
                if part is None:
                    part = parts[k] = _Partition(r.offset)
            assert part is not None
            if r.offset <= part.last_tracked:
                raise OffsetTrackerError(
                    f"offset {r.offset} of {k[0]}[{k[1]}] tracked after offset "
                    f"{part.last_tracked}: offsets must increase within a partition"
                )
            part.last_tracked = r.offset
            part.order.append(r.offset)
            part.unfinished.add(r.offset)
            if len(part.order) == 1:
                part.position = r.offset

    def done(self, records: Iterable[Record]) -> None:
        """Mark records as having reached a terminal state."""
        parts = self._partitions
        touched: set[_Partition] = set()
        key: PartitionKey | None = None
        part: _Partition | None = None
        for r in records:
            k = (r.topic, r.partition)
            if k != key:
                key = k
                part = parts.get(k)
                if part is None:
                    raise OffsetTrackerError(f"{k[0]}[{k[1]}] offset {r.offset} was never tracked")
                touched.add(part)
            assert part is not None
            try:
                part.unfinished.remove(r.offset)
            except KeyError:
                raise OffsetTrackerError(
                    f"{k[0]}[{k[1]}] offset {r.offset} is not in flight: never tracked, or "
                    "already done"
                ) from None
        for part in touched:
            part.advance()

    def positions(self) -> dict[PartitionKey, int]:
        """The commit position of every tracked partition."""
        return {k: p.position for k, p in self._partitions.items()}

    def committable(self) -> dict[PartitionKey, int]:
        """Positions that moved since they were last marked committed."""
        committed = self._committed
        return {
            k: p.position for k, p in self._partitions.items() if committed.get(k) != p.position
        }

    def mark_committed(self, positions: dict[PartitionKey, int]) -> None:
        """Record that ``positions`` were committed (call it only once they were)."""
        for k, position in positions.items():
            if k in self._partitions:
                self._committed[k] = position

    def unmark(self, keys: Iterable[PartitionKey]) -> None:
        """Forget that ``keys`` were committed: :meth:`committable` gives them again."""
        for key in keys:
            self._committed.pop(key, None)

    def unmark_committed(self) -> None:
        """Forget what was marked committed: :meth:`committable` gives every position."""
        self._committed.clear()

    def take_committable(self) -> dict[PartitionKey, int]:
        """:meth:`committable`, marked committed at once."""
        changed = self.committable()
        self.mark_committed(changed)
        return changed

    def unfinished(self, partitions: Iterable[PartitionKey]) -> int:
        """Records tracked and not yet finished in the given partitions."""
        parts = self._partitions
        return sum(len(parts[k].unfinished) for k in partitions if k in parts)

    def in_flight(self) -> int:
        """Records tracked and not yet finished."""
        return sum(len(p.unfinished) for p in self._partitions.values())

    def forget(self, topic: str, partition: int) -> None:
        """Drop a partition (it was revoked, or the source rewound it)."""
        self._partitions.pop((topic, partition), None)
        self._committed.pop((topic, partition), None)
