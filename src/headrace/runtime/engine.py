"""The engine: source -> decode -> batcher -> model -> sinks, with commits and shutdown.

One engine runs one pipeline on one event loop. The loop reads, batches, writes and
commits; models run in executor threads (or are awaited, if asynchronous), so I/O keeps
flowing while a batch computes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np

from headrace.connectors.base import PartitionKey, Sink, Source
from headrace.models.base import Model, model_ref
from headrace.models.featurizer import Featurizer
from headrace.observe.metrics import PipelineMetrics
from headrace.observe.stats import EngineStats
from headrace.record import FailedRecord, Record, ScoredBatch, WindowRecord
from headrace.runtime.batcher import Batcher
from headrace.runtime.decode import JsonDecoder, failure
from headrace.runtime.delivery import AtLeastOnce, Delivery
from headrace.runtime.flow import FlowControl, PartitionShares
from headrace.runtime.offsets import OffsetTracker
from headrace.runtime.priority import SHED_STAGE, Priorities, ShedPolicy, shed
from headrace.runtime.rollout import Rollout
from headrace.runtime.scoring import FailurePolicy, ModelCaller
from headrace.windows.operator import REJECT_STAGE
from headrace.windows.stage import WindowStage

log = logging.getLogger("headrace")


class PipelineError(RuntimeError):
    """The pipeline stopped because something it cannot skip went wrong."""


class CommitPointTimeout(TimeoutError):
    """A windowed commit found no moment when every closed window was written."""


@dataclass(frozen=True)
class EngineSettings:
    """How the engine batches, bounds and commits. Times are in seconds."""

    max_batch_size: int = 256
    max_wait: float = 0.01
    max_concurrency: int = 2
    max_in_flight: int = 10_000
    max_in_flight_bytes: int | None = 64 << 20
    resume_at: float = 0.5
    commit_interval: float = 1.0
    shutdown_timeout: float = 30.0
    revoke_timeout: float = 60.0
    # Windowed pipelines: how often time alone may close windows (idle partitions), and
    # how long a periodic commit waits for a commit point before trying again later.
    window_tick: float = 0.25
    commit_point_timeout: float = 10.0


@dataclass
class SinkBinding:
    """A sink, and optionally which outputs it takes (``keep(prediction) -> bool``)."""

    sink: Sink
    keep: Callable[[Any], bool] | None = None

    @property
    def name(self) -> str:
        return self.sink.name


@dataclass
class RunSummary:
    """What a run did, for the command line and for tests."""

    records_in: int
    records_out: int
    records_failed: int
    batches: int
    mean_batch_size: float
    elapsed: float
    latency_p50: float
    latency_p99: float
    written: dict[str, int]
    committed: dict[PartitionKey, int] = field(default_factory=dict)
    stopped: bool = False
    records_shed: int = 0
    peak_in_flight: int = 0
    peak_in_flight_bytes: int = 0

    @property
    def records_per_second(self) -> float:
        return self.records_out / self.elapsed if self.elapsed > 0 else 0.0


class Engine:
    """Runs one pipeline until its source ends or :meth:`stop` is called.

    Guarantees, each kept by a test:

    * a source position is committed only after every record below it was written to every
      sink (after their ``flush``) or dead-lettered;
    * batches are written in the order they were formed, so per key, outputs keep source
      order;
    * a batch is scored by one model; when it raises, the batch is bisected so that only
      the records that fail are dead-lettered, after retries; while the model fails on
      everything (down, not poisoned), nothing is dead-lettered and reading pauses;
    * reading pauses when ``max_in_flight`` records (or ``max_in_flight_bytes``) are
      between source and sinks, and resumes below ``resume_at`` of that (sources that
      keep polling) or below the bound (the others);
    * a record is shed only under the ``shedding`` policy, and then written to the shed
      sink with its reason.
    """

    def __init__(
        self,
        *,
        source: Source,
        model: Model | None,
        sinks: Sequence[Sink | SinkBinding],
        featurizer: Featurizer | None = None,
        decoder: JsonDecoder | None = None,
        dead_letter: Sink | None = None,
        settings: EngineSettings | None = None,
        metrics: PipelineMetrics | None = None,
        delivery: Delivery | None = None,
        priorities: Priorities | None = None,
        shedding: ShedPolicy | None = None,
        shed_sink: Sink | None = None,
        failures: FailurePolicy | None = None,
        rollout: Rollout | None = None,
        windows: WindowStage | None = None,
        late_sink: Sink | None = None,
        name: str = "pipeline",
    ) -> None:
        if not sinks:
            raise ValueError("a pipeline needs at least one sink")
        if (model is None) == (rollout is None):
            raise ValueError("give a model, or a rollout that manages versions, not both")
        if shedding is not None and shed_sink is None:
            raise ValueError("a shedding policy needs a shed sink to write shed records to")
        if windows is not None and (priorities is not None or shedding is not None):
            raise ValueError(
                "priorities and shedding apply to events, not to windows: a windowed "
                "pipeline takes neither"
            )
        self.name = name
        self.source = source
        self._model = model
        self.rollout = rollout
        self.featurizer = featurizer
        self.decoder = decoder or JsonDecoder()
        self.sinks = [s if isinstance(s, SinkBinding) else SinkBinding(s) for s in sinks]
        self.dead_letter = dead_letter
        self.settings = settings or EngineSettings()
        self.delivery = delivery or AtLeastOnce()
        self.metrics = metrics or PipelineMetrics()
        self.stats = EngineStats(written={b.name: 0 for b in self.sinks})
        self.tracker = OffsetTracker()
        s = self.settings
        self.flow = FlowControl(s.max_in_flight, s.max_in_flight_bytes, s.resume_at)
        self.priorities = priorities
        self.shedding = shedding
        self.shed_sink = shed_sink
        self.windows = windows
        self.late_sink = late_sink
        self.caller = ModelCaller(
            policy=failures or FailurePolicy(),
            metrics=self.metrics,
            stats=self.stats,
            on_breaker=lambda down: self._pause("model-down", down),
        )
        self._decode = None if source.decoded else self.decoder.decode
        self._count_bytes = s.max_in_flight_bytes is not None and not source.decoded
        # Sources that pause partitions one by one get a fair share each (see
        # PartitionShares); ``_held`` are the partitions paused for holding theirs.
        self._shares = (
            PartitionShares(s.max_in_flight, s.resume_at)
            if source.keeps_polling and windows is None  # windows, not events, are in flight
            else None
        )
        self._held: set[PartitionKey] = set()
        self._pause_reasons: set[str] = set()
        self._resumed = asyncio.Event()
        self._resumed.set()
        # Closed while a windowed commit waits for a commit point: no records are taken
        # in and no windows closed until it has its snapshot.
        self._gate = asyncio.Event()
        self._gate.set()
        self._aside: set[asyncio.Task[None]] = set()
        self._executor: ThreadPoolExecutor | None = None
        self._reader: asyncio.Task[None] | None = None
        self._write_turn: asyncio.Future[None] | None = None
        self._stopping = False
        self._running = False
        self._fatal: BaseException | None = None
        self._committed: dict[PartitionKey, int] = {}
        self._waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []
        self._finished = asyncio.Event()
        self._committer_stop = asyncio.Event()
        self._commit_lock = asyncio.Lock()

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def model(self) -> Model:
        """The model serving now."""
        if self.rollout is not None:
            serving = self.rollout.manager.serving
            if serving is None:
                raise RuntimeError("the model is loaded when the pipeline starts")
            return serving
        assert self._model is not None
        return self._model

    @model.setter
    def model(self, model: Model) -> None:
        if self.rollout is not None:
            raise ValueError("versions come from the rollout's model source")
        self._model = model

    def check_models(self) -> None:
        """Look for new model versions now (the admin call)."""
        if self.rollout is not None:
            for manager in self.rollout.managers():
                manager.check_now()

    @property
    def stopping(self) -> bool:
        return self._stopping

    @property
    def healthy(self) -> bool:
        return self._running and not self._stopping and self._fatal is None

    def stop(self) -> None:
        """Ask for a graceful stop: read no more, finish what is in flight, commit."""
        if self._stopping:
            return
        self._stopping = True
        log.info("stopping %s: finishing in-flight records", self.name)
        self.caller.stop()
        if self._reader is not None:
            self._reader.cancel()

    async def run(self) -> RunSummary:
        """Run to the end of the source, or until stopped. Raises :class:`PipelineError`."""
        settings = self.settings
        # Spare threads: a call that timed out keeps its thread until the model returns.
        self._executor = ThreadPoolExecutor(
            settings.max_concurrency + 2, thread_name_prefix="headrace-infer"
        )
        self.caller.executor = self._executor
        self.stats = EngineStats(written={b.name: 0 for b in self.sinks})
        self.caller.stats = self.stats
        opened: list[Sink | Source] = []
        committer: asyncio.Task[None] | None = None
        observer: asyncio.Task[None] | None = None
        watchers: list[asyncio.Task[None]] = []
        shadow_sink = None
        shadow_threads: ThreadPoolExecutor | None = None
        changelog_open = False
        ticker: asyncio.Task[None] | None = None
        try:
            if self.rollout is not None:
                for manager in self.rollout.managers():
                    await manager.start()  # a version that cannot load stops the start
                    watchers.append(asyncio.create_task(manager.watch()))
                if self.rollout.shadow is not None:
                    shadow_sink = self.rollout.shadow.sink
                    # Threads of its own: a stuck shadow takes none of the serving
                    # model's, and the end of the run does not wait for it.
                    shadow_threads = ThreadPoolExecutor(
                        self.rollout.shadow.max_batches_in_flight,
                        thread_name_prefix="headrace-shadow",
                    )
                    self.rollout.executor = shadow_threads
            for sink in self._all_sinks():
                await sink.open()
                opened.append(sink)
            if shadow_sink is not None:
                # Opened, written and closed, but never flushed before a commit: the
                # shadow does not hold the pipeline back.
                await shadow_sink.open()
            if self.windows is not None:
                await self.windows.open()
                changelog_open = True
            self.source.bind(self)
            await self.source.open()
            opened.append(self.source)
            self._running = True
            batcher: Batcher[Record] = Batcher(
                self._score,
                max_size=settings.max_batch_size,
                max_wait=settings.max_wait,
                max_concurrency=settings.max_concurrency,
                lanes=len(self.priorities.levels) if self.priorities else 1,
            )
            batches = asyncio.create_task(batcher.run(), name="headrace-batcher")
            self._reader = asyncio.create_task(self._read(batcher), name="headrace-reader")
            committer = asyncio.create_task(self._commit_every(settings.commit_interval))
            observer = asyncio.create_task(self._observe_every(1.0))
            if self.windows is not None:
                ticker = asyncio.create_task(self._tick_windows(batcher, settings.window_tick))
            self._committer_stop.clear()
            await asyncio.wait({self._reader, batches}, return_when=asyncio.FIRST_COMPLETED)
            if batches.done() and not self._reader.done():
                self._reader.cancel()
            try:
                await self._reader
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # run() itself is being cancelled, not just the reader
            except Exception as exc:
                self._fatal = self._fatal or exc
            # Even after a failure, let batches in flight finish: their records may complete
            # and be committed, and nothing they hold is committed otherwise.
            batcher.close()
            await self._drain(batches)
            if self.rollout is not None:
                await self.rollout.drain_shadows()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._fatal = self._fatal or exc
        finally:
            self._running = False
            self.caller.close()
            for task in watchers:
                task.cancel()
            if observer is not None:
                observer.cancel()
            if ticker is not None:
                ticker.cancel()
            if committer is not None:
                # Let a commit in progress finish (cancelling it could leave a transaction
                # half done); the final commit follows.
                self._committer_stop.set()
                self._finished.set()
                try:
                    await committer
                except Exception as exc:
                    self._fatal = self._fatal or exc
            await self._final_commit(opened)
            if shadow_sink is not None:
                opened.insert(0, shadow_sink)
            for part in reversed(opened):
                try:
                    await part.close()
                except Exception as exc:
                    log.error("closing %s failed: %s", part.name, exc)
            if changelog_open:
                assert self.windows is not None
                try:
                    await self.windows.close()
                except Exception as exc:
                    log.error("closing the window changelog failed: %s", exc)
            self._executor.shutdown(wait=self._fatal is None, cancel_futures=True)
            if shadow_threads is not None:
                shadow_threads.shutdown(wait=False, cancel_futures=True)
        if self._fatal is not None:
            if isinstance(self._fatal, PipelineError):
                raise self._fatal
            raise PipelineError(f"{type(self._fatal).__name__}: {self._fatal}") from self._fatal
        return self.summary()

    async def _drain(self, batches: asyncio.Task[None]) -> None:
        timeout = self.settings.shutdown_timeout
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(batches)
                while self._aside:
                    await asyncio.gather(*self._aside)
        except TimeoutError:
            batches.cancel()
            for task in self._aside:
                task.cancel()
            raise PipelineError(
                f"in-flight batches did not finish within shutdown_timeout={timeout}s; "
                "their records were not committed and will be read again"
            ) from None

    def summary(self) -> RunSummary:
        s = self.stats
        return RunSummary(
            records_in=s.records_in,
            records_out=s.records_out,
            records_failed=s.records_failed,
            batches=s.batches,
            mean_batch_size=s.mean_batch_size,
            elapsed=s.elapsed,
            latency_p50=s.latency.percentile(50),
            latency_p99=s.latency.percentile(99),
            written=dict(s.written),
            committed=dict(self._committed),
            stopped=self._stopping,
            records_shed=s.records_shed,
            peak_in_flight=self.flow.peak,
            peak_in_flight_bytes=self.flow.peak_bytes,
        )

    def _all_sinks(self) -> list[Sink]:
        sinks = [b.sink for b in self.sinks]
        for extra in (self.dead_letter, self.shed_sink, self.late_sink):
            if extra is not None and all(extra is not s for s in sinks):
                sinks.append(extra)
        return sinks

    # -- reading -----------------------------------------------------------------------

    async def _read(self, batcher: Batcher[Record]) -> None:
        flow, tracker, stats, source = self.flow, self.tracker, self.stats, self.source
        records_in = self.metrics.records_in
        decode, priorities = self._decode, self.priorities
        in_flight, in_flight_bytes = self.metrics.in_flight, self.metrics.in_flight_bytes
        windows, gate = self.windows, self._gate
        async for chunk in source.chunks():
            if not gate.is_set():
                await gate.wait()  # a commit is taking its snapshot of the window state
            n = len(chunk)
            # How full the pipeline was before this chunk: what arrival shedding judges by,
            # so that one large chunk does not shed itself.
            fraction = flow.fraction()
            tracker.track(chunk)
            size = _size(chunk) if self._count_bytes else 0
            flow.admit(n, size)
            stats.records_in += n
            records_in.inc(n)
            in_flight.set(flow.count)
            in_flight_bytes.set(flow.bytes)
            if self._shares is not None:
                self._shares.admit(chunk)
                self._hold_full_partitions()
            if decode is not None:
                # Decoding before batching lets priorities read a field; a record that does
                # not decode is set aside at once, without waiting for a batch.
                chunk, failed = decode(chunk)
                if failed:
                    self._set_aside(failed)
            if windows is not None:
                # The whole chunk's size, unless decoding set records aside.
                self._window(batcher, windows, chunk, size if len(chunk) == n else None)
            elif priorities is None and self.shedding is None:
                batcher.put(chunk)
            else:
                self._put_by_priority(batcher, chunk, fraction)
            if flow.over_high:
                self._pause("in-flight", True)
            if not source.keeps_polling:
                await self._resumed.wait()
        if windows is not None and not self._stopping:
            # The end of the input (a file, a generator): every window is complete.
            self._emit_windows(batcher, windows.close_all())

    def _window(
        self,
        batcher: Batcher[Record],
        windows: WindowStage,
        chunk: list[Record],
        size: int | None,
    ) -> None:
        """Fold a decoded chunk into the windows: records a window took are finished (the
        state holds them now), the others go to the side output, closed windows to the
        model. ``size``: the chunk's bytes, as admitted, when known."""
        closed, rejected = windows.absorb(chunk, time.time())
        if rejected:
            self._set_aside(rejected)
            for f in rejected:
                self.metrics.window_rejected.labels(f.error_type).inc()
            taken = {id(f.record) for f in rejected}
            chunk = [r for r in chunk if id(r) not in taken]
            size = None
        self._finish(chunk, scored=0, size=size)
        self._emit_windows(batcher, closed)

    def _emit_windows(self, batcher: Batcher[Record], closed: list[WindowRecord]) -> None:
        if closed:
            self.flow.admit(len(closed), 0)
            self.metrics.windows_closed.inc(len(closed))
            batcher.put(list[Record](closed))
            if self.flow.over_high:
                self._pause("in-flight", True)

    async def _tick_windows(self, batcher: Batcher[Record], interval: float) -> None:
        """Close windows as time passes without records: a partition idle for longer than
        its timeout stops holding the watermark back, so silent keys still get scored."""
        windows, gate, metrics = self.windows, self._gate, self.metrics
        assert windows is not None
        while True:
            await asyncio.sleep(interval)
            if gate.is_set() and not self._stopping:
                self._emit_windows(batcher, windows.advance(time.time()))
            op = windows.operator
            metrics.windows_open.set(op.live_states)
            metrics.watermark.set(op.watermark or 0.0)

    def _put_by_priority(
        self, batcher: Batcher[Record], chunk: list[Record], fraction: float
    ) -> None:
        shedding, priorities = self.shedding, self.priorities
        lanes = priorities.split(chunk) if priorities is not None else [[], chunk]
        for lane, records in enumerate(lanes):
            if not records:
                continue
            reason = shedding.on_arrival(lane, fraction) if shedding is not None else None
            if reason is not None:
                self._set_aside([shed(r, "in-flight", reason) for r in records])
            else:
                # Without priorities there is one lane; lane 1 stands for "sheddable".
                batcher.put(records, lane if priorities is not None else 0)

    def _hold_full_partitions(self) -> None:
        assert self._shares is not None
        full = self._shares.full(len(self.source.assigned())) - self._held
        if full:
            self._held |= full
            self.source.pause_partitions(full, True)

    def _release_drained_partitions(self) -> None:
        assert self._shares is not None
        free = self._shares.drained(self._held, len(self.source.assigned()))
        if free:
            self._held -= free
            self.source.pause_partitions(free, False)

    def _pause(self, reason: str, on: bool) -> None:
        reasons = self._pause_reasons
        was = bool(reasons)
        if on == (reason in reasons):
            return
        if on:
            reasons.add(reason)
        else:
            reasons.discard(reason)
        self.metrics.source_paused.labels(reason).set(1 if on else 0)
        now = bool(reasons)
        if now == was:
            # Already paused for another reason: say so, the reason matters to whoever reads.
            state = "also" if on else "no longer"
            log.info("reading stays paused: %s %s (%s)", state, reason, ", ".join(sorted(reasons)))
            return
        # A plain source pauses and resumes with every batch under load: not worth a line.
        quiet = reason == "in-flight" and not self.source.keeps_polling
        (log.debug if quiet else log.info)(
            "%s reading: %s", "pausing" if now else "resuming", reason
        )
        if now:
            self._resumed.clear()
        else:
            self._resumed.set()
        if self.source.keeps_polling:
            self.source.set_paused(now)

    # -- scoring -----------------------------------------------------------------------

    async def _score(self, records: list[Record]) -> None:
        """Score one batch and write it; the batcher runs this as a task per batch."""
        previous, mine = self._take_turn()
        try:
            failed: list[FailedRecord] = []
            shedding = self.shedding
            if shedding is not None and shedding.max_event_age is not None:
                records, failed = self._shed_old(shedding, records)
            inputs: Any
            if self.featurizer is not None:
                inputs, bad = self.featurizer.transform([r.value for r in records])
                if bad:
                    skip = {i for i, _ in bad}
                    failed += [failure(records[i], "validate", msg) for i, msg in bad]
                    records = [r for i, r in enumerate(records) if i not in skip]
            else:
                inputs = [r.value for r in records]
            batches: list[ScoredBatch] = []
            if records and self.rollout is not None:
                # Each version's records are a batch of their own: none mixes versions.
                batches, model_failed = await self.rollout.score(self.caller, records, inputs)
                failed.extend(model_failed)
            elif records:
                model = self.model  # one model for the whole batch, whatever happens meanwhile
                scored, predictions, model_failed = await self.caller.score(model, records, inputs)
                failed.extend(model_failed)
                batches.append(ScoredBatch(scored, predictions, model_ref(model), time.time()))
            if previous is not None:
                await previous  # write in batch order: per key, outputs keep source order
            if self._fatal is not None:
                return
            for batch in batches:
                await self._write(batch)
            if failed:
                await self._dead_letter(failed)
            if self.rollout is not None and batches:
                self.rollout.start_shadow(records, inputs, batches)
        except BaseException as exc:
            self._fatal = self._fatal or exc
            self._wake_waiters()
            raise
        finally:
            mine.set_result(None)

    def _shed_old(
        self, shedding: ShedPolicy, records: list[Record]
    ) -> tuple[list[Record], list[FailedRecord]]:
        lane_of = self.priorities.lane_of if self.priorities is not None else _one_lane
        old = shedding.too_old(records, lane_of)
        if not old:
            return records, []
        now, limit = time.time(), shedding.max_event_age
        drop = set(old)
        failed = [
            shed(
                records[i],
                "deadline",
                f"event age {now - records[i].event_time:.3g}s beyond the deadline of {limit}s",
            )
            for i in old
        ]
        return [r for i, r in enumerate(records) if i not in drop], failed

    def _take_turn(self) -> tuple[asyncio.Future[None] | None, asyncio.Future[None]]:
        """A place in the write order: await the first, resolve the second when written."""
        loop = asyncio.get_running_loop()
        previous, mine = self._write_turn, loop.create_future()
        self._write_turn = mine
        return previous, mine

    def _set_aside(self, failed: list[FailedRecord]) -> None:
        """Write records that will not be scored (dead letters, shed) in a turn of their
        own, so the reader goes on."""
        task = asyncio.create_task(self._write_aside(failed))
        self._aside.add(task)
        task.add_done_callback(self._aside.discard)

    async def _write_aside(self, failed: list[FailedRecord]) -> None:
        previous, mine = self._take_turn()
        try:
            if previous is not None:
                await previous
            if self._fatal is None:
                await self._dead_letter(failed)
        except Exception as exc:
            self._fatal = self._fatal or exc
            self._wake_waiters()
            if self._reader is not None:
                self._reader.cancel()
        finally:
            mine.set_result(None)

    # -- writing -----------------------------------------------------------------------

    async def _write(self, batch: ScoredBatch) -> None:
        n = len(batch)
        if n:
            written = self.stats.written
            for binding in self.sinks:
                out = batch
                if binding.keep is not None:
                    keep = binding.keep
                    out = batch.select([keep(p) for p in batch.predictions])
                await binding.sink.write(out)
                written[binding.name] += len(out)
            acked = time.time()
            records = batch.records
            latencies = acked - np.fromiter((r.event_time for r in records), np.float64, n)
            self.stats.latency.add(latencies)
            self.metrics.latency.observe_many(latencies)
            if type(records[0]) is WindowRecord:  # a batch holds windows or events, never both
                windows = cast(Sequence[WindowRecord], records)
                closed_at = np.fromiter((r.closed_at for r in windows), np.float64, n)
                self.metrics.window_output_delay.observe_many(acked - closed_at)
        self._finish(batch.records, scored=n)

    async def _dead_letter(self, failed: list[FailedRecord]) -> None:
        shed_records = [f for f in failed if f.stage == SHED_STAGE]
        if shed_records:
            failed = [f for f in failed if f.stage != SHED_STAGE]
            await self._write_shed(shed_records)
        if self.late_sink is not None:
            rejected = [f for f in failed if f.stage == REJECT_STAGE]
            if rejected:
                failed = [f for f in failed if f.stage != REJECT_STAGE]
                await self.late_sink.write_failures(rejected)
                self._finish([f.record for f in rejected], scored=0)
        if not failed:
            return
        if self.dead_letter is None:
            first = failed[0]
            r = first.record
            raise PipelineError(
                f"record {r.topic}[{r.partition}]@{r.offset} failed at stage {first.stage!r}: "
                f"{first.error_type}: {first.error}. Configure a dead_letter sink to set such "
                "records aside and go on; nothing after it was committed."
            )
        await self.dead_letter.write_failures(failed)
        for f in failed:
            self.metrics.records_failed.labels(f.stage).inc()
        self.stats.records_failed += len(failed)
        self._finish([f.record for f in failed], scored=0)

    async def _write_shed(self, shed_records: list[FailedRecord]) -> None:
        assert self.shed_sink is not None  # a shedding policy comes with its sink
        await self.shed_sink.write_failures(shed_records)
        levels = self.priorities.levels if self.priorities is not None else None
        lane_of = self.priorities.lane_of if self.priorities is not None else _one_lane
        counter = self.metrics.records_shed
        for f in shed_records:
            level = levels[lane_of(f.record.value)] if levels is not None else "none"
            counter.labels(f.error_type, level).inc()
        self.stats.records_shed += len(shed_records)
        self._finish([f.record for f in shed_records], scored=0)

    def _finish(self, records: Sequence[Record], *, scored: int, size: int | None = None) -> None:
        """``records`` reached a terminal state; ``size``: their bytes, if the caller
        knows them (else they are summed again)."""
        windows = self.windows
        if windows is not None and records and type(records[0]) is WindowRecord:
            windows.finished += len(records)  # windows have no source position to commit
        else:
            self.tracker.done(records)
        flow = self.flow
        if size is None:
            size = _size(records) if self._count_bytes else 0
        flow.release(len(records), size)
        if "in-flight" in self._pause_reasons and (
            # Hysteresis is for sources whose pause costs something (a Kafka consumer
            # drops what it prefetched): the others resume as soon as there is room,
            # which keeps the records they read close to when they are scored.
            flow.below_low if self.source.keeps_polling else not flow.over_high
        ):
            self._pause("in-flight", False)
        if self._shares is not None:
            self._shares.release(records)
            if self._held:
                self._release_drained_partitions()
        stats = self.stats
        if scored:
            stats.records_out += scored
            stats.batches += 1
            stats.batched_records += scored
            self.metrics.records_out.inc(scored)
            self.metrics.batch_size.observe(scored)
        self.metrics.in_flight.set(flow.count)
        self.metrics.in_flight_bytes.set(flow.bytes)
        self._finished.set()
        if self._waiters:
            self._wake_waiters()

    # -- observing -------------------------------------------------------------------------

    async def _observe_every(self, interval: float) -> None:
        """Gauges that are read, not counted: lag and paused partitions."""
        metrics, source = self.metrics, self.source
        while True:
            await asyncio.sleep(interval)
            try:
                lag = await source.lag()
            except Exception as exc:  # lag is for watching; never stop the pipeline for it
                log.debug("reading lag failed: %s", exc)
                continue
            for (topic, partition), (records, seconds) in lag.items():
                metrics.lag_records.labels(topic, str(partition)).set(records)
                metrics.lag_seconds.labels(topic, str(partition)).set(seconds)
            metrics.paused_partitions.set(len(source.paused_partitions()))

    # -- committing --------------------------------------------------------------------

    async def _commit_every(self, interval: float) -> None:
        """Commit every ``interval`` seconds; with 0, as soon as anything finished (one
        commit at a time: what finishes during a commit goes into the next)."""
        stop = self._committer_stop
        while not stop.is_set():
            if interval > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(interval):
                        await stop.wait()
            else:
                await self._finished.wait()
                self._finished.clear()
            if stop.is_set():
                return
            try:
                await self._commit()
            except CommitPointTimeout as exc:
                log.warning("%s; committing later", exc)
            except Exception as exc:
                self._fatal = self._fatal or exc
                self.stop()
                return

    async def _commit(self) -> None:
        if self.windows is not None:
            await self._commit_windowed()
            return
        if not self.delivery.exactly_once:
            await self._commit_positions()
            return
        # Take a turn in the write order: every batch before has written, none after may
        # write until the transaction holding these positions has committed.
        previous, mine = self._take_turn()
        try:
            if previous is not None:
                await previous
            await self._commit_positions()
        finally:
            mine.set_result(None)

    async def _commit_positions(self) -> None:
        # One commit at a time: a slower, older commit must not land after a newer one.
        async with self._commit_lock:
            positions = self.tracker.committable()
            if positions:
                await self._deliver(positions)

    async def _deliver(self, positions: dict[PartitionKey, int]) -> None:
        # The delivery flushes sinks first: a position is committed only for outputs that
        # are durable. Marked only once done: an interrupted commit is retried.
        await self.delivery.commit(positions, self._all_sinks(), self.source)
        self.tracker.mark_committed(positions)
        self._committed.update(positions)

    async def _commit_windowed(self, *, hand_back: bool = False) -> dict[PartitionKey, int]:
        """Commit window state, outputs and positions at a commit point: a moment when
        every closed window's output and every rejected record is written, so all three
        describe the same prefix of the input.

        Reading stops while the commit waits for that moment (no record comes in, no
        window closes), then resumes as soon as the state's changes are taken. With
        ``hand_back`` the positions are returned for the source to commit itself (during a
        rebalance) instead of committed here."""
        windows, tracker = self.windows, self.tracker
        assert windows is not None
        # A rebalance callback holds the poll thread, which a periodic commit holding the
        # lock may be waiting for (a source commit runs there): taking the lock here could
        # deadlock. Without it, the two snapshots follow each other, and so do their
        # changelog writes; the older commit's positions for the revoked partitions are
        # no longer assigned when it lands, so the source leaves them out.
        lock = contextlib.nullcontext() if hand_back else self._commit_lock

        def quiet() -> bool:
            return windows.pending == 0 and tracker.in_flight() == 0

        async with lock:
            mine: asyncio.Future[None] | None = None
            previous: asyncio.Future[None] | None = None
            self._gate.clear()
            try:
                final = self.stopping or not self._running or hand_back
                timeout = (
                    self.settings.shutdown_timeout if final else self.settings.commit_point_timeout
                )
                try:
                    async with asyncio.timeout(timeout):
                        while not quiet():  # again after waking: another task may have run
                            await self._until(quiet, timeout)
                except TimeoutError:
                    raise CommitPointTimeout(
                        f"no commit point within {timeout}s: {windows.pending} closed windows "
                        f"and {tracker.in_flight()} rejected records still being written"
                    ) from None
                positions = tracker.positions()
                changes = windows.changes(positions)
                if self.delivery.exactly_once:
                    # Nothing written after this snapshot may join its transaction.
                    previous, mine = self._take_turn()
            finally:
                self._gate.set()
            try:
                if previous is not None:
                    await previous
                self.metrics.changelog_records.inc(windows.write(changes))
                await windows.flush()  # state before the positions it covers
                if hand_back:
                    for sink in self._all_sinks():
                        await sink.flush()
                    return positions
                # The snapshot's positions, not the tracker's current ones: records read
                # since are in no state written yet.
                committed = {k: v for k, v in positions.items() if self._committed.get(k) != v}
                if committed or self.delivery.exactly_once:
                    await self._deliver(committed)
                return committed
            finally:
                if mine is not None:
                    mine.set_result(None)

    # -- partitions moving between workers -----------------------------------------------

    async def partitions_assigned(
        self, partitions: Sequence[PartitionKey]
    ) -> Mapping[PartitionKey, int] | None:
        starts = await self.delivery.start_positions(partitions)
        if self.windows is not None:
            # Before the partitions' first record: their state, and where it leaves off.
            restored = await self.windows.restore(partitions)
            self.metrics.state_restore_seconds.set(self.windows.restore_seconds)
            if restored:
                starts = {**(starts or {}), **restored}
        return starts

    async def partitions_revoked(
        self, partitions: Sequence[PartitionKey]
    ) -> Mapping[PartitionKey, int]:
        """Finish the revoked partitions' records in flight, then hand back their
        positions to commit. Past ``revoke_timeout`` the pipeline stops instead, and those
        records are not committed: the next owner reads them again."""
        if self._fatal is not None or not self._running:
            # Nothing more will finish: give the partitions up without committing them.
            self._forget(partitions)
            return {}
        timeout = self.settings.revoke_timeout
        try:
            await self._until(lambda: self.tracker.unfinished(partitions) == 0, timeout)
        except TimeoutError:
            raise PipelineError(
                f"records of revoked partitions were not finished within revoke_timeout="
                f"{timeout}s; stopping without committing them"
            ) from None
        positions: dict[PartitionKey, int] = {}
        if self.windows is not None:
            # The state of the revoked partitions goes to the changelog with their offsets.
            try:
                handed = await self._commit_windowed(hand_back=not self.delivery.exactly_once)
            except CommitPointTimeout as exc:
                raise PipelineError(f"revoking {partitions}: {exc}") from None
            if not self.delivery.exactly_once:
                positions = {k: handed[k] for k in partitions if k in handed}
        elif self.delivery.exactly_once:
            await self._commit()  # the transaction takes the revoked partitions' offsets
        else:
            # The source commits these itself, in its rebalance callback: a commit sent
            # through the usual path would wait for the rebalance to end.
            for sink in self._all_sinks():
                await sink.flush()
            current = self.tracker.positions()
            positions = {k: current[k] for k in partitions if k in current}
        self._forget(partitions)
        self._committed.update(positions)
        return positions

    def _forget(self, partitions: Sequence[PartitionKey]) -> None:
        if self.windows is not None:
            self.windows.revoke(partitions)
        for key in partitions:
            self.tracker.forget(*key)
            self._held.discard(key)
            if self._shares is not None:
                self._shares.forget(key)

    async def _until(self, condition: Callable[[], bool], timeout: float) -> None:  # noqa: ASYNC109
        if condition():
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (condition, future)
        self._waiters.append(entry)
        try:
            async with asyncio.timeout(timeout):
                await future
        finally:
            if entry in self._waiters:
                self._waiters.remove(entry)

    def _wake_waiters(self) -> None:
        fatal = self._fatal
        for condition, future in list(self._waiters):
            if future.done():
                continue
            if fatal is not None:
                future.set_exception(PipelineError(f"the pipeline failed: {fatal}"))
            elif condition():
                future.set_result(None)

    async def _final_commit(self, opened: Sequence[Sink | Source]) -> None:
        if self.source not in opened:
            return
        try:
            await self._commit()
        except Exception as exc:
            log.error("final commit failed, positions stay where they were: %s", exc)
            self._fatal = self._fatal or exc


def _size(records: Sequence[Record]) -> int:
    """Encoded bytes of records read as bytes."""
    return sum([len(r.raw) for r in records if r.raw is not None])


def _one_lane(_value: Any) -> int:
    # Without priorities every record is in one lane that a shedding policy may shed.
    return 1
