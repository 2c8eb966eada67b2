"""Where records go once scored, or once set aside: sinks, dead letters, shed, late.

:class:`Outputs` writes and counts; it does not decide when a position is done. Each
write is handed a ``settle`` callback, called with the records that reached a terminal
state only after they were written (a refused output is terminal once dead-lettered, not
before).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from headrace.batch import event_times_of
from headrace.connectors.base import PartitionedSource, Sink, SinkContext
from headrace.errors import Stage
from headrace.observe.metrics import PipelineMetrics
from headrace.observe.stats import EngineStats
from headrace.record import BatchKind, FailedRecord, Record, ScoredBatch, WindowRecord
from headrace.runtime.acks import Acknowledgements, Settle
from headrace.runtime.order import Turn, WriteOrder
from headrace.runtime.state import PipelineError, RunState


@dataclass
class SinkBinding:
    """A sink, and optionally which outputs it takes (``keep(prediction) -> bool``)."""

    sink: Sink
    keep: Callable[[Any], bool] | None = None

    @property
    def name(self) -> str:
        return self.sink.name


def read_back_header(
    source: object, sinks: Sequence[SinkBinding], *, exactly_once: bool, windowed: bool, depth: int
) -> tuple[str, bytes] | None:
    """At-least-once from a partitioned source, every output written whole to a topic the
    source can read back (no alert filter): the header the outputs carry so that, after a
    crash, the records whose outputs were written are not written again; else ``None``.
    Windowed pipelines keep their own positions with their state: not for them."""
    if exactly_once or windowed or depth <= 0 or not sinks:
        return None
    if not isinstance(source, PartitionedSource):
        return None
    topics = [b.sink.read_back_topic for b in sinks]
    if any(b.keep is not None for b in sinks) or any(t is None for t in topics):
        return None
    return source.read_back_outputs([t for t in topics if t is not None], depth)


class Outputs:
    """The pipeline's sinks and its side outputs. ``level_of`` names a record's priority
    level, for the shed metrics."""

    def __init__(
        self,
        *,
        sinks: list[SinkBinding],
        dead_letter: Sink | None,
        shed_sink: Sink | None,
        late_sink: Sink | None,
        metrics: PipelineMetrics,
        stats: EngineStats,
        level_of: Callable[[Record], str],
        acks: Acknowledgements | None = None,
        inputs_as_read: bool = False,
        output_header: tuple[str, bytes] | None = None,
    ) -> None:
        self.sinks = sinks
        self.output_header = output_header
        self.inputs_as_read = inputs_as_read
        self.acks = acks
        self.dead_letter = dead_letter
        self.shed_sink = shed_sink
        self.late_sink = late_sink
        self.metrics = metrics
        self.level_of = level_of
        self.stats = stats

    def bind(self) -> None:
        """Give each sink that takes outputs what it may need of the pipeline."""
        for binding in self.sinks:

            async def set_aside(failed: list[FailedRecord], name: str = binding.name) -> None:
                await self.set_aside_written(name, failed)

            binding.sink.bind(
                SinkContext(
                    metrics=self.metrics,
                    set_aside=set_aside,
                    inputs_as_read=self.inputs_as_read,
                    output_header=self.output_header,
                )
            )

    async def set_aside_written(self, name: str, failed: list[FailedRecord]) -> None:
        """Outputs the sink ``name`` accepted and could not deliver after all: to the dead
        letters. Their records were settled when the sink accepted them, and their
        positions wait for the sink's next flush, which waits for this; the dead letters
        are flushed here, since a commit may have flushed their sink already."""
        if failed:
            self.stats.written[name] -= len(failed)
            await self.set_aside(failed, _already_settled)
            if self.dead_letter is not None:
                await self.dead_letter.flush()

    def all_sinks(self) -> list[Sink]:
        """Every sink once, side outputs included: what a commit flushes."""
        sinks = [b.sink for b in self.sinks]
        for extra in (self.dead_letter, self.shed_sink, self.late_sink):
            if extra is not None and all(extra is not s for s in sinks):
                sinks.append(extra)
        return sinks

    async def write(self, batch: ScoredBatch, settle: Settle) -> None:
        """Write a scored batch to every sink that takes its outputs, then settle it;
        outputs a sink refused for good are dead-lettered first."""
        n = len(batch)
        refused: dict[int, FailedRecord] = {}
        if n:
            written = self.stats.written
            for binding in self.sinks:
                out = batch
                if binding.keep is not None:
                    keep = binding.keep
                    out = batch.select([keep(p) for p in batch.predictions])
                    if len(out):
                        self._alerted(binding.name, out)
                failed = await binding.sink.write(out)
                written[binding.name] += len(out) - len(failed or ())
                for f in failed or ():  # an output this sink can never take
                    refused.setdefault(id(f.record), f)
            self._observe(batch, time.time())
        sinks = [b.sink for b in self.sinks]
        if refused:
            # Terminal once dead-lettered, not before: their positions wait for that.
            done = [r for r in batch.records if id(r) not in refused]
            self._settle(sinks, settle, done, len(done))
            await self.set_aside(list(refused.values()), settle)
            return
        self._settle(sinks, settle, batch.records, n)

    def _settle(
        self, sinks: Sequence[Sink], settle: Settle, records: Sequence[Record], scored: int
    ) -> None:
        """Settle now, or (at-least-once) once the sinks that acknowledge have them."""
        if self.acks is None:
            settle(records, scored)
        else:
            self.acks.settle(sinks, settle, records, scored)

    def _observe(self, batch: ScoredBatch, acked: float) -> None:
        records, n = batch.records, len(batch)
        latencies = acked - event_times_of(records)
        self.stats.latency.add(latencies)
        self.metrics.latency.observe_many(latencies)
        if batch.kind is BatchKind.WINDOWS:
            windows = cast(Sequence[WindowRecord], records)
            closed_at = np.fromiter((r.closed_at for r in windows), np.float64, n)
            self.metrics.window_output_delay.observe_many(acked - closed_at)

    def _alerted(self, sink: str, out: ScoredBatch) -> None:
        """Keep the latest outputs a filtered sink took (at most the last few of a batch:
        the deque keeps 20)."""
        recent = self.stats.recent_alerts
        at = time.time()
        tail = max(0, len(out) - (recent.maxlen or 20))
        for record, prediction in zip(
            out.records[tail:], list(out.predictions)[tail:], strict=True
        ):
            recent.append(
                {
                    "at": at,
                    "sink": sink,
                    "key": _plain(record.key),
                    "prediction": _plain(prediction),
                    "event_time": record.event_time,
                }
            )

    async def set_aside(self, failed: list[FailedRecord], settle: Settle) -> None:
        """Records that will not be scored: shed ones to the shed sink, ones no window
        took to the late sink (if any), the rest to the dead letters. Without a
        dead-letter sink a failed record stops the pipeline."""
        shed_records = [f for f in failed if f.stage == Stage.SHED]
        if shed_records:
            failed = [f for f in failed if f.stage != Stage.SHED]
            await self._write_shed(shed_records, settle)
        if self.late_sink is not None:
            rejected = [f for f in failed if f.stage == Stage.WINDOW]
            if rejected:
                failed = [f for f in failed if f.stage != Stage.WINDOW]
                await self.late_sink.write_failures(rejected)
                self._settle([self.late_sink], settle, [f.record for f in rejected], 0)
        if not failed:
            return
        if self.dead_letter is None:
            first = failed[0]
            r = first.record
            # The position (topic[partition]@offset, as `headrace audit` writes it), then
            # where and why, then the library's own message, then what to do.
            raise PipelineError(
                f"record {r.topic}[{r.partition}]@{r.offset} failed at stage {first.stage!r} "
                f"({first.error_type}): {first.error.rstrip('.')}. Configure a dead_letter "
                "sink to set such records aside and go on; nothing from this record on was "
                "committed."
            )
        await self.dead_letter.write_failures(failed)
        by = self.stats.failed_by
        for f in failed:
            self.metrics.records_failed.labels(f.stage).inc()
            by[f.stage, f.error_type] = by.get((f.stage, f.error_type), 0) + 1
        self.stats.records_failed += len(failed)
        self._settle([self.dead_letter], settle, [f.record for f in failed], 0)

    async def _write_shed(self, shed_records: list[FailedRecord], settle: Settle) -> None:
        assert self.shed_sink is not None  # a shedding policy comes with its sink
        await self.shed_sink.write_failures(shed_records)
        counter, level_of = self.metrics.records_shed, self.level_of
        for f in shed_records:
            counter.labels(f.error_type, level_of(f.record)).inc()
        self.stats.records_shed += len(shed_records)
        self._settle([self.shed_sink], settle, [f.record for f in shed_records], 0)


def _plain(value: Any) -> Any:
    """A key or prediction as JSON can show it (NumPy scalars and arrays included)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return tolist()
    if value is None or isinstance(value, str | int | float | bool | list | dict):
        return value
    return str(value)


def _already_settled(records: Sequence[Record], scored: int) -> None:
    """Records settled before: nothing more to do."""


class SideWrites:
    """Records set aside as they are read (they do not decode, no window takes them, they
    are shed on arrival) are written in a turn of their own, as a task, so that the reader
    goes on. A failure fails the run, and ``on_failure`` is called (to stop reading)."""

    def __init__(
        self,
        outputs: Outputs,
        order: WriteOrder,
        state: RunState,
        settle: Settle,
        on_failure: Callable[[], None],
    ) -> None:
        self.outputs = outputs
        self.order = order
        self.state = state
        self.settle = settle
        self.on_failure = on_failure
        self.tasks: set[asyncio.Task[None]] = set()

    def put(self, failed: list[FailedRecord]) -> None:
        # The turn is taken now: these records come before any batch formed after them.
        task = asyncio.create_task(self._write(failed, self.order.turn()))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _write(self, failed: list[FailedRecord], turn: Turn) -> None:
        try:
            async with turn:
                if self.state.fatal is None:
                    await self.outputs.set_aside(failed, self.settle)
        except Exception as exc:
            self.state.fail(exc)
            self.on_failure()

    async def drain(self) -> None:
        """Return once every write started (and any started meanwhile) is done."""
        while self.tasks:
            await asyncio.gather(*self.tasks)

    def cancel(self) -> None:
        for task in self.tasks:
            task.cancel()
