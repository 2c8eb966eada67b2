"""Calling the model for one batch: timeouts, bisection, retries and the circuit breaker.

A batch whose call raises (or times out) is bisected until the failing records are
isolated; each is retried with backoff, and only then dead-lettered. That is right for a
*poisoned* record, and wrong for a model that is *down*: then every record fails, and
dead-lettering them would empty the stream into the dead-letter topic. Telling the two apart
takes a known-good input: the first row of the last batch the model scored. When calls keep
failing, or before a record is given up on, the model is asked to score that row again. If
it fails too, the model is down: the circuit breaker opens, the source is paused, the row
is retried with growing backoff until the model answers, and then the batch is scored
again from the start. Nothing is dead-lettered while the breaker is open.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import numpy as np

from headrace import defaults
from headrace.errors import ErrorType, HeadraceError, Stage, error_type_of, failure
from headrace.models.base import Model, model_label, model_ref
from headrace.observe.metrics import PipelineMetrics
from headrace.observe.stats import EngineStats
from headrace.observe.throttle import Throttle
from headrace.record import FailedRecord, Record
from headrace.runtime.batcher import OutputCountError, is_async_callable
from headrace.runtime.pool import Call, InferencePool, PoolExhaustedError
from headrace.runtime.processes import ProcessCall, ProcessPool

log = logging.getLogger("headrace")


@dataclass(frozen=True)
class FailurePolicy:
    """How model failures are retried. Times are in seconds.

    ``retries``: further attempts for a record that failed alone, before it is
    dead-lettered (a record whose call timed out is not retried: the retry would wait on
    whatever held the first call). ``backoff`` doubles per attempt up to ``max_backoff``;
    the circuit breaker's probes follow the same schedule. ``timeout``: a call that takes
    longer counts as failed (``None``: no limit), and its thread is written off and
    replaced, up to ``max_hung_calls`` threads (then the pipeline stops).
    ``probe_after``: consecutive failed calls after which the model's health is checked.
    """

    retries: int = defaults.RETRIES
    backoff: float = defaults.BACKOFF
    max_backoff: float = defaults.MAX_BACKOFF
    timeout: float | None = None
    probe_after: int = 3
    max_hung_calls: int = defaults.MAX_HUNG_CALLS

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ValueError(f"retries must not be negative, got {self.retries}")
        if self.backoff <= 0 or self.max_backoff < self.backoff:
            raise ValueError("backoff must be positive and at most max_backoff")
        if self.timeout is not None and self.timeout <= 0:
            raise ValueError(f"the model timeout must be positive, got {self.timeout}")
        if self.probe_after < 1:
            raise ValueError(f"probe_after must be at least 1, got {self.probe_after}")
        if self.max_hung_calls < 0:
            raise ValueError(f"max_hung_calls must not be negative, got {self.max_hung_calls}")

    def delay(self, attempt: int) -> float:
        """Backoff before attempt ``attempt`` (2 for the first retry)."""
        # The exponent is capped: 2.0 ** 1024 overflows, and a long outage gets there.
        return float(min(self.max_backoff, self.backoff * 2.0 ** min(max(0, attempt - 2), 64)))


class ModelTimeoutError(HeadraceError, TimeoutError):
    """A model call ran past the configured timeout."""

    error_type = ErrorType.MODEL_TIMEOUT


class ModelUnavailableError(HeadraceError, RuntimeError):
    """The pipeline was stopped while the model was down: the batches waiting for it were
    not scored, and their records were not committed."""


class _ModelDown(Exception):
    pass


_MISSING: Any = object()
_NO_TIMER = contextlib.nullcontext()


class ModelCaller:
    """Scores batches on a model, keeping failures to the records that cause them.

    A model that is not a coroutine is called on an inference thread (``executor``), or,
    with ``on_loop``, on the event loop itself. A thread keeps the worker alive through a
    call that never returns (with a timeout, the thread is written off and the record
    dead-lettered); handing each batch to it and back costs two wake-ups and a GIL
    hand-over each way, which for a model that holds the GIL anyway is most of the work
    (measured: bench/engine_overhead.py). On the loop, a call cannot be timed out, and
    while it runs nothing else of the worker does (its HTTP answers included). With
    ``processes`` (``model_calls: process``) it is called in a process of its own, which
    a model that holds the GIL does not share with the loop (:mod:`.processes`).
    """

    def __init__(
        self,
        *,
        policy: FailurePolicy,
        metrics: PipelineMetrics,
        stats: EngineStats,
        on_breaker: Callable[[bool], None] = lambda _open: None,
        on_loop: bool = False,
    ) -> None:
        if on_loop and policy.timeout is not None:
            raise ValueError(
                "a model called on the event loop (model_calls: loop) cannot be timed out: "
                "remove the model timeout (failures.model_timeout_ms), or use model_calls: "
                "thread"
            )
        self.on_loop = on_loop
        self.policy = policy
        self.metrics = metrics
        self.stats = stats
        self.executor: Executor | None = None
        # With model_calls: process, where a model that is not a coroutine is called.
        self.processes: ProcessPool | None = None
        self.on_breaker = on_breaker
        self.down = False
        self._stopping = False
        self._consecutive = 0
        self._probe: Any = None
        self._recovery: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._async: dict[int, bool] = {}

    def stop(self) -> None:
        """Batches waiting for a model that is down give up (and are not committed)."""
        self._stopping = True
        self._wake.set()

    def close(self) -> None:
        """Stop probing a model that is down: the run is over."""
        self.stop()
        if self._recovery is not None:
            self._recovery.cancel()

    async def score(
        self, model: Model, records: Sequence[Record], inputs: Any, *, hold_when_down: bool = True
    ) -> tuple[Sequence[Record], list[Any], list[FailedRecord]]:
        """Predictions for the records the model can score, in input order, and the
        records it cannot (after retries). Waits, without failing anything, while the
        model is down; with ``hold_when_down`` false (a new version on probation), a model
        that fails on everything fails the whole batch instead."""
        while True:
            if self.down and hold_when_down:
                await self._wait_up(model, inputs[:1])
            try:
                return await self._score_once(model, records, inputs)
            except _ModelDown as down:
                if not hold_when_down:
                    cause = down.__cause__ or down
                    ref = model_ref(model)
                    kind = _kind(cause)
                    return (
                        [],
                        [],
                        [failure(r, Stage.MODEL, cause, kind, model=ref) for r in records],
                    )
                # Score the whole batch again once the model answers.
                await self._wait_up(model, inputs[:1])

    async def _score_once(
        self, model: Model, records: Sequence[Record], inputs: Any
    ) -> tuple[Sequence[Record], list[Any], list[FailedRecord]]:
        n = len(records)
        out: list[Any] = [_MISSING] * n
        leaves: dict[int, BaseException] = {}
        await self._bisect(model, inputs, 0, n, out, leaves)
        failed: list[FailedRecord] = []
        if leaves:
            if len(leaves) == n and self._probe is None:
                # The model has never answered: poison and down cannot be told apart, and
                # down loses nothing by waiting.
                raise _ModelDown() from next(iter(leaves.values()))
            # A call that timed out is not tried again: it would wait on whatever held the
            # first (each wait costing a thread), and a record that hangs the model must
            # cost one isolation, not one per retry.
            retries = [
                asyncio.ensure_future(self._retry(model, inputs, i, out, leaves))
                for i, exc in leaves.items()
                if not isinstance(exc, ModelTimeoutError)
            ]
            try:
                await asyncio.gather(*retries)
            finally:
                for task in retries:  # the model is down: the others need not go on
                    task.cancel()
            if leaves and not await self._healthy(model):
                raise _ModelDown() from next(iter(leaves.values()))
            ref = model_ref(model)
            retried = 1 + self.policy.retries
            failed = [
                failure(
                    records[i],
                    Stage.MODEL,
                    exc,
                    _kind(exc),
                    model=ref,
                    attempts=1 if isinstance(exc, ModelTimeoutError) else retried,
                )
                for i, exc in sorted(leaves.items())
            ]
            return (
                [r for r, p in zip(records, out, strict=True) if p is not _MISSING],
                [p for p in out if p is not _MISSING],
                failed,
            )
        return records, out, failed

    async def _bisect(
        self,
        model: Model,
        inputs: Any,
        lo: int,
        hi: int,
        out: list[Any],
        leaves: dict[int, BaseException],
    ) -> None:
        try:
            out[lo:hi] = await self._call(model, inputs[lo:hi], hi - lo)
        except PoolExhaustedError:
            raise
        except Exception as exc:
            await self._failed(model, exc)
            if hi - lo == 1:
                leaves[lo] = exc
                return
            mid = (lo + hi) // 2
            await self._bisect(model, inputs, lo, mid, out, leaves)
            await self._bisect(model, inputs, mid, hi, out, leaves)

    async def _retry(
        self, model: Model, inputs: Any, i: int, out: list[Any], leaves: dict[int, BaseException]
    ) -> None:
        for attempt in range(2, self.policy.retries + 2):
            await self._sleep(self.policy.delay(attempt))
            self.metrics.model_retries.inc()
            try:
                out[i] = (await self._call(model, inputs[i : i + 1], 1))[0]
            except PoolExhaustedError:
                raise
            except Exception as exc:
                leaves[i] = exc
                await self._failed(model, exc)
                continue
            del leaves[i]
            return

    async def _failed(self, model: Model, exc: BaseException) -> None:
        self._consecutive += 1
        self.metrics.model_errors.labels(_kind(exc)).inc()
        every = self.policy.probe_after
        due = self._consecutive >= every and self._consecutive % every == 0
        if due and self._probe is not None and not await self._healthy(model):
            raise _ModelDown() from exc

    async def _healthy(self, model: Model) -> bool:
        """Whether the model still scores the last input it scored."""
        probe = self._probe
        if probe is None:
            return True
        try:
            await self._call(model, probe, len(probe))
        except PoolExhaustedError:
            raise
        except Exception:
            return False
        return True

    async def _wait_up(self, model: Model, fallback: Any) -> None:
        if self._recovery is None or self._recovery.done():
            self._recovery = asyncio.create_task(self._recover(model, fallback))
        await asyncio.shield(self._recovery)

    async def _recover(self, model: Model, fallback: Any) -> None:
        self.down = True
        self.metrics.circuit_open.set(1)
        self.on_breaker(True)
        log.warning(
            "model %s is failing on every record: pausing, and retrying", model_label(model)
        )
        attempt = 2
        throttle = Throttle(30.0)  # one line when it fails, then at most one per 30 s
        started = time.monotonic()
        try:
            while True:
                if self._stopping:
                    raise ModelUnavailableError(
                        "stopped while the model was down; the records waiting for it were "
                        "not committed and will be read again"
                    )
                delay = self.policy.delay(attempt)
                await self._sleep(delay)
                probe = self._probe if self._probe is not None else fallback
                try:
                    await self._call(model, probe, len(probe))
                except PoolExhaustedError:
                    raise
                except Exception as exc:
                    attempt += 1
                    self.metrics.model_errors.labels(_kind(exc)).inc()
                    if throttle.allow() is not None:
                        log.warning(
                            "model %s still failing after %.0f s (%s: %s); retrying with "
                            "backoff up to %.3g s",
                            model_label(model),
                            time.monotonic() - started,
                            _kind(exc),
                            str(exc)[:200],
                            self.policy.max_backoff,
                        )
                    continue
                break
        finally:
            if not self._stopping:
                self.down = False
                self._consecutive = 0
                self.metrics.circuit_open.set(0)
                self.on_breaker(False)
        log.warning("model %s answers again: resuming", model_label(model))

    async def _sleep(self, delay: float) -> None:
        if self._stopping:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._wake.wait()

    def _start(
        self, fn: Callable[[Any], Any], inputs: Any
    ) -> Call | concurrent.futures.Future[Any]:
        if self.executor is None:  # outside an engine (tests): a pool of its own
            self.executor = InferencePool(2, max_hung=self.policy.max_hung_calls)
        if isinstance(self.executor, InferencePool):
            return self.executor.call(fn, inputs)
        return self.executor.submit(fn, inputs)

    async def _call(self, model: Model, inputs: Any, n: int) -> list[Any]:
        started = time.perf_counter()
        timeout = self.policy.timeout
        call: Call | ProcessCall | concurrent.futures.Future[Any] | None = None
        # No timer without a timeout: asyncio.timeout(None) costs a few us a batch.
        timer = None if timeout is None else asyncio.timeout(timeout)
        try:
            async with timer or _NO_TIMER:
                if self.on_loop or self._is_async(model):
                    out = model.predict_batch(inputs)
                    if not isinstance(out, np.ndarray) and inspect.isawaitable(out):
                        out = await out
                elif self.processes is not None:
                    call = self.processes.call(model, inputs)
                    if timer is not None and timeout is not None:
                        # Waiting for a process (or for the model to load in it) is not
                        # the call's time: the timeout counts from when one has it.
                        timer.reschedule(None)
                        await call.started
                        timer.reschedule(asyncio.get_running_loop().time() + timeout)
                    out = await call.future
                else:
                    call = self._start(model.predict_batch, inputs)
                    out = await (
                        call.future if isinstance(call, Call) else asyncio.wrap_future(call)
                    )
                    # A plain function returning a coroutine (an array is not: checked
                    # first, as isawaitable's ABC check costs more).
                    if not isinstance(out, np.ndarray) and inspect.isawaitable(out):
                        out = await out
        except TimeoutError:
            if timer is None or not timer.expired():
                raise  # the model's own (a client of a model server timing out): retried
            self.metrics.model_timeouts.inc()
            if isinstance(call, ProcessCall):
                if self.processes is not None:
                    self.processes.abandon(call)  # killed, and another process started
            elif call is not None and isinstance(self.executor, InferencePool):
                # Python cannot stop the thread: the pool writes it off and replaces it.
                self.executor.abandon(call)
            raise ModelTimeoutError(f"model call on {n} records exceeded {timeout}s") from None
        elapsed = time.perf_counter() - started
        self.metrics.inference_seconds.observe(elapsed)
        self.stats.inference_seconds += elapsed
        predictions = out.tolist() if isinstance(out, np.ndarray) else [_plain(p) for p in out]
        if len(predictions) != n:
            raise OutputCountError(n, len(predictions))
        self._consecutive = 0
        # A copy: a view would keep the whole batch's array alive.
        self._probe = inputs[:1].copy() if isinstance(inputs, np.ndarray) else inputs[:1]
        return predictions

    def _is_async(self, model: Model) -> bool:
        key = id(model)
        found = self._async.get(key)
        if found is None:
            found = self._async[key] = is_async_callable(model.predict_batch)
        return found


def _kind(exc: BaseException) -> ErrorType:
    return error_type_of(exc, default=ErrorType.MODEL_ERROR)


def _plain(value: Any) -> Any:
    """NumPy scalars and arrays as the Python values every sink can encode."""
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    return value
