"""The windows stage of a pipeline: records in, closed windows out, state in a changelog.

:class:`WindowStage` joins a :class:`~headrace.windows.operator.WindowOperator` to the
engine. The engine hands it each decoded chunk (:meth:`~WindowStage.absorb`); records that
land in a window are finished there, records no window takes come back as failures for the
side output, and windows the watermark closed come back as
:class:`~headrace.record.WindowRecord` s for the model.

State leaves through a :class:`~headrace.windows.changelog.Changelog`, written at the
engine's commit points: moments when every closed window's output and every rejected
record is written, so that the state written, the outputs written and the source
positions committed all describe the same prefix of the input. With each partition's state
goes the source position it covers (:data:`OFFSET_KEY`), and a partition assigned to a
worker resumes from there after :meth:`~WindowStage.restore`: no record is counted twice in
a window, even when an offset commit failed after its state was written.

One input topic per stage: the operator and the changelog know partitions by number.

>>> import asyncio
>>> from headrace.record import Record
>>> from headrace.windows import Count, Tumbling, WindowOperator
>>> stage = WindowStage(WindowOperator(Tumbling(10), {"n": (None, Count())}, key_field="id"),
...                     topic="events")
>>> recs = [Record(key=None, value={"id": "a"}, event_time=t, topic="events", partition=0,
...               offset=i) for i, t in enumerate((1.0, 12.0))]
>>> closed, rejected = stage.absorb(recs, now=0.0)
>>> [(w.key, w.window_start, w.event_time, w.count, w.value) for w in closed]
[('a', 0.0, 10.0, 1, {'n': 1})]
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Sequence

import msgspec

from headrace.connectors.base import PartitionKey
from headrace.record import FailedRecord, Record, WindowRecord
from headrace.windows.changelog import Change, Changelog
from headrace.windows.operator import WindowOperator, WindowResult, bulk_load

log = logging.getLogger("headrace.windows")

# The changelog key of a partition's source position: a msgpack string, which neither a
# window's key (a msgpack array) nor the operator's position key (nil) can equal.
OFFSET_KEY = msgspec.msgpack.encode("source-offset")
_decode_offset = msgspec.msgpack.Decoder(int).decode


class WindowStage:
    """A :class:`WindowOperator` with its changelog, for one input ``topic``.

    Without a ``changelog`` the state lives in the operator only, as long as the process
    (sources that cannot rewind to it, files and generators, need no more), and no change
    is tracked or encoded.
    """

    def __init__(
        self,
        operator: WindowOperator,
        *,
        topic: str | None = None,
        changelog: Changelog | None = None,
    ) -> None:
        if operator.partitions:
            raise ValueError("give the stage a new operator: this one already holds state")
        # Its stores are made per partition from now on, tracking changes or not.
        operator.track_changes = changelog is not None
        self.operator = operator
        self.topic = topic
        self.changelog = changelog
        self.emitted = 0
        self.finished = 0
        self.restore_seconds = 0.0
        self._written: dict[int, int] = {}  # partition -> source offset last written

    @property
    def pending(self) -> int:
        """Closed windows handed out and not yet written (or dead-lettered)."""
        return self.emitted - self.finished

    # -- records -------------------------------------------------------------------------

    def absorb(
        self, records: Sequence[Record], now: float
    ) -> tuple[list[WindowRecord], list[FailedRecord]]:
        """Fold ``records`` into their windows: the windows that closed, and the records no
        window took (late or invalid), as failures for the side output."""
        if self.topic is None and records:
            self.topic = records[0].topic
        closed, rejected = self.operator.add(records, now)
        return self._records(closed), [r.to_failed() for r in rejected]

    def advance(self, now: float) -> list[WindowRecord]:
        """Windows closed by time alone (idle partitions stop holding the watermark)."""
        return self._records(self.operator.advance(now))

    def close_all(self) -> list[WindowRecord]:
        """End of input: every open window, closed now."""
        return self._records(self.operator.flush())

    def _records(self, closed: list[WindowResult]) -> list[WindowRecord]:
        if not closed:
            return []
        topic, at, first = self.topic or "", time.time(), self.emitted
        self.emitted += len(closed)
        return [
            WindowRecord(
                r.key,
                r.features,
                topic,
                r.partition,
                first + i,
                r.window.start,
                r.window.end,
                r.count,
                at,
            )
            for i, r in enumerate(closed)
        ]

    # -- state ---------------------------------------------------------------------------

    async def open(self) -> None:
        if self.changelog is not None:
            await self.changelog.open()

    async def flush(self) -> None:
        """Make every change written so far durable."""
        if self.changelog is not None:
            await self.changelog.flush()

    async def close(self) -> None:
        if self.changelog is not None:
            await self.changelog.close()

    def changes(self, positions: dict[PartitionKey, int]) -> list[tuple[int, list[Change]]]:
        """What changed per partition since the last call, with each partition's source
        position from ``positions``. Call it only at a commit point."""
        out: list[tuple[int, list[Change]]] = []
        if self.changelog is None:
            return out
        for p in self.operator.partitions:
            changes = self.operator.changes(p)
            offset = positions.get((self.topic or "", p))
            if offset is not None and offset != self._written.get(p):
                changes.append((OFFSET_KEY, msgspec.msgpack.encode(offset)))
                self._written[p] = offset
            elif len(changes) == 1:
                continue  # only the operator's position, unchanged since nothing came
            out.append((p, changes))
        return out

    def write(self, changes: list[tuple[int, list[Change]]]) -> int:
        """Queue ``changes`` (from :meth:`changes`) to the changelog; how many records."""
        n = 0
        changelog = self.changelog
        if changelog is None:
            return n
        for p, records in changes:
            changelog.write(p, records)
            n += len(records)
        return n

    async def restore(self, partitions: Sequence[PartitionKey]) -> dict[PartitionKey, int]:
        """Rebuild the state of newly assigned ``partitions`` from the changelog; where the
        source should resume each one (the position its state covers)."""
        mine = [p for t, p in partitions if self.topic is None or t == self.topic]
        if not mine:
            return {}
        if self.changelog is None:
            self.operator.assign_partitions(mine)
            return {}
        changelog = self.changelog
        started = time.monotonic()
        starts: dict[PartitionKey, int] = {}
        # No collection while the state is read and rebuilt, and none over it afterwards:
        # the restored windows live until they close and hold no reference cycles, so they
        # are frozen (gc.freeze) before the collector is back on. Otherwise the first
        # collection walks every object the restore made, and every full collection walks
        # them again. Measured on 1,000,000 windows (bench/windows.py): 20.3 s, then 0.7 s
        # and 2.9 s in the next collections (2.9 s in every full one); this way 8.3 s, none.
        # Frozen objects are still freed by reference counting when their window closes;
        # only cyclic garbage made meanwhile (by other tasks) would stay.
        with bulk_load():
            stored = await changelog.read(mine)
            for p in mine:
                records = stored.pop(p, [])
                offset: int | None = None
                windows: list[Change] = []
                for key, value in records:
                    if key == OFFSET_KEY:
                        offset = None if value is None else _decode_offset(value)
                    else:
                        windows.append((key, value))
                del records
                if windows:
                    self.operator.restore_changes(p, windows)
                else:
                    self.operator.assign_partitions([p])
                del windows
                if offset is not None:
                    topic = self.topic or next(t for t, q in partitions if q == p)
                    starts[(topic, p)] = offset
                    self._written[p] = offset
            gc.freeze()
        self.restore_seconds = time.monotonic() - started
        log.info(
            "restored window state of partitions %s in %.3fs (%d windows open)",
            mine,
            self.restore_seconds,
            self.operator.live_states,
        )
        return starts

    def revoke(self, partitions: Sequence[PartitionKey]) -> None:
        """Drop the state of partitions this worker no longer holds (already written)."""
        held = set(self.operator.partitions)
        for _topic, p in partitions:
            if p in held:
                self.operator.drop(p)
                self._written.pop(p, None)
