"""The ledger: records from the moment they are read to their terminal state.

Every record read is admitted to the in-flight bounds and tracked for its source position;
when it is written, set aside or taken into window state, it is *settled* here, exactly
once: released from the bounds, marked done for its position (or, for a closed window,
counted as finished by its stage), counted, and whoever waits on progress (a commit, a
revocation) is woken.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from headrace.batch import parts_of
from headrace.observe.metrics import PipelineMetrics
from headrace.observe.stats import EngineStats
from headrace.record import Record
from headrace.runtime.backpressure import Backpressure
from headrace.runtime.offsets import OffsetTracker
from headrace.runtime.stages import PipelineStage
from headrace.runtime.state import RunState


class Ledger:
    """Settles records. ``count_bytes``: whether the in-flight bound counts bytes (of
    records read as bytes)."""

    def __init__(
        self,
        *,
        tracker: OffsetTracker,
        backpressure: Backpressure,
        stats: EngineStats,
        metrics: PipelineMetrics,
        state: RunState,
        finished: asyncio.Event,
        count_bytes: bool,
    ) -> None:
        self.tracker = tracker
        self.backpressure = backpressure
        self.stats = stats
        self.metrics = metrics
        self.state = state
        self.finished = finished
        self.count_bytes = count_bytes
        self.stage: PipelineStage | None = None  # set once the stage exists

    def size(self, records: Sequence[Record]) -> int:
        """Encoded bytes of records read as bytes, if the bound counts them."""
        if not self.count_bytes:
            return 0
        parts = parts_of(records)
        if parts is not None:  # no record is built
            return sum([sum(map(len, p.raws)) for p in parts if p.raws is not None])
        return sum([len(r.raw) for r in records if r.raw is not None])

    def read(self, records: Sequence[Record], size: int | None = None) -> None:
        """Records as read are finished (written aside, or taken into window state);
        ``size``: their bytes, if the caller knows them."""
        self.tracker.done(records)
        self._release(records, 0, size)

    def set_aside(self, records: Sequence[Record], scored: int) -> None:
        """Records read and set aside (the form :class:`~headrace.runtime.outputs.Outputs`
        calls back with)."""
        self.read(records)

    def scored(self, items: Sequence[Record], scored: int) -> None:
        """Items of a scored batch are written (``scored`` of them) or set aside."""
        assert self.stage is not None
        self.stage.settled(items)
        self._release(items, scored, None)

    def _release(self, records: Sequence[Record], scored: int, size: int | None) -> None:
        self.backpressure.release(records, self.size(records) if size is None else size)
        if scored:
            stats = self.stats
            stats.records_out += scored
            stats.batches += 1
            stats.batched_records += scored
            self.metrics.records_out.inc(scored)
            self.metrics.batch_size.observe(scored)
        self.finished.set()
        self.state.wake()
