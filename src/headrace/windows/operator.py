"""The window operator: records in, closed windows' features out, state per partition.

:class:`WindowOperator` keys each record (by a value field or the record key), takes its
event time (a value field or the record's own timestamp), folds its fields into the state of
every window it belongs to, and hands out a :class:`WindowResult` for each window the
watermark closes: on :meth:`~WindowOperator.add` as records move event time on, and on
:meth:`~WindowOperator.advance` as time passes without records (idle partitions stop holding
the watermark back), so a key that falls silent still gets its last window scored.

Records it cannot place come back as :class:`Rejected` with the reason and are counted:
``late`` (every window the record belongs to has closed) or ``invalid`` (no usable event
time or key, or a field a numeric feature cannot take). Nothing is dropped silently.

State is kept per input partition (:mod:`headrace.windows.store`), and leaves the operator in
two forms. :meth:`~WindowOperator.snapshot` serialises one partition's open windows together
with its watermark position, and :meth:`~WindowOperator.restore` puts them back into any
operator with the same windows and features. With ``track_changes=True``,
:meth:`~WindowOperator.changes` gives what changed since its last call as ``(key, value)``
byte pairs, one per window (``None``: the window is gone), plus one for the partition's
position, which is what a compacted changelog topic takes; and
:meth:`~WindowOperator.restore_changes` rebuilds the partition from those records. Either
way, processing continues as if it had never stopped.

The operator is synchronous, pure and engine-independent: it owns no clock (``now`` is
passed in), no thread and no I/O.

>>> from headrace.record import Record
>>> from headrace.windows.aggregators import Count, Sum
>>> from headrace.windows.assigners import Tumbling
>>> op = WindowOperator(Tumbling(10), {"n": (None, Count()), "total": ("amount", Sum())},
...                     key_field="user")
>>> def rec(user, t, amount, offset):
...     return Record(key=None, value={"user": user, "amount": amount}, event_time=t,
...                   topic="events", partition=0, offset=offset)
>>> op.add([rec("ann", 1.0, 5, 0), rec("bob", 4.0, 1, 1), rec("ann", 9.5, 2, 2)], now=0.0)
([], [])
>>> closed, rejected = op.add([rec("bob", 12.0, 7, 3)], now=0.0)  # event time passes 10 s
>>> [(r.key, r.window.start, r.window.end, r.count, r.features) for r in closed]
[('ann', 0.0, 10.0, 2, {'n': 2, 'total': 7.0}), ('bob', 0.0, 10.0, 1, {'n': 1, 'total': 1.0})]
>>> closed, rejected = op.add([rec("ann", 3.0, 1, 4)], now=0.0)
>>> rejected[0].reason.value, op.late_count
('late', 1)
"""

from __future__ import annotations

import gc
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import msgspec

from headrace.errors import ErrorType, Stage, failure, json_kind
from headrace.record import FailedRecord, Record
from headrace.windows.aggregators import Aggregator
from headrace.windows.assigners import Assigner
from headrace.windows.features import Features, Invalid, not_an_object
from headrace.windows.store import EVERYTHING, NEVER, Store, make_store
from headrace.windows.watermark import Watermarks
from headrace.windows.window import Window, event_us, to_seconds, to_us

REJECT_STAGE = Stage.WINDOW.value
# The encoding of a partition's state (snapshots and changelog records). Version 1 held
# times in milliseconds; 2 holds them in microseconds. Version 1 state is still restored,
# converted (see _from_ms).
SNAPSHOT_VERSION = 2
_MS_VERSION = 1


@dataclass(frozen=True, slots=True)
class WindowResult:
    """A closed window of one key: its bounds, how many records it held, its features, and
    the input partition whose state it came from."""

    key: Any
    window: Window
    count: int
    features: dict[str, Any]
    partition: int

    def to_dict(self) -> dict[str, Any]:
        """The shape an output carries (the model's prediction and version are added
        where it is scored).

        >>> WindowResult("k", Window(0, 10_000_000), 3, {"n": 3}, 0).to_dict()["window"]
        {'start': 0.0, 'end': 10.0}
        """
        return {
            "key": self.key,
            "window": {"start": self.window.start, "end": self.window.end},
            "count": self.count,
            "features": self.features,
            "partition": self.partition,
        }


@dataclass(frozen=True, slots=True)
class Rejected:
    """A record the operator did not add to any window, and why: ``reason`` is ``late``,
    or what made it impossible to place (``not-an-object``, ``missing-field``,
    ``wrong-type``, ``invalid-time``); ``detail`` says what exactly."""

    record: Record
    reason: ErrorType
    detail: str

    def to_failed(self) -> FailedRecord:
        """As the engine's dead-letter destinations take it."""
        return failure(self.record, Stage.WINDOW, self.detail, self.reason)


class _Position(msgspec.Struct, array_like=True):
    """What a partition's state needs besides its windows, and what it must match."""

    version: int
    kind: str
    features: list[str]
    max_us: int | None  # the latest event time the partition delivered: its watermark
    horizon: int  # the store had closed its windows through this


class _Snapshot(_Position, array_like=True):
    """One partition's state, as :meth:`WindowOperator.snapshot` encodes it."""

    rows: list[Any]


_encode = msgspec.msgpack.Encoder().encode
_decode_snapshot = msgspec.msgpack.Decoder(_Snapshot).decode
_decode_position = msgspec.msgpack.Decoder(_Position).decode
_decode_row = msgspec.msgpack.Decoder(list[Any]).decode

# The changelog key of a partition's position: msgpack's nil, which no window's key (a
# msgpack array) can equal.
POSITION_KEY = _encode(None)


@contextmanager
def bulk_load() -> Iterator[None]:
    """No garbage collection while a partition's state is rebuilt or encoded in bulk.

    A restore creates millions of small containers and no garbage; each of them counts
    towards the next collection, and the collector's full passes over an ever larger heap
    were three quarters of the time of restoring 200 000 windows (measured: 6.1 s with,
    1.6 s without; half of the time of encoding them all as changelog records).
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _is_time(value: Any) -> bool:
    if type(value) is float:  # what nearly every event time is: first, once per event
        return math.isfinite(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    # An int is finite, however large (math.isfinite would raise for one past a float's
    # range): event_us says whether it is in range.
    return isinstance(value, int) or math.isfinite(value)


class WindowOperator:
    """Event-time windows over keyed records, with watermarks and per-partition state.

    * ``assigner``: :class:`~headrace.windows.assigners.Tumbling`, ``Hopping``, ``Sliding``,
      ``Session`` or any fixed :class:`~headrace.windows.assigners.Assigner`;
    * ``features``: a :class:`~headrace.windows.features.Features` or the mapping for one;
    * ``key_field``: the value field holding the entity key; ``None`` uses ``Record.key``;
    * ``time_source``: the value field holding the event time in seconds since the epoch;
      ``None`` uses ``Record.event_time`` (the Kafka record timestamp);
    * ``allowed_lateness``: seconds of out-of-orderness tolerated: a partition's watermark is
      its latest event time minus this;
    * ``grace``: seconds a window stays open after the watermark reaches its end;
    * ``idle_timeout``: seconds without records after which a partition stops holding the
      watermark back (``None``: never);
    * ``track_changes``: remember which windows changed, for :meth:`changes` (a changelog).
      Off by default, since an operator nobody asks would remember them forever.
    """

    def __init__(
        self,
        assigner: Assigner,
        features: Features | Mapping[str, tuple[str | None, Aggregator[Any]]],
        key_field: str | None = None,
        time_source: str | None = None,
        allowed_lateness: float = 0.0,
        grace: float = 0.0,
        idle_timeout: float | None = None,
        track_changes: bool = False,
    ) -> None:
        if grace < 0:
            raise ValueError(f"grace must be 0 or more, got {grace}")
        self.assigner = assigner
        self.features = features if isinstance(features, Features) else Features(features)
        self.key_field = key_field
        self.time_source = time_source
        self.grace_us = to_us(grace)
        self.clock = Watermarks(allowed_lateness, idle_timeout)
        self.track_changes = track_changes
        self.kind = self._new_store().kind
        self._stores: dict[int, Store] = {}
        self.late_count = 0
        self.invalid_count = 0
        self.closed_count = 0

    # -- what the engine asks ------------------------------------------------------------

    @property
    def watermark(self) -> float | None:
        """The worker's watermark in seconds; ``None`` until every active partition has
        delivered an event."""
        wm = self.clock.current
        return None if wm is None else to_seconds(wm)

    @property
    def partitions(self) -> list[int]:
        return list(self._stores)

    @property
    def live_states(self) -> int:
        """How many (key, window) states (panes, for sliding windows) are held: what memory
        grows with."""
        return sum(len(s) for s in self._stores.values())

    def live_states_of(self, partition: int) -> int:
        """:attr:`live_states` of one partition."""
        return len(self._stores[partition])

    def assign_partitions(self, partitions: Iterable[int]) -> None:
        """Start tracking partitions with no state yet. Until a partition delivers an event
        (or idles out) it holds the watermark back, so windows wait for it; partitions not
        assigned are tracked from their first record."""
        for p in partitions:
            if p not in self._stores:
                self._stores[p] = self._new_store()
                self.clock.assign(p)

    def add(
        self, records: Iterable[Record], now: float
    ) -> tuple[list[WindowResult], list[Rejected]]:
        """Fold ``records`` into their windows; the windows that closed, and the records
        that could not be added. ``now`` is the caller's clock (seconds), for idleness."""
        clock, grace = self.clock, self.grace_us
        clock.refresh(now)
        rejected: list[Rejected] = []
        stores = self._stores
        for r in records:
            p = r.partition
            store = stores.get(p)
            if store is None:
                self.assign_partitions([p])
                store = stores[p]
            placed = self._place(r)
            if isinstance(placed, Invalid):
                self.invalid_count += 1
                rejected.append(Rejected(r, placed.error_type, placed.detail))
                continue
            key, t, values = placed
            wm = clock.observe(p, t, now)
            horizon = store.horizon if wm is None else max(wm - grace, store.horizon)
            if not store.add(key, t, values, horizon):
                self.late_count += 1
                rejected.append(Rejected(r, ErrorType.LATE, self._late_detail(t, horizon)))
        return self._close(), rejected

    def advance(self, now: float) -> list[WindowResult]:
        """The windows closed by time passing alone: partitions idle since the last call
        stop holding the watermark back."""
        self.clock.refresh(now)
        return self._close()

    def flush(self) -> list[WindowResult]:
        """End of input: close every open window now, whatever the watermark. Records
        after this are late. (Not for shutdown, which should :meth:`snapshot` instead.)"""
        out: list[WindowResult] = []
        for p, store in self._stores.items():
            out.extend(self._results(p, store.close(EVERYTHING)))
        out.sort(key=lambda r: r.window.end_us)
        return out

    def snapshot(self, partition: int) -> bytes:
        """One partition's open windows and watermark position, as bytes (``KeyError`` for
        a partition this operator does not hold)."""
        store = self._stores[partition]
        pos = self._position(partition)
        return _encode(
            _Snapshot(pos.version, pos.kind, pos.features, pos.max_us, pos.horizon, store.dump())
        )

    def restore(self, partition: int, data: bytes) -> None:
        """Replace ``partition``'s state with a :meth:`snapshot` of it (from this operator or
        another with the same kind of window and the same features)."""
        with bulk_load():
            snap = _decode_snapshot(data)
            self._install(partition, snap, snap.rows)

    def changes(self, partition: int) -> list[tuple[bytes, bytes | None]]:
        """The changelog records for what changed in ``partition`` since the last call:
        ``(key, value)`` per window touched, ``value`` ``None`` for a window that is gone
        (a tombstone), and last the partition's position under :data:`POSITION_KEY`.
        Needs ``track_changes``."""
        store = self._stores[partition]
        with bulk_load():  # the first call after a restart may cover every window
            out: list[tuple[bytes, bytes | None]] = [
                (_encode(ident), None if row is None else _encode(row))
                for ident, row in store.changes()
            ]
        out.append((POSITION_KEY, _encode(self._position(partition))))
        return out

    def restore_changes(
        self, partition: int, records: Iterable[tuple[bytes, bytes | None]]
    ) -> None:
        """Rebuild ``partition`` from its changelog records, oldest first (a compacted
        topic's, or every :meth:`changes` ever written: the latest value of each key wins,
        ``None`` deletes)."""
        latest: dict[bytes, bytes] = {}
        for key, value in records:
            if value is None:
                latest.pop(key, None)
            else:
                latest[key] = value
        raw = latest.pop(POSITION_KEY, None)
        if raw is None:
            if latest:
                raise ValueError("the changelog holds windows but no partition position")
            pos = _Position(SNAPSHOT_VERSION, self.kind, self.features.names, None, NEVER)
        else:
            pos = _decode_position(raw)
        with bulk_load():
            self._install(partition, pos, [_decode_row(v) for v in latest.values()])

    def revoke(self, partition: int) -> bytes:
        """Stop handling ``partition`` (a rebalance took it): its last snapshot."""
        data = self.snapshot(partition)
        self.drop(partition)
        return data

    def drop(self, partition: int) -> None:
        """Stop handling ``partition``, whose state is already kept elsewhere (a
        changelog): no snapshot is made."""
        del self._stores[partition]
        self.clock.forget(partition)

    # -- inside ------------------------------------------------------------------------

    def _new_store(self) -> Store:
        return make_store(self.assigner, self.features, self.track_changes)

    def _position(self, partition: int) -> _Position:
        store = self._stores[partition]
        return _Position(
            SNAPSHOT_VERSION,
            store.kind,
            self.features.names,
            self.clock.max_us(partition),
            store.horizon,
        )

    def _install(self, partition: int, pos: _Position, rows: list[Any]) -> None:
        if pos.version not in (SNAPSHOT_VERSION, _MS_VERSION):
            raise ValueError(f"window state version {pos.version}, expected {SNAPSHOT_VERSION}")
        if pos.kind != self.kind:
            raise ValueError(f"the state holds {pos.kind} windows, this operator {self.kind}")
        if pos.features != self.features.names:
            raise ValueError(
                f"the state's features {pos.features} differ from {self.features.names}"
            )
        store = self._new_store()
        if pos.version == _MS_VERSION:
            pos, rows = self._from_ms(pos, rows, store)
        store.restore(rows, pos.horizon)
        self._stores[partition] = store
        self.clock.assign(partition, pos.max_us)

    @staticmethod
    def _from_ms(pos: _Position, rows: list[Any], store: Store) -> tuple[_Position, list[Any]]:
        """Version 1 state (times in ms) in microseconds: every time times 1000. Nothing
        moves across a bound: windows, sessions and horizons stay where they were (their ms
        bounds are µs bounds); an event kept at ms ``m`` (a sliding pane, a First or Last
        time) is taken at its first µs, ``1000 * m``, which keeps it inside every window it
        was in; the latest event time, which was in ``[m, m + 1)`` ms, is taken at its
        earliest, so the watermark is where it was."""
        horizon = min(max(pos.horizon * 1000, NEVER), EVERYTHING)  # NEVER stays NEVER
        max_us = None if pos.max_us is None else pos.max_us * 1000
        position = _Position(SNAPSHOT_VERSION, pos.kind, pos.features, max_us, horizon)
        return position, [store.row_from_ms(row) for row in rows]

    def _place(self, r: Record) -> tuple[Any, int, list[Any]] | Invalid:
        """A record's key, event time (µs) and feature values, or why it has none."""
        value = r.value
        if self.time_source is None:
            seconds: Any = r.event_time
        elif isinstance(value, dict):
            if self.time_source not in value:
                return Invalid(ErrorType.MISSING_FIELD, f"no time field {self.time_source!r}")
            seconds = value[self.time_source]
        else:
            return not_an_object(value)
        if not _is_time(seconds):
            where = "event_time" if self.time_source is None else f"field {self.time_source!r}"
            return Invalid(
                ErrorType.WRONG_TYPE, f"{where} holds {seconds!r}, not a time in seconds"
            )
        if self.key_field is None:
            key = r.key
        elif isinstance(value, dict):
            if self.key_field not in value:
                return Invalid(ErrorType.MISSING_FIELD, f"no key field {self.key_field!r}")
            key = value[self.key_field]
        else:
            return not_an_object(value)
        try:
            hash(key)
        except TypeError:
            return Invalid(
                ErrorType.WRONG_TYPE, f"the key {key!r} is {json_kind(key)}, which cannot be a key"
            )
        values = self.features.extract(value)
        if isinstance(values, Invalid):
            return values
        try:
            # event_us, not to_us: rounding to the nearest µs would put events in the last
            # half µs before a bound in the next window (and move the watermark past it).
            t = event_us(seconds)
        except OverflowError:
            where = "event_time" if self.time_source is None else f"field {self.time_source!r}"
            return Invalid(
                ErrorType.INVALID_TIME,
                f"{where} holds {seconds!r}, out of range for seconds since the epoch",
            )
        return key, t, values

    def _late_detail(self, t_us: int, horizon: int) -> str:
        return (
            f"event time {to_seconds(t_us)} is behind the watermark "
            f"{to_seconds(horizon + self.grace_us)} beyond the grace of "
            f"{to_seconds(self.grace_us)} s: its windows have closed"
        )

    def _close(self) -> list[WindowResult]:
        wm = self.clock.current
        if wm is None:
            return []
        out: list[WindowResult] = []
        for p, store in self._stores.items():
            out.extend(self._results(p, store.close(max(wm - self.grace_us, store.horizon))))
        if len(self._stores) > 1:
            out.sort(key=lambda r: r.window.end_us)  # stable: within a store, already by end
        return out

    def _results(self, partition: int, closed: Sequence[Any]) -> list[WindowResult]:
        result = self.features.result
        self.closed_count += len(closed)
        return [
            WindowResult(key, window, acc.count, result(acc.states), partition)
            for key, window, acc in closed
        ]
