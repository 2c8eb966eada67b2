"""The open windows of one input partition: ``{(key, window): state}``, and when each closes.

One store per input partition, so that a partition's windows can be snapshotted, written to a
changelog partitioned like the input, and restored wherever the partition goes next. Three
kinds, chosen by the assigner:

* :class:`FixedStore` (tumbling, hopping, user-defined fixed windows): one state per key and
  window the key has events in;
* :class:`SessionStore`: one state per open session of a key; an event that overlaps
  sessions merges them;
* :class:`SlidingStore`: one *pane* per key and event microsecond; the window ending at a
  pane is the merge of the key's panes in the ``size`` before it, built when it closes.
  Panes stay until no window can need them (``size`` after their time, plus the grace);
  memory is constant per pane, and the number of panes is the key's distinct event times
  in that span.

Every store works with a *horizon*: the watermark minus the grace, in µs. A window whose end
is at or before the horizon is closed: :meth:`close` hands it out (once) and forgets it, and
:meth:`add` refuses to put an event in it. An event none of whose windows is still open is
late, and ``add`` says so by returning ``False``. The operator passes the horizon as of each
event, so what a window holds does not depend on how records were batched.

State leaves a store in two ways: :meth:`Store.dump` gives every live entry (a snapshot), and,
when the store tracks changes, :meth:`Store.changes` gives the entries added, changed or gone
since the last call (``None`` for gone): what a compacted changelog topic wants, one record
per entry, so that neither a write nor a restore has to handle the whole partition at once.
"""

from __future__ import annotations

import heapq
from abc import ABC, abstractmethod
from bisect import bisect_left, bisect_right, insort
from collections.abc import Iterable
from typing import Any, Generic, TypeVar

from headrace.windows.assigners import Assigner, Session, Sliding
from headrace.windows.features import Features
from headrace.windows.window import Window

# Horizons before and after any event time and window (event times are within 2**61 µs of
# the epoch, :func:`~headrace.windows.window.event_us`): int, and within the 64-bit integers
# msgpack stores, so that snapshots and comparisons stay simple.
NEVER = -(1 << 62)
EVERYTHING = 1 << 62

T = TypeVar("T")


class Acc:
    """One window's (or pane's) state: the record count and one state per feature."""

    __slots__ = ("count", "states")

    def __init__(self, count: int, states: list[Any]) -> None:
        self.count = count
        self.states = states


class Schedule(Generic[T]):
    """Items due at integer times, handed out in time order (insertion order within a time).

    A heap of distinct times and a list per time: thousands of keys whose windows end at the
    same instant cost one heap entry, not thousands.

    >>> s = Schedule[str](); s.add(20, "b"); s.add(10, "a"); s.add(20, "c")
    >>> s.pop_until(15), s.pop_until(20), len(s)
    (['a'], ['b', 'c'], 0)
    """

    def __init__(self) -> None:
        self._times: list[int] = []
        self._due: dict[int, list[T]] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def add(self, at: int, item: T) -> None:
        bucket = self._due.get(at)
        if bucket is None:
            self._due[at] = [item]
            heapq.heappush(self._times, at)
        else:
            bucket.append(item)
        self._count += 1

    def pop_until(self, limit: int) -> list[T]:
        """Every item due at or before ``limit``, removed."""
        out: list[T] = []
        times = self._times
        while times and times[0] <= limit:
            out.extend(self._due.pop(heapq.heappop(times)))
        self._count -= len(out)
        return out


def _freeze(key: Any) -> Any:
    # msgpack hands tuples back as lists, which cannot be dictionary keys.
    return tuple(_freeze(k) for k in key) if isinstance(key, list) else key


Closed = tuple[Any, Window, Acc]


class Store(ABC):
    """What the three kinds share: the horizon, the count of live states, snapshots and
    change tracking. Entries are identified by a tuple (``(key, window)``, or ``(key, t)``
    for sliding panes)."""

    kind = ""

    def __init__(self, features: Features, track_changes: bool = False) -> None:
        self.features = features
        self.horizon = NEVER  # windows ending at or before this have been closed
        # The ids of entries touched since the last changes(); None when nobody asks, so that
        # an operator without a changelog does not collect them forever.
        self.dirty: set[Any] | None = set() if track_changes else None

    @abstractmethod
    def __len__(self) -> int:
        """How many states are live."""

    @abstractmethod
    def add(self, key: Any, t_us: int, values: list[Any], horizon: int) -> bool:
        """Add one event; ``False`` when every window it belongs to has closed (late)."""

    @abstractmethod
    def close(self, horizon: int) -> list[Closed]:
        """Hand out (and forget) every window ending at or before ``horizon``, by end."""

    @abstractmethod
    def live(self) -> dict[Any, Acc]:
        """The live entries by id."""

    @abstractmethod
    def row(self, entry: Any, acc: Acc) -> list[Any]:
        """One live entry as a msgpack-encodable row; its first items are :meth:`ident`."""

    @abstractmethod
    def ident(self, entry: Any) -> list[Any]:
        """An entry's id as msgpack-encodable data (the changelog record's key)."""

    @abstractmethod
    def row_from_ms(self, row: list[Any]) -> list[Any]:
        """A row of version 1 state, whose times were milliseconds, with them in µs."""

    def dump(self) -> list[Any]:
        """The live state as rows."""
        row = self.row
        return [row(entry, acc) for entry, acc in self.live().items()]

    def changes(self) -> list[tuple[list[Any], list[Any] | None]]:
        """``(ident, row)`` for each entry touched since the last call, ``None`` for the
        ones that are gone (closed, merged away, expired); then forgets them."""
        if self.dirty is None:
            raise RuntimeError("this store does not track changes")
        live, row, ident = self.live(), self.row, self.ident
        out: list[tuple[list[Any], list[Any] | None]] = []
        for entry in self.dirty:
            acc = live.get(entry)
            out.append((ident(entry), None if acc is None else row(entry, acc)))
        self.dirty.clear()
        return out

    def restore(self, rows: Iterable[Any], horizon: int) -> None:
        """Replace the live state with rows from :meth:`dump` (or the latest :meth:`changes`)
        of a store that had closed its windows through ``horizon``. The result counts as
        written: no change is pending."""
        self.horizon = horizon
        self._load(rows)
        if self.dirty is not None:
            self.dirty.clear()

    @abstractmethod
    def _load(self, rows: Iterable[Any]) -> None:
        """Put rows from :meth:`dump` in place of the live state (the horizon is set)."""

    def _new(self) -> Acc:
        return Acc(0, self.features.init())

    def _touch(self, entry: Any) -> None:
        if self.dirty is not None:
            self.dirty.add(entry)


class _WindowRows(Store):
    """Rows of the stores keyed by ``(key, window)``: ``[key, start, end, count, states]``."""

    entries: dict[tuple[Any, Window], Acc]

    def live(self) -> dict[Any, Acc]:
        return self.entries

    def row(self, entry: Any, acc: Acc) -> list[Any]:
        key, w = entry
        return [key, w.start_us, w.end_us, acc.count, self.features.dump(acc.states)]

    def ident(self, entry: Any) -> list[Any]:
        key, w = entry
        return [key, w.start_us, w.end_us]

    def row_from_ms(self, row: list[Any]) -> list[Any]:
        key, start, end, count, states = row
        return [key, start * 1000, end * 1000, count, self.features.from_ms(states)]


class FixedStore(_WindowRows):
    """Windows that do not depend on other events: tumbling, hopping, user-defined."""

    kind = "fixed"

    def __init__(self, assigner: Assigner, features: Features, track_changes: bool = False):
        super().__init__(features, track_changes)
        self.assigner = assigner
        self.entries: dict[tuple[Any, Window], Acc] = {}
        self.schedule: Schedule[tuple[Any, Window]] = Schedule()

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, key: Any, t_us: int, values: list[Any], horizon: int) -> bool:
        accepted = False
        entries, add = self.entries, self.features.add
        for w in self.assigner.assign(t_us):
            if w.end_us <= horizon:
                continue  # this one has closed; the event may still be on time for later ones
            acc = entries.get((key, w))
            if acc is None:
                acc = entries[key, w] = self._new()
                self.schedule.add(w.end_us, (key, w))
            acc.count += 1
            add(acc.states, values, t_us)
            self._touch((key, w))
            accepted = True
        return accepted

    def close(self, horizon: int) -> list[Closed]:
        self.horizon = max(self.horizon, horizon)
        out: list[Closed] = []
        entries = self.entries
        for key, w in self.schedule.pop_until(horizon):
            acc = entries.pop((key, w), None)
            if acc is not None:
                out.append((key, w, acc))
                self._touch((key, w))
        return out

    def _load(self, rows: Iterable[Any]) -> None:
        self.entries.clear()
        self.schedule = Schedule()
        load = self.features.load
        for key, start, end, count, states in rows:
            k, w = _freeze(key), Window(start, end)
            self.entries[k, w] = Acc(count, load(states))
            self.schedule.add(end, (k, w))


class SessionStore(_WindowRows):
    """Per key, the open sessions; an event overlapping several joins them into one."""

    kind = "session"

    def __init__(self, assigner: Session, features: Features, track_changes: bool = False):
        super().__init__(features, track_changes)
        self.gap_us = assigner.gap_us
        self.entries: dict[tuple[Any, Window], Acc] = {}
        self.by_key: dict[Any, list[Window]] = {}
        # Holds stale entries for sessions merged into a later-ending one: skipped when due,
        # so they go as the watermark passes their old end.
        self.schedule: Schedule[tuple[Any, Window]] = Schedule()

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, key: Any, t_us: int, values: list[Any], horizon: int) -> bool:
        new = Window(t_us, t_us + self.gap_us)
        sessions = self.by_key.get(key)
        # Sessions past the horizon have closed even if close() has not handed them out yet.
        hits = (
            sorted(w for w in sessions if w.end_us > horizon and w.overlaps(new))
            if sessions
            else []
        )
        if not hits:
            if new.end_us <= horizon:
                return False
            acc = self._new()
            self._open(key, new, acc)
        elif len(hits) == 1 and hits[0].start_us <= t_us and new.end_us <= hits[0].end_us:
            acc = self.entries[key, hits[0]]  # inside an open session: nothing moves
            self._touch((key, hits[0]))
        else:
            target = Window(min(hits[0].start_us, t_us), max(hits[-1].end_us, new.end_us))
            # Earliest first: merge's "b arrived later on ties" does not matter here (sessions
            # of one key never share an event time), but a fixed order keeps results stable.
            acc = self._take(key, hits[0])
            for w in hits[1:]:
                other = self._take(key, w)
                acc.count += other.count
                acc.states = self.features.merge(acc.states, other.states)
            self._open(key, target, acc)
        acc.count += 1
        self.features.add(acc.states, values, t_us)
        return True

    def _open(self, key: Any, w: Window, acc: Acc) -> None:
        self.entries[key, w] = acc
        self.by_key.setdefault(key, []).append(w)
        self.schedule.add(w.end_us, (key, w))
        self._touch((key, w))

    def _take(self, key: Any, w: Window) -> Acc:
        sessions = self.by_key[key]
        sessions.remove(w)
        if not sessions:
            del self.by_key[key]
        self._touch((key, w))
        return self.entries.pop((key, w))

    def close(self, horizon: int) -> list[Closed]:
        self.horizon = max(self.horizon, horizon)
        out: list[Closed] = []
        for key, w in self.schedule.pop_until(horizon):
            if (key, w) in self.entries:
                out.append((key, w, self._take(key, w)))
        return out

    def _load(self, rows: Iterable[Any]) -> None:
        self.entries.clear()
        self.by_key.clear()
        self.schedule = Schedule()
        load = self.features.load
        for key, start, end, count, states in rows:
            self._open(_freeze(key), Window(start, end), Acc(count, load(states)))


class SlidingStore(Store):
    """Per key, one pane per event microsecond; each pane's window is built when it closes."""

    kind = "sliding"

    def __init__(self, assigner: Sliding, features: Features, track_changes: bool = False):
        super().__init__(features, track_changes)
        self.assigner = assigner
        self.size_us = assigner.size_us
        self.panes: dict[tuple[Any, int], Acc] = {}
        self.times: dict[Any, list[int]] = {}  # per key, its pane times in order
        self.closing: Schedule[tuple[Any, int]] = Schedule()  # when each pane's window closes
        self.expiring: Schedule[tuple[Any, int]] = Schedule()  # when no window needs the pane

    def __len__(self) -> int:
        return len(self.panes)

    def add(self, key: Any, t_us: int, values: list[Any], horizon: int) -> bool:
        # An event is late when its own window (the one ending at it) has closed; every
        # other window it would be in ends later, but the stream has moved past it.
        if t_us + 1 <= horizon:
            return False
        acc = self.panes.get((key, t_us))
        if acc is None:
            acc = self.panes[key, t_us] = self._new()
            self._index(key, t_us, schedule_close=True)
        acc.count += 1
        self.features.add(acc.states, values, t_us)
        self._touch((key, t_us))
        return True

    def _index(self, key: Any, t_us: int, schedule_close: bool) -> None:
        times = self.times.get(key)
        if times is None:
            self.times[key] = [t_us]
        else:
            insort(times, t_us)
        if schedule_close:
            self.closing.add(t_us + 1, (key, t_us))
        self.expiring.add(t_us + self.size_us, (key, t_us))

    def close(self, horizon: int) -> list[Closed]:
        self.horizon = max(self.horizon, horizon)
        out: list[Closed] = []
        features, panes, size = self.features, self.panes, self.size_us
        # Windows first: a pane expiring in this same step may still be part of one.
        for key, t in self.closing.pop_until(horizon):
            times = self.times[key]
            acc = self._new()
            for u in times[bisect_left(times, t - size + 1) : bisect_right(times, t)]:
                pane = panes[key, u]  # in time order: no two panes share a time
                acc.count += pane.count
                acc.states = features.merge(acc.states, pane.states)
            out.append((key, self.assigner.window_at(t), acc))
        for key, t in self.expiring.pop_until(horizon):
            del panes[key, t]
            self._touch((key, t))
            times = self.times[key]
            del times[bisect_left(times, t)]
            if not times:
                del self.times[key]
        return out

    def live(self) -> dict[Any, Acc]:
        return self.panes

    def row(self, entry: Any, acc: Acc) -> list[Any]:
        key, t = entry
        return [key, t, acc.count, self.features.dump(acc.states)]

    def ident(self, entry: Any) -> list[Any]:
        return list(entry)

    def row_from_ms(self, row: list[Any]) -> list[Any]:
        key, t, count, states = row
        return [key, t * 1000, count, self.features.from_ms(states)]

    def _load(self, rows: Iterable[Any]) -> None:
        self.panes.clear()
        self.times.clear()
        self.closing = Schedule()
        self.expiring = Schedule()
        load = self.features.load
        for key, t, count, states in rows:
            k = _freeze(key)
            self.panes[k, t] = Acc(count, load(states))
            # A pane whose window closed before the snapshot only waits to expire.
            self._index(k, t, schedule_close=t + 1 > self.horizon)


def make_store(assigner: Assigner, features: Features, track_changes: bool = False) -> Store:
    """The store for ``assigner``'s kind of window."""
    if isinstance(assigner, Session):
        return SessionStore(assigner, features, track_changes)
    if isinstance(assigner, Sliding):
        return SlidingStore(assigner, features, track_changes)
    return FixedStore(assigner, features, track_changes)
