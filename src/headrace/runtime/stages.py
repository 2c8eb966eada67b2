"""What happens to decoded records between reading and the model: two stages, one interface.

An :class:`EventStage` batches events as they are (in priority lanes, shedding under its
policy); a :class:`WindowedStage` folds them into event-time windows and batches the
windows the watermark closes. The engine calls the same methods on either, so it never
asks which one it runs; the batches a stage forms are all of its :attr:`~PipelineStage.kind`.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Protocol

from headrace.errors import ErrorType
from headrace.observe.metrics import PipelineMetrics
from headrace.record import BatchKind, FailedRecord, Record, WindowRecord
from headrace.runtime.offsets import OffsetTracker
from headrace.runtime.priority import Priorities, ShedPolicy, shed
from headrace.windows.stage import WindowStage


class Intake(Protocol):
    """What a stage hands its results to (the engine)."""

    def put(self, records: Sequence[Record], lane: int) -> None:
        """Batch these for the model, in ``lane``."""

    def set_aside(self, failed: list[FailedRecord]) -> None:
        """Write these to a side output; they will not be scored."""

    def settle_read(self, records: Sequence[Record], size: int | None) -> None:
        """These records are finished without a batch (window state holds them)."""

    def admit(self, n: int) -> None:
        """``n`` new items (closed windows) are in flight."""


class PipelineStage(ABC):
    """Takes decoded chunks; forms what the model scores."""

    kind: BatchKind
    lanes: int = 1

    async def open(self) -> None:  # noqa: B027 - optional hook
        """Before the first chunk (window state: its changelog)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """After the last commit."""

    @abstractmethod
    def take(self, chunk: Sequence[Record], size: int | None, fraction: float) -> None:
        """A decoded chunk; ``size`` its bytes if it is whole as admitted, ``fraction`` how
        full the pipeline was before it."""

    def end_of_input(self) -> None:  # noqa: B027 - optional hook
        """The source ended (not a stop)."""

    async def tick(self, may_close: Callable[[], bool]) -> None:  # noqa: B027
        """Run until cancelled: what time alone changes."""

    def prepare(self, records: Sequence[Record]) -> tuple[Sequence[Record], list[FailedRecord]]:
        """A formed batch, before features: the records to score, and those set aside."""
        return records, []

    @abstractmethod
    def settled(self, items: Sequence[Record]) -> None:
        """Items of a scored batch reached a terminal state."""


class EventStage(PipelineStage):
    """Events batched as read: decode, priorities and shedding."""

    kind = BatchKind.EVENTS

    def __init__(
        self,
        intake: Intake,
        tracker: OffsetTracker,
        *,
        priorities: Priorities | None = None,
        shedding: ShedPolicy | None = None,
    ) -> None:
        self.intake = intake
        self.tracker = tracker
        self.priorities = priorities
        self.shedding = shedding
        self.lanes = len(priorities.levels) if priorities is not None else 1
        self._plain = priorities is None and shedding is None

    def take(self, chunk: Sequence[Record], size: int | None, fraction: float) -> None:
        if self._plain:
            self.intake.put(chunk, 0)
            return
        shedding, priorities = self.shedding, self.priorities
        lanes = priorities.split(chunk) if priorities is not None else [[], chunk]
        for lane, records in enumerate(lanes):
            if not records:
                continue
            reason = shedding.on_arrival(lane, fraction) if shedding is not None else None
            if reason is not None:
                self.intake.set_aside([shed(r, ErrorType.SHED_IN_FLIGHT, reason) for r in records])
            else:
                # Without priorities there is one lane; lane 1 stands for "sheddable".
                self.intake.put(records, lane if priorities is not None else 0)

    def prepare(self, records: Sequence[Record]) -> tuple[Sequence[Record], list[FailedRecord]]:
        shedding = self.shedding
        if shedding is None or shedding.max_event_age is None:
            return records, []
        old = shedding.too_old(records, self.lane_of)
        if not old:
            return records, []
        now, limit = time.time(), shedding.max_event_age
        drop = set(old)
        failed = [
            shed(
                records[i],
                ErrorType.SHED_DEADLINE,
                f"event age {now - records[i].event_time:.3g}s beyond the deadline of {limit}s",
            )
            for i in old
        ]
        return [r for i, r in enumerate(records) if i not in drop], failed

    def lane_of(self, value: object) -> int:
        # Without priorities every record is in one lane that a shedding policy may shed.
        return self.priorities.lane_of(value) if self.priorities is not None else 1

    def level_of(self, record: Record) -> str:
        """The priority level a shed record had, for the shed metrics."""
        if self.priorities is None:
            return "none"
        return self.priorities.levels[self.priorities.lane_of(record.value)]

    def settled(self, items: Sequence[Record]) -> None:
        self.tracker.done(items)


class WindowedStage(PipelineStage):
    """Events folded into windows; closed windows batched (their offsets are no source
    positions: the records they hold were finished when the state took them)."""

    kind = BatchKind.WINDOWS

    def __init__(
        self,
        intake: Intake,
        windows: WindowStage,
        metrics: PipelineMetrics,
        *,
        tick_interval: float,
    ) -> None:
        self.intake = intake
        self.windows = windows
        self.metrics = metrics
        self.tick_interval = tick_interval

    async def open(self) -> None:
        await self.windows.open()

    async def close(self) -> None:
        await self.windows.close()

    def take(self, chunk: Sequence[Record], size: int | None, fraction: float) -> None:
        """Records a window took are finished (the state holds them now), the others go
        to the side output, closed windows to the model."""
        closed, rejected = self.windows.absorb(chunk, time.time())
        if rejected:
            self.intake.set_aside(rejected)
            for f in rejected:
                self.metrics.window_rejected.labels(f.error_type).inc()
            taken = {id(f.record) for f in rejected}
            chunk = [r for r in chunk if id(r) not in taken]
            size = None
        self.intake.settle_read(chunk, size)
        self._emit(closed)

    def end_of_input(self) -> None:
        # The end of the input (a file, a generator): every window is complete.
        self._emit(self.windows.close_all())

    async def tick(self, may_close: Callable[[], bool]) -> None:
        """Close windows as time passes without records: a partition idle for longer than
        its timeout stops holding the watermark back, so silent keys still get scored."""
        windows, metrics = self.windows, self.metrics
        while True:
            await asyncio.sleep(self.tick_interval)
            if may_close():
                self._emit(windows.advance(time.time()))
            op = windows.operator
            metrics.windows_open.set(op.live_states)
            metrics.watermark.set(op.watermark or 0.0)

    def _emit(self, closed: list[WindowRecord]) -> None:
        if closed:
            self.intake.admit(len(closed))
            self.metrics.windows_closed.inc(len(closed))
            self.intake.put(list[Record](closed), 0)

    def settled(self, items: Sequence[Record]) -> None:
        self.windows.finished += len(items)
