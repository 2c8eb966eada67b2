"""Which source positions are safe to commit.

Records may reach their terminal state (written to every sink, dead-lettered, or shed and
recorded) out of order. A partition's commit position is the offset of its first record that
has not: everything below it is finished. Following Kafka, a commit position is the next
offset to read, so committing it and restarting re-reads exactly the unfinished records.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable

from headrace.batch import parts_of
from headrace.errors import HeadraceError
from headrace.record import Record

PartitionKey = tuple[str, int]


def runs(records: Iterable[Record]) -> list[tuple[str, int, int, int]]:
    """``(topic, partition, lo, hi)`` for each run of consecutive offsets ``lo .. hi - 1``
    of one partition, each partition's runs in order: what a batch's bookkeeping works on,
    a few runs per batch instead of one step per record. Partitions may interleave (a
    consumer's records of several partitions) without splitting their runs.

    >>> from headrace.record import source_record
    >>> rs = [source_record(key=None, value=None, event_time=0.0, topic="t", partition=p,
    ...                     offset=o) for p, o in [(0, 5), (0, 6), (1, 9), (0, 7), (0, 9)]]
    >>> runs(rs)
    [('t', 0, 5, 8), ('t', 0, 9, 10), ('t', 1, 9, 10)]
    """
    parts = parts_of(records)  # each one partition's consecutive offsets
    if parts is not None:
        return [(p.topic, p.partition, p.offsets.start, p.offsets.stop) for p in parts if p.offsets]
    done: list[tuple[str, int, int, int]] = []
    open_: dict[PartitionKey, list[int]] = {}
    topic: str | None = None
    partition = -1
    run = [0, -1]  # the run of the record before: most records extend it
    for r in records:
        o = r.offset
        if o == run[1] and r.partition == partition and r.topic == topic:
            run[1] = o + 1
            continue
        topic, partition = key = r.topic, r.partition
        found = open_.get(key)
        if found is not None and found[1] == o:
            found[1] = o + 1
            run = found
            continue
        if found is not None:
            done.append((topic, partition, found[0], found[1]))
        run = open_[key] = [o, o + 1]
    for (t, p), (lo, hi) in open_.items():
        done.append((t, p, lo, hi))
    return done


class _Partition:
    """One partition's records in flight, as runs of consecutive offsets (sorted, never
    adjacent: a run read right after the last one extends it). Run ``i`` spans
    ``starts[i] .. ends[i] - 1``; everything below ``nexts[i]`` in it is finished, and
    ``extra`` holds the offsets finished out of order (above their run's ``nexts``).
    Runs before ``head`` are finished and dropped."""

    __slots__ = ("ends", "extra", "head", "last_tracked", "nexts", "starts", "unfinished")

    def __init__(self, first_offset: int) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.nexts: list[int] = []
        self.head = 0
        self.extra: set[int] = set()
        self.last_tracked = first_offset - 1
        self.unfinished = 0

    def track(self, lo: int, hi: int) -> None:
        ends = self.ends
        if self.head < len(ends) and ends[-1] == lo:
            ends[-1] = hi
        else:
            self.starts.append(lo)
            ends.append(hi)
            self.nexts.append(lo)
        self.last_tracked = hi - 1
        self.unfinished += hi - lo

    def done(self, lo: int, hi: int) -> int | None:
        """Mark ``lo .. hi - 1`` finished; an offset of them that was not in flight (then
        nothing is marked), else ``None``."""
        i = bisect_right(self.starts, lo, self.head) - 1
        if i < self.head or hi > self.ends[i]:
            return lo if i < self.head or lo >= self.ends[i] else self.ends[i]
        extra, nexts = self.extra, self.nexts
        nxt = nexts[i]
        if lo < nxt:
            return lo  # finished already
        if extra:
            again = extra.intersection(range(lo, hi))
            if again:
                return min(again)
        self.unfinished -= hi - lo
        if lo == nxt:  # in order: the usual case
            end = self.ends[i]
            while hi < end and hi in extra:  # finished earlier, out of order
                extra.remove(hi)
                hi += 1
            nexts[i] = hi
        else:
            extra.update(range(lo, hi))
        return None

    @property
    def position(self) -> int:
        """The first unfinished offset, or the one after the last tracked."""
        starts, ends, nexts, head = self.starts, self.ends, self.nexts, self.head
        n = len(starts)
        while head < n and nexts[head] == ends[head]:
            head += 1
        if head > 32 and head * 2 > n:  # drop finished runs now and then, not each time
            del starts[:head], ends[:head], nexts[:head]
            head = 0
            n = len(starts)
        self.head = head
        return nexts[head] if head < n else self.last_tracked + 1


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
        for topic, partition, lo, hi in runs(records):
            part = parts.get((topic, partition))
            if part is None:
                part = parts[topic, partition] = _Partition(lo)
            elif lo <= part.last_tracked:
                raise OffsetTrackerError(
                    f"offset {lo} of {topic}[{partition}] tracked after offset "
                    f"{part.last_tracked}: offsets must increase within a partition"
                )
            part.track(lo, hi)

    def done(self, records: Iterable[Record]) -> None:
        """Mark records as having reached a terminal state."""
        parts = self._partitions
        for topic, partition, lo, hi in runs(records):
            part = parts.get((topic, partition))
            if part is None:
                raise OffsetTrackerError(f"{topic}[{partition}] offset {lo} was never tracked")
            wrong = part.done(lo, hi)
            if wrong is not None:
                raise OffsetTrackerError(
                    f"{topic}[{partition}] offset {wrong} is not in flight: never tracked, or "
                    "already done"
                )

    def positions(self) -> dict[PartitionKey, int]:
        """The commit position of every tracked partition."""
        return {k: p.position for k, p in self._partitions.items()}

    def committable(self) -> dict[PartitionKey, int]:
        """Positions that moved since they were last marked committed."""
        committed = self._committed
        moved = {}
        for k, p in self._partitions.items():
            position = p.position
            if committed.get(k) != position:
                moved[k] = position
        return moved

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
        return sum(parts[k].unfinished for k in partitions if k in parts)

    def in_flight(self) -> int:
        """Records tracked and not yet finished."""
        return sum(p.unfinished for p in self._partitions.values())

    def forget(self, topic: str, partition: int) -> None:
        """Drop a partition (it was revoked, or the source rewound it)."""
        self._partitions.pop((topic, partition), None)
        self._committed.pop((topic, partition), None)
