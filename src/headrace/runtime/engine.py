"""The engine: source -> decode -> batcher -> model -> sinks, with commits and shutdown.

One engine runs one pipeline on one event loop. The loop reads, batches, writes and
commits; models run in executor threads (or are awaited, if asynchronous), so I/O keeps
flowing while a batch computes.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from headrace.connectors.base import PartitionKey, Sink, Source
from headrace.models.base import Model, model_ref
from headrace.models.featurizer import Featurizer
from headrace.observe.metrics import PipelineMetrics
from headrace.observe.stats import EngineStats
from headrace.record import FailedRecord, ModelRef, Record, ScoredBatch
from headrace.runtime.batcher import Batcher, OutputCountError, is_async_callable
from headrace.runtime.decode import JsonDecoder, failure
from headrace.runtime.delivery import AtLeastOnce, Delivery
from headrace.runtime.flow import InFlightLimit
from headrace.runtime.offsets import OffsetTracker

log = logging.getLogger("headrace")


class PipelineError(RuntimeError):
    """The pipeline stopped because something it cannot skip went wrong."""


@dataclass(frozen=True)
class EngineSettings:
    """How the engine batches, bounds and commits. Times are in seconds."""

    max_batch_size: int = 256
    max_wait: float = 0.01
    max_concurrency: int = 2
    max_in_flight: int = 10_000
    commit_interval: float = 1.0
    shutdown_timeout: float = 30.0
    revoke_timeout: float = 60.0


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
      the records that fail are dead-lettered;
    * no more than ``max_in_flight`` records are between source and sinks.
    """

    def __init__(
        self,
        *,
        source: Source,
        model: Model,
        sinks: Sequence[Sink | SinkBinding],
        featurizer: Featurizer | None = None,
        decoder: JsonDecoder | None = None,
        dead_letter: Sink | None = None,
        settings: EngineSettings | None = None,
        metrics: PipelineMetrics | None = None,
        delivery: Delivery | None = None,
        name: str = "pipeline",
    ) -> None:
        if not sinks:
            raise ValueError("a pipeline needs at least one sink")
        self.name = name
        self.source = source
        self.model = model
        self.featurizer = featurizer
        self.decoder = decoder or JsonDecoder()
        self.sinks = [s if isinstance(s, SinkBinding) else SinkBinding(s) for s in sinks]
        self.dead_letter = dead_letter
        self.settings = settings or EngineSettings()
        self.delivery = delivery or AtLeastOnce()
        self.metrics = metrics or PipelineMetrics()
        self.stats = EngineStats(written={b.name: 0 for b in self.sinks})
        self.tracker = OffsetTracker()
        self.flow = InFlightLimit(self.settings.max_in_flight)
        self._model_is_async = is_async_callable(model.predict_batch)
        self._decode = None if source.decoded else self.decoder.decode
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
        if self._reader is not None:
            self._reader.cancel()

    async def run(self) -> RunSummary:
        """Run to the end of the source, or until stopped. Raises :class:`PipelineError`."""
        settings = self.settings
        self._executor = ThreadPoolExecutor(
            settings.max_concurrency, thread_name_prefix="headrace-infer"
        )
        self.stats = EngineStats(written={b.name: 0 for b in self.sinks})
        opened: list[Sink | Source] = []
        committer: asyncio.Task[None] | None = None
        try:
            for sink in self._all_sinks():
                await sink.open()
                opened.append(sink)
            self.source.bind(self)
            await self.source.open()
            opened.append(self.source)
            self._running = True
            batcher: Batcher[Record] = Batcher(
                self._score,
                max_size=settings.max_batch_size,
                max_wait=settings.max_wait,
                max_concurrency=settings.max_concurrency,
            )
            batches = asyncio.create_task(batcher.run(), name="headrace-batcher")
            self._reader = asyncio.create_task(self._read(batcher), name="headrace-reader")
            committer = asyncio.create_task(self._commit_every(settings.commit_interval))
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
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._fatal = self._fatal or exc
        finally:
            self._running = False
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
            for part in reversed(opened):
                try:
                    await part.close()
                except Exception as exc:
                    log.error("closing %s failed: %s", part.name, exc)
            self._executor.shutdown(wait=self._fatal is None, cancel_futures=True)
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
        except TimeoutError:
            batches.cancel()
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
        )

    def _all_sinks(self) -> list[Sink]:
        sinks = [b.sink for b in self.sinks]
        if self.dead_letter is not None and all(self.dead_letter is not s for s in sinks):
            sinks.append(self.dead_letter)
        return sinks

    # -- reading -----------------------------------------------------------------------

    async def _read(self, batcher: Batcher[Record]) -> None:
        flow, tracker, stats = self.flow, self.tracker, self.stats
        records_in = self.metrics.records_in
        async for chunk in self.source.chunks():
            n = len(chunk)
            await flow.acquire(n)
            tracker.track(chunk)
            stats.records_in += n
            records_in.inc(n)
            batcher.put(chunk)

    # -- scoring -----------------------------------------------------------------------

    async def _score(self, records: list[Record]) -> None:
        """Score one batch and write it; the batcher runs this as a task per batch."""
        loop = asyncio.get_running_loop()
        previous, mine = self._write_turn, loop.create_future()
        self._write_turn = mine
        try:
            model = self.model  # one model for the whole batch, whatever happens meanwhile
            ref = model_ref(model)
            failed: list[FailedRecord] = []
            if self._decode is not None:
                # Decoding here rather than at read time keeps every write, dead letters
                # included, in batch order: what a transaction around writes needs.
                records, failed = self._decode(records)
            inputs: Any
            if self.featurizer is not None:
                inputs, bad = self.featurizer.transform([r.value for r in records])
                if bad:
                    skip = {i for i, _ in bad}
                    failed += [failure(records[i], "featurize", msg) for i, msg in bad]
                    records = [r for i, r in enumerate(records) if i not in skip]
            else:
                inputs = [r.value for r in records]
            if records:
                records, predictions, model_failed = await self._predict(model, records, inputs)
                failed.extend(model_failed)
            else:
                predictions = []
            batch = ScoredBatch(records, predictions, ref, time.time())
            if previous is not None:
                await previous  # write in batch order: per key, outputs keep source order
            if self._fatal is not None:
                return
            await self._write(batch)
            if failed:
                await self._dead_letter(failed)
        except BaseException as exc:
            self._fatal = self._fatal or exc
            self._wake_waiters()
            raise
        finally:
            mine.set_result(None)

    async def _predict(
        self, model: Model, records: list[Record], inputs: Any
    ) -> tuple[list[Record], list[Any], list[FailedRecord]]:
        """Predictions for the records the model can score; bisects to isolate failures."""
        try:
            return records, await self._call_model(model, inputs, len(records)), []
        except Exception as exc:
            if len(records) == 1:
                ref = model_ref(model)
                return [], [], [_model_failure(records[0], exc, ref)]
        mid = len(records) // 2
        left = await self._predict(model, records[:mid], inputs[:mid])
        right = await self._predict(model, records[mid:], inputs[mid:])
        return left[0] + right[0], left[1] + right[1], left[2] + right[2]

    async def _call_model(self, model: Model, inputs: Any, n: int) -> list[Any]:
        started = time.perf_counter()
        if self._model_is_async:
            out = await model.predict_batch(inputs)
        else:
            loop = asyncio.get_running_loop()
            out = await loop.run_in_executor(self._executor, model.predict_batch, inputs)
            if inspect.isawaitable(out):  # a plain function that returned a coroutine
                out = await out
        elapsed = time.perf_counter() - started
        self.metrics.inference_seconds.observe(elapsed)
        self.stats.inference_seconds += elapsed
        predictions = out.tolist() if isinstance(out, np.ndarray) else [_plain(p) for p in out]
        if len(predictions) != n:
            raise OutputCountError(n, len(predictions))
        return predictions

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
        self._finish(batch.records, scored=n)

    async def _dead_letter(self, failed: list[FailedRecord]) -> None:
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

    def _finish(self, records: Sequence[Record], *, scored: int) -> None:
        self.tracker.done(records)
        self.flow.release(len(records))
        stats = self.stats
        if scored:
            stats.records_out += scored
            stats.batches += 1
            stats.batched_records += scored
            self.metrics.records_out.inc(scored)
            self.metrics.batch_size.observe(scored)
        self.metrics.in_flight.set(self.flow.count)
        self._finished.set()
        if self._waiters:
            self._wake_waiters()

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
            except Exception as exc:
                self._fatal = self._fatal or exc
                self.stop()
                return

    async def _commit(self) -> None:
        if not self.delivery.exactly_once:
            await self._commit_positions()
            return
        # Take a turn in the write order: every batch before has written, none after may
        # write until the transaction holding these positions has committed.
        loop = asyncio.get_running_loop()
        previous, mine = self._write_turn, loop.create_future()
        self._write_turn = mine
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
            if not positions:
                return
            # The delivery flushes sinks first: a position is committed only for outputs
            # that are durable. Marked only once done: an interrupted commit is retried.
            await self.delivery.commit(positions, self._all_sinks(), self.source)
            self.tracker.mark_committed(positions)
            self._committed.update(positions)

    # -- partitions moving between workers -----------------------------------------------

    async def partitions_assigned(
        self, partitions: Sequence[PartitionKey]
    ) -> Mapping[PartitionKey, int] | None:
        return await self.delivery.start_positions(partitions)

    async def partitions_revoked(
        self, partitions: Sequence[PartitionKey]
    ) -> Mapping[PartitionKey, int]:
        """Finish the revoked partitions' records in flight, then hand back their
        positions to commit. Past ``revoke_timeout`` the pipeline stops instead, and those
        records are not committed: the next owner reads them again."""
        if self._fatal is not None or not self._running:
            # Nothing more will finish: give the partitions up without committing them.
            for topic, partition in partitions:
                self.tracker.forget(topic, partition)
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
        if self.delivery.exactly_once:
            await self._commit()  # the transaction takes the revoked partitions' offsets
        else:
            # The source commits these itself, in its rebalance callback: a commit sent
            # through the usual path would wait for the rebalance to end.
            for sink in self._all_sinks():
                await sink.flush()
            current = self.tracker.positions()
            positions = {k: current[k] for k in partitions if k in current}
        for topic, partition in partitions:
            self.tracker.forget(topic, partition)
        self._committed.update(positions)
        return positions

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


def _plain(value: Any) -> Any:
    """NumPy scalars and arrays as the Python values every sink can encode."""
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    return value


def _model_failure(record: Record, exc: BaseException, ref: ModelRef) -> FailedRecord:
    f = failure(record, "model", exc)
    return FailedRecord(f.record, f.stage, f.error, f.error_type, ref)
