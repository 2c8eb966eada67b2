"""Which model version scores which records: the serving version, a canary share of keys,
the previous version for what a version on probation fails, and a shadow off to the side.

Every group of records is scored by exactly one version and written as its own batch,
labelled with that version: a batch never mixes versions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import zlib
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import numpy as np

from headrace import defaults
from headrace.connectors.base import Sink
from headrace.models.base import model_ref
from headrace.observe.metrics import PipelineMetrics
from headrace.record import BatchKind, FailedRecord, Record, ScoredBatch
from headrace.runtime.manager import ModelManager
from headrace.runtime.parts import close_logging
from headrace.runtime.pool import InferencePool
from headrace.runtime.scoring import ModelCaller

log = logging.getLogger("headrace")

_BUCKETS = 10_000


def canary_bucket(key: Any) -> int:
    """A key's stable bucket in [0, 10000): the same key lands in the same bucket in every
    process and run (CRC-32 of its text), so a key's records all go one way.

    >>> canary_bucket("sensor-00042") == canary_bucket("sensor-00042")
    True
    """
    return zlib.crc32(str(key).encode("utf-8", "replace")) % _BUCKETS


@dataclass
class Canary:
    """Score ``fraction`` of keys with the candidate version."""

    candidate: ModelManager
    fraction: float

    def __post_init__(self) -> None:
        if not 0 < self.fraction < 1:
            raise ValueError(f"the canary fraction must be in (0, 1), got {self.fraction}")

    @property
    def threshold(self) -> int:
        return round(self.fraction * _BUCKETS)


@dataclass
class Shadow:
    """Score batches with the candidate too, off the critical path, into ``sink``."""

    candidate: ModelManager
    sink: Sink
    tolerance: float = defaults.SHADOW_TOLERANCE
    max_batches_in_flight: int = defaults.SHADOW_MAX_BATCHES_IN_FLIGHT
    timeout: float = defaults.SHADOW_TIMEOUT


class Rollout:
    """Scores a batch across versions for the engine (see the module docstring)."""

    def __init__(
        self,
        manager: ModelManager,
        *,
        metrics: PipelineMetrics,
        canary: Canary | None = None,
        shadow: Shadow | None = None,
    ) -> None:
        self.manager = manager
        self.metrics = metrics
        self.canary = canary
        self.shadow = shadow
        self.executor: Executor | None = None
        self._shadows: set[asyncio.Task[None]] = set()
        # Shadow calls that timed out but whose thread still runs (Python cannot stop a
        # thread): each keeps its slot, so a stuck shadow cannot take every thread.
        self._stuck: set[asyncio.Future[Any]] = set()
        for extra in (canary, shadow):
            if extra is not None and extra.candidate is not manager:
                extra.candidate.reports_info = False  # the gauge shows the serving version

    async def start(self, parts: contextlib.AsyncExitStack) -> list[asyncio.Task[None]]:
        """Load every version that serves (one that cannot load stops the start), watch
        for new ones, open the shadow's sink; returns the watching tasks. What it starts
        is let go on ``parts``'s exit."""
        watchers = []
        for manager in self.managers():
            await manager.start()
            watcher = asyncio.create_task(manager.watch())
            watchers.append(watcher)
            parts.callback(watcher.cancel)
        if self.shadow is not None:
            # Threads of its own: a stuck shadow takes none of the serving model's, and the
            # end of the run does not wait for it.
            threads = InferencePool(
                self.shadow.max_batches_in_flight, max_hung=0, name="headrace-shadow"
            )
            self.executor = threads
            parts.callback(lambda: threads.shutdown(wait=False, cancel_futures=True))
            # Opened, written and closed, but never flushed before a commit: the shadow
            # does not hold the pipeline back.
            sink = self.shadow.sink
            await sink.open()
            parts.push_async_callback(close_logging, sink.name, sink.close)
        return watchers

    def check_now(self) -> None:
        """Look for new versions now, for every managed model (the admin call)."""
        for manager in self.managers():
            manager.check_now()

    def managers(self) -> list[ModelManager]:
        found = [self.manager]
        for extra in (self.canary, self.shadow):
            if extra is not None and all(extra.candidate is not m for m in found):
                found.append(extra.candidate)
        return found

    async def score(
        self,
        caller: ModelCaller,
        records: Sequence[Record],
        inputs: Any,
        kind: BatchKind = BatchKind.EVENTS,
    ) -> tuple[list[ScoredBatch], list[FailedRecord]]:
        """Batches of ``kind`` to write (one per version) and the records no version
        could score."""
        groups = [(self.manager, records, inputs)]
        canary = self.canary
        if canary is not None and canary.candidate.serving is not None:
            groups = self._split(canary, records, inputs)
        batches: list[ScoredBatch] = []
        failed: list[FailedRecord] = []
        for manager, recs, ins in groups:
            if recs:
                b, f = await self._score_on(caller, manager, recs, ins, kind)
                batches += b
                failed += f
        return batches, failed

    def _split(
        self, canary: Canary, records: Sequence[Record], inputs: Any
    ) -> list[tuple[ModelManager, Sequence[Record], Any]]:
        threshold = canary.threshold
        picked = [canary_bucket(r.key) < threshold for r in records]
        main = [i for i, p in enumerate(picked) if not p]
        test = [i for i, p in enumerate(picked) if p]
        return [
            (self.manager, [records[i] for i in main], _take(inputs, main)),
            (canary.candidate, [records[i] for i in test], _take(inputs, test)),
        ]

    async def _score_on(
        self,
        caller: ModelCaller,
        manager: ModelManager,
        records: Sequence[Record],
        inputs: Any,
        kind: BatchKind,
    ) -> tuple[list[ScoredBatch], list[FailedRecord]]:
        model = manager.lease()
        try:
            started = time.perf_counter()
            # A version on probation that fails on everything is rolled back, not waited
            # for: the circuit breaker is for a model that is down, not a bad version.
            # Nor for a canary: its failures go to the serving version.
            probation = manager.on_probation(model)
            scored, predictions, failed = await caller.score(
                model, records, inputs, hold_when_down=not probation and manager is self.manager
            )
            manager.observe(
                model, ok=len(scored), failed=len(failed), seconds=time.perf_counter() - started
            )
            batches = [
                ScoredBatch(
                    records=scored,
                    predictions=predictions,
                    model=model_ref(model),
                    processed_at=time.time(),
                    kind=kind,
                )
            ]
            fallback = manager.fallback(model) if failed else None
            owner = manager
            if fallback is None and failed and manager is not self.manager:
                # A canary's failures: the serving version.
                fallback, owner = self.manager.serving, self.manager
            if fallback is not None and fallback is not model:
                retry = [f.record for f in failed]
                where = {id(r): i for i, r in enumerate(records)}
                sub = _take(inputs, [where[id(r)] for r in retry])
                owner.lease(fallback)  # not closed while it rescores, if retired meanwhile
                try:
                    again, more, failed = await caller.score(fallback, retry, sub)
                finally:
                    owner.release(fallback)
                if again:
                    batches.append(
                        ScoredBatch(
                            records=again,
                            predictions=more,
                            model=model_ref(fallback),
                            processed_at=time.time(),
                            kind=kind,
                        )
                    )
            return [b for b in batches if b.records], failed
        finally:
            manager.release(model)

    # -- shadow --------------------------------------------------------------------------

    def start_shadow(
        self, records: Sequence[Record], inputs: Any, served: Sequence[ScoredBatch]
    ) -> None:
        """Score the batch with the shadow version in the background, if there is room."""
        shadow = self.shadow
        if shadow is None or shadow.candidate.serving is None or not records:
            return
        if len(self._shadows) + len(self._stuck) >= shadow.max_batches_in_flight:
            self.metrics.shadow_records.labels("skipped").inc(len(records))
            return
        task = asyncio.create_task(self._run_shadow(shadow, list(records), inputs, served))
        self._shadows.add(task)
        task.add_done_callback(self._shadows.discard)

    async def _run_shadow(
        self, shadow: Shadow, records: Sequence[Record], inputs: Any, served: Sequence[ScoredBatch]
    ) -> None:
        model = shadow.candidate.lease()
        call: asyncio.Future[Any] | None = None
        try:
            started = time.perf_counter()
            loop = asyncio.get_running_loop()
            call = loop.run_in_executor(self.executor, model.predict_batch, inputs)
            try:
                async with asyncio.timeout(shadow.timeout):
                    out = await asyncio.shield(call)
            except TimeoutError:
                self._stuck.add(call)
                call.add_done_callback(self._stuck.discard)
                raise
            self.metrics.shadow_seconds.observe(time.perf_counter() - started)
            predictions = out.tolist() if isinstance(out, np.ndarray) else list(out)
            if len(predictions) != len(records):
                raise ValueError(
                    f"shadow returned {len(predictions)} outputs for {len(records)} inputs"
                )
            agree = _agreement(served, records, predictions, shadow.tolerance)
            self.metrics.shadow_records.labels("agree").inc(agree)
            self.metrics.shadow_records.labels("disagree").inc(len(records) - agree)
            await shadow.sink.write(
                ScoredBatch(
                    records=records,
                    predictions=predictions,
                    model=model_ref(model),
                    processed_at=time.time(),
                    kind=served[0].kind,
                )
            )
        except Exception as exc:  # the shadow never affects the pipeline
            self.metrics.shadow_records.labels("failed").inc(len(records))
            log.warning("shadow %s failed on a batch: %s", model_ref(model).version, exc)
        finally:
            if call is not None and not call.done():
                # The model is still in use by the thread: released when that returns.
                call.add_done_callback(lambda _: shadow.candidate.release(model))
            else:
                shadow.candidate.release(model)

    async def drain_shadows(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Let the shadow batches under way finish, for up to ``timeout`` seconds (a stop
        must not wait on a shadow's sink whose service is away); the rest are cancelled,
        their outputs not written (the shadow is best-effort, nothing commits with it)."""
        if not self._shadows:
            return
        pending = list(self._shadows)
        _, late = await asyncio.wait(pending, timeout=timeout)
        if late:
            log.warning(
                "%d shadow batches did not finish within %ss of the stop; not written",
                len(late),
                timeout,
            )
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)


def _take(inputs: Any, idx: list[int]) -> Any:
    if isinstance(inputs, np.ndarray):
        return inputs[idx]
    return [inputs[i] for i in idx]


def _agreement(
    served: Sequence[ScoredBatch],
    records: Sequence[Record],
    predictions: list[Any],
    tolerance: float,
) -> int:
    """How many shadow predictions match the served ones (numbers within ``tolerance``)."""
    by_record = {id(r): p for b in served for r, p in zip(b.records, b.predictions, strict=True)}
    agree = 0
    for r, p in zip(records, predictions, strict=True):
        s = by_record.get(id(r))
        if s is None:
            continue
        if isinstance(s, int | float) and isinstance(p, int | float):
            agree += abs(float(s) - float(p)) <= tolerance
        else:
            agree += s == p
    return agree
