"""The engine: source -> decode -> stage -> batcher -> model -> sinks, with commits.

One engine runs one pipeline on one event loop. The loop reads, batches, writes and
commits; models run in executor threads (or are awaited, if asynchronous), so I/O keeps
flowing while a batch computes. The engine is the loop; each concern is a part it calls:

* :class:`~headrace.runtime.stages.PipelineStage` — events batched as read, or folded into
  windows (:mod:`headrace.runtime.stages`);
* :class:`~headrace.runtime.order.WriteOrder` — batches write in the order they formed;
* :class:`~headrace.runtime.scorer.Scorer` — features, then the model serving now;
* :class:`~headrace.runtime.outputs.Outputs` — sinks, dead letters, shed and late records;
* :class:`~headrace.runtime.ledger.Ledger` — each record settled once, when it is done;
* :class:`~headrace.runtime.backpressure.Backpressure` — when reading pauses, and why;
* :class:`~headrace.runtime.commits.Commits` — positions, commits, rebalances;
* :class:`~headrace.runtime.state.RunState` — running, stopping, failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from headrace.batch import RecordBatch, join
from headrace.connectors.base import DecodedSource, PartitionedSource
from headrace.enrich.lookup import Enricher
from headrace.models.base import Model, model_ref
from headrace.models.featurizer import Featurizer
from headrace.observe.metrics import PipelineMetrics
from headrace.observe.stats import EngineStats, RunSummary
from headrace.record import FailedRecord, Record
from headrace.runtime.acks import Acknowledgements
from headrace.runtime.backpressure import Backpressure
from headrace.runtime.batcher import Batcher
from headrace.runtime.column_decode import ColumnDecoder
from headrace.runtime.commits import CommitPointTimeout, Commits
from headrace.runtime.decode import JsonDecoder
from headrace.runtime.delivery import chosen_delivery
from headrace.runtime.flow import FlowControl
from headrace.runtime.lag import watch_lag
from headrace.runtime.ledger import Ledger
from headrace.runtime.order import WriteOrder
from headrace.runtime.outputs import Outputs, SideWrites, SinkBinding, read_back_header
from headrace.runtime.parts import close_logging
from headrace.runtime.pool import InferencePool
from headrace.runtime.processes import ProcessPool, check_picklable
from headrace.runtime.scorer import Scorer
from headrace.runtime.scoring import FailurePolicy, ModelCaller
from headrace.runtime.settings import EngineSettings
from headrace.runtime.spec import PipelineSpec
from headrace.runtime.stages import EventStage, PipelineStage, WindowedStage
from headrace.runtime.state import PipelineError, RunState

__all__ = [
    "CommitPointTimeout",
    "Engine",
    "EngineSettings",
    "PipelineError",
    "RunSummary",
    "SinkBinding",
]

log = logging.getLogger("headrace")


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

    def __init__(self, spec: PipelineSpec) -> None:
        source, windows = spec.checked(), spec.windows
        self.name = spec.name
        self.source = source
        self.rollout = spec.rollout
        self.decoder = spec.decoder or JsonDecoder()
        self.windows = windows
        s = self.settings = spec.settings
        self.delivery = delivery = chosen_delivery(spec.delivery, s.commit_as_acknowledged)
        self.metrics = spec.metrics or PipelineMetrics()
        bindings = [b if isinstance(b, SinkBinding) else SinkBinding(b) for b in spec.sinks]
        self.stats = EngineStats(written={b.name: 0 for b in bindings})
        self.state = RunState()
        self.order = WriteOrder()
        self.backpressure = Backpressure(
            FlowControl(s.max_in_flight, s.max_in_flight_bytes, s.resume_at),
            source,
            self.metrics,
            resume_at=s.resume_at,
            fair_shares=windows is None,  # windows, not events, are in flight
        )
        self.commits = Commits(
            source=source,
            delivery=self.delivery,
            sinks=lambda: self.outputs.all_sinks(),
            order=self.order,
            state=self.state,
            metrics=self.metrics,
            windows=windows,
            forget=self._forget,
            settings=s,
        )
        events = EventStage(
            self, self.commits.tracker, priorities=spec.priorities, shedding=spec.shedding
        )
        self.outputs = Outputs(
            sinks=bindings,
            dead_letter=spec.dead_letter,
            shed_sink=spec.shed_sink,
            late_sink=spec.late_sink,
            metrics=self.metrics,
            stats=self.stats,
            level_of=events.level_of,
            acks=Acknowledgements(self._write_failed) if delivery.acknowledged else None,
            # Values decoded here from JSON and changed by nothing after (lookups add
            # fields to them): a sink may write their bytes as read.
            inputs_as_read=(
                not isinstance(source, DecodedSource)
                and type(self.decoder) is JsonDecoder
                and not spec.lookups
            ),
            output_header=read_back_header(
                source,
                bindings,
                exactly_once=delivery.exactly_once,
                windowed=windows is not None,
                depth=s.read_back,
            ),
        )
        self.outputs.bind()
        self.stage: PipelineStage = (
            events
            if windows is None
            else WindowedStage(self, windows, self.metrics, tick_interval=s.window_tick)
        )
        self.caller = ModelCaller(
            policy=spec.failures or FailurePolicy(),
            metrics=self.metrics,
            stats=self.stats,
            on_breaker=lambda down: self.backpressure.pause("model-down", down),
            on_loop=s.model_calls == "loop",
        )
        # Lookups before the features; a store that is away pauses reading like a model
        # that is down.
        self.enricher = (
            Enricher(
                spec.lookups,
                self.metrics,
                on_down=lambda down: self.backpressure.pause("enrich-down", down),
            )
            if spec.lookups
            else None
        )
        self.scorer = Scorer(
            model=spec.model, rollout=spec.rollout, featurizer=spec.featurizer, caller=self.caller
        )
        self._decode = None if isinstance(source, DecodedSource) else self._decoder(spec).decode
        self.ledger = Ledger(
            tracker=self.commits.tracker,
            backpressure=self.backpressure,
            stats=self.stats,
            metrics=self.metrics,
            state=self.state,
            finished=self.commits.finished,
            count_bytes=s.max_in_flight_bytes is not None and self._decode is not None,
        )
        self.ledger.stage = self.stage
        self.aside = SideWrites(
            self.outputs, self.order, self.state, self.ledger.set_aside, self._stop_reading
        )
        self._batcher: Batcher[Record] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._watchers: list[asyncio.Task[None]] = []
        # Where the HTTP server listens (its dashboard's URL), once it does.
        self.served_at: str | None = None

    def _decoder(self, spec: PipelineSpec) -> JsonDecoder | ColumnDecoder:
        """The decoder of a source that reads bytes: straight into the model's columns
        (:class:`ColumnDecoder`) where nothing before the model reads the events' values
        (no windows, lookups, priorities or shedding), the model's features are declared,
        every sink writes the inputs as read, and the source can hand over its chunks as
        batches of bytes; else record by record."""
        decoder = self.decoder
        if (
            type(decoder) is JsonDecoder
            and type(spec.featurizer) is Featurizer
            and self.outputs.inputs_as_read
            and spec.windows is None
            and not spec.lookups
            and spec.priorities is None
            and spec.shedding is None
            and all(not b.sink.reads_values for b in self.outputs.sinks)
        ):
            columns = ColumnDecoder(decoder, spec.featurizer)
            if columns.usable and self.source.read_as_batches():
                return columns
        return decoder

    # -- what others read --------------------------------------------------------------

    @property
    def model(self) -> Model:
        """The model serving now."""
        return self.scorer.model

    @model.setter
    def model(self, model: Model) -> None:
        self.scorer.model = model
        self._report_model(model)

    def _report_model(self, model: Model) -> None:
        """A fixed model in the model-info gauge (a rollout's manager reports its own)."""
        ref = model_ref(model)
        self.metrics.model_info.clear()
        self.metrics.model_info.labels(ref.name, ref.version, ref.sha256 or "").set(1)

    @property
    def sinks(self) -> list[SinkBinding]:
        return self.outputs.sinks

    @property
    def flow(self) -> FlowControl:
        return self.backpressure.flow

    @property
    def stopping(self) -> bool:
        return self.state.stopping

    @property
    def healthy(self) -> bool:
        state = self.state
        return state.running and not state.stopping and state.fatal is None

    def ready(self) -> str | None:
        """``None`` when ready to take traffic, else why not (the /ready answer): running,
        not stopping, the model loaded (before running starts), no rebalance or window
        restore under way, and, for a source that shares partitions, some assigned."""
        state = self.state
        if state.fatal is not None:
            return "failed"
        if state.stopping:
            return "stopping"
        if not state.running:
            return "starting"
        if self.commits.moving:
            return "rebalancing"
        if isinstance(self.source, PartitionedSource) and not self.source.assigned():
            return "no partitions assigned"
        return None

    def pause_reading(self, on: bool) -> None:
        """Pause (or resume) reading by an operator's call: records in flight finish and
        are committed; a Kafka consumer keeps its partitions and goes on polling."""
        self.backpressure.pause("operator", on)

    def check_models(self) -> None:
        """Look for new model versions now (the admin call)."""
        if self.rollout is not None:
            self.rollout.check_now()

    def summary(self) -> RunSummary:
        flow = self.flow
        return self.stats.summary(
            committed=self.commits.committed,
            stopped=self.state.stopping,
            peaks=(flow.peak, flow.peak_bytes),
        )

    # -- lifecycle ---------------------------------------------------------------------

    def stop(self) -> None:
        """Ask for a graceful stop: read no more, finish what is in flight, commit."""
        if self.state.stopping:
            return
        self.state.stopping = True
        log.info("stopping %s: finishing in-flight records", self.name)
        self.caller.stop()
        if self.enricher is not None:
            self.enricher.stop()
        if self._reader is not None:
            self._reader.cancel()

    async def run(self) -> RunSummary:
        """Run to the end of the source, or until stopped. Raises :class:`PipelineError`.

        Every part started is registered on one exit stack as it starts, so whatever
        failed, the parts come down in reverse: tasks cancelled, the periodic committer
        let finish, the final commit (once the source opened), the source and sinks
        closed, threads let go.
        """
        self.stats.restart()
        try:
            async with contextlib.AsyncExitStack() as parts:
                try:
                    await self._start(parts)
                    await self._process()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self.state.fail(exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # closing a part failed in a way it did not report
            self.state.fail(exc)
        fatal = self.state.fatal
        if fatal is not None:
            if isinstance(fatal, PipelineError):
                raise fatal
            raise PipelineError(f"{type(fatal).__name__}: {fatal}") from fatal
        return self.summary()

    async def _start(self, parts: contextlib.AsyncExitStack) -> None:
        """Open models, sinks, the stage and the source; start the tasks around them."""
        settings = self.settings
        # Spare threads for the health probe; a call that timed out has its thread
        # replaced (InferencePool), and threads stuck in a model do not hold up the exit.
        executor = InferencePool(
            settings.max_concurrency + 2,
            max_hung=self.caller.policy.max_hung_calls,
            name="headrace-infer",
        )
        self.caller.executor = executor
        parts.callback(
            lambda: executor.shutdown(wait=self.state.fatal is None, cancel_futures=True)
        )
        if self.rollout is not None:
            self._watchers = await self.rollout.start(parts)
        else:
            self._report_model(self.scorer.model)
        if settings.model_calls == "process":
            check_picklable(self.scorer.model)
            if self.rollout is not None:  # new versions too (the shadow keeps its threads)
                scored = [self.rollout.manager]
                if self.rollout.canary is not None:
                    scored.append(self.rollout.canary.candidate)
                for manager in scored:
                    manager.accept = check_picklable
            processes = ProcessPool(settings.max_concurrency)
            parts.callback(processes.shutdown)
            await processes.start(self.scorer.model)
            self.caller.processes = processes
        for sink in self.outputs.all_sinks():
            await sink.open()
            parts.push_async_callback(close_logging, sink.name, sink.close)
        await self.stage.open()
        parts.push_async_callback(close_logging, "the window changelog", self.stage.close)
        if self.enricher is not None:  # stores connect on their first lookup
            parts.push_async_callback(close_logging, "the lookups", self.enricher.close)
        if isinstance(self.source, PartitionedSource):
            self.source.bind(self.commits)
        await self.source.open()
        parts.push_async_callback(close_logging, self.source.name, self.source.close)
        parts.push_async_callback(self.commits.final)
        self.state.running = True
        self._batcher = Batcher(
            self._score,
            max_size=settings.max_batch_size,
            max_wait=settings.max_wait,
            max_concurrency=settings.max_concurrency,
            lanes=self.stage.lanes,
            join=join,
        )
        interval = settings.commit_interval
        if interval is None:
            interval = self.source.commit_interval
        self.commits.start_periodic(interval, on_failure=self.stop)
        parts.push_async_callback(self.commits.stop_periodic)
        background = [self.stage.tick(self._may_close_windows)]
        if isinstance(self.source, PartitionedSource):  # the others cannot tell their lag
            background.append(watch_lag(self.source, self.metrics, 1.0))
        for task in background:
            parts.callback(asyncio.create_task(task).cancel)
        parts.callback(self._stopped_running)

    def _stopped_running(self) -> None:
        self.state.running = False
        self.caller.close()
        for watcher in self._watchers:  # no new version while the run winds down
            watcher.cancel()

    async def _process(self) -> None:
        """Read and score until the source ends, a stop, or a failure; then let the
        batches in flight finish: their records may complete and be committed, and
        nothing they hold is committed otherwise."""
        assert self._batcher is not None
        batcher = self._batcher
        batches = asyncio.create_task(batcher.run(), name="headrace-batcher")
        reader = self._reader = asyncio.create_task(self._read(), name="headrace-reader")
        await asyncio.wait({reader, batches}, return_when=asyncio.FIRST_COMPLETED)
        if batches.done() and not reader.done():
            reader.cancel()
        try:
            await reader
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # run() itself is being cancelled, not just the reader
        except Exception as exc:
            self.state.fail(exc)
        batcher.close()
        clock = asyncio.get_running_loop()
        started = clock.time()
        await self._drain(batches)
        if self.rollout is not None:
            # Within the batches' shutdown_timeout: a stop takes at most twice it.
            left = self.settings.shutdown_timeout - (clock.time() - started)
            await self.rollout.drain_shadows(max(0.0, left))

    async def _drain(self, batches: asyncio.Task[None]) -> None:
        timeout = self.settings.shutdown_timeout
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(batches)
                await self.aside.drain()
                if self.outputs.acks is not None:
                    await self.outputs.acks.wait()
        except TimeoutError:
            batches.cancel()
            self.aside.cancel()
            raise PipelineError(
                f"in-flight batches did not finish within shutdown_timeout={timeout}s; "
                "their records were not committed and will be read again"
            ) from None

    # -- reading (the stage's Intake) --------------------------------------------------

    async def _read(self) -> None:
        backpressure, stage, stats = self.backpressure, self.stage, self.stats
        tracker, gate, flow = self.commits.tracker, self.commits.gate, self.backpressure.flow
        records_in, decode = self.metrics.records_in, self._decode
        async for chunk in self.source.chunks():
            if backpressure.paused:
                # Paused since the last chunk (an operator, the model down): a source that
                # is not polled handed this one over before it was held; it waits here,
                # not yet counted as read.
                await backpressure.resumed()
            if not gate.is_set():
                await gate.wait()  # a commit is taking its snapshot of the window state
            n = len(chunk)
            # How full the pipeline was before this chunk: what arrival shedding judges by,
            # so that one large chunk does not shed itself.
            fraction = flow.fraction()
            tracker.track(chunk)
            size = self.ledger.size(chunk)
            backpressure.admit(chunk, size)
            stats.records_in += n
            records_in.inc(n)
            if decode is not None:
                if isinstance(chunk, RecordBatch) and chunk.raws is None:
                    raise PipelineError(
                        f"source {self.source.name!r} delivered a RecordBatch without raws, "
                        "which holds decoded values, not bytes to decode: make the source a "
                        "DecodedSource (headrace.connectors.base)"
                    )
                # Decoding before batching lets priorities read a field; a record that does
                # not decode is set aside at once, without waiting for a batch.
                chunk, failed = decode(chunk)
                if failed:
                    self.set_aside(failed)
            # The whole chunk's size, unless decoding set records aside.
            stage.take(chunk, size if len(chunk) == n else None, fraction)
            backpressure.check()
            await backpressure.resumed()
        if not self.state.stopping:
            stage.end_of_input()

    def put(self, records: Sequence[Record], lane: int) -> None:
        assert self._batcher is not None
        self._batcher.put(records, lane)

    def admit(self, n: int) -> None:
        self.backpressure.admit_windows(n)

    def set_aside(self, failed: list[FailedRecord]) -> None:
        self.aside.put(failed)

    def _stop_reading(self) -> None:
        if self._reader is not None:
            self._reader.cancel()

    def _may_close_windows(self) -> bool:
        return self.commits.gate.is_set() and not self.state.stopping

    # -- scoring -----------------------------------------------------------------------

    async def _score(self, records: Sequence[Record]) -> None:
        """Score one batch and write it; the batcher runs this as a task per batch."""
        turn = self.order.turn()
        try:
            records, failed = self.stage.prepare(records)
            if self.enricher is not None:
                # One awaited round trip per lookup and batch (keys not cached); other
                # batches and the reader go on meanwhile.
                records = await self.enricher.enrich(list(records), failed)
            scored = await self.scorer.score(records, failed, self.stage.kind)
            async with turn:  # write in batch order: per key, outputs keep source order
                if self.state.fatal is not None:
                    return
                if self.commits.eager:
                    acks = self.outputs.acks
                    assert acks is not None  # eager commits follow acknowledgements
                    await self.commits.make_room(scored.outgoing(), acks)
                for batch in scored.batches:
                    await self.outputs.write(batch, self.ledger.scored)
                if scored.failed:
                    await self.outputs.set_aside(scored.failed, self.ledger.scored)
                self.scorer.shadow(scored)
        except BaseException as exc:
            self.state.fail(exc)
            raise
        finally:
            turn.end()

    def _write_failed(self, exc: BaseException) -> None:
        """An output was never acknowledged: nothing from its record on is committed."""
        self.state.fail(exc)
        self.stop()

    def settle_read(self, records: Sequence[Record], size: int | None) -> None:
        self.ledger.read(records, size)

    def _forget(self, partitions: Sequence[tuple[str, int]]) -> None:
        lag = (self.metrics.lag_records, self.metrics.lag_seconds)
        for key in partitions:
            self.backpressure.forget(key)
            # Another worker reports them now: a last value kept here would be a lag
            # nobody works off (and an alert that never clears).
            for gauge in lag:
                with contextlib.suppress(KeyError):
                    gauge.remove(key[0], str(key[1]))
