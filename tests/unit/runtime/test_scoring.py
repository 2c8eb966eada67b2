"""ModelCaller: bisection, retries, timeouts and the circuit breaker, on real models run
through an executor."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from headrace import CallableModel
from headrace.observe.metrics import PipelineMetrics
from headrace.observe.stats import EngineStats
from headrace.record import Record
from headrace.runtime.scoring import (
    FailurePolicy,
    ModelCaller,
    ModelTimeoutError,
    ModelUnavailableError,
)
from helpers import records, wait_for

FAST = {"backoff": 0.001, "max_backoff": 0.005}


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(8, thread_name_prefix="test-infer")
    yield pool
    pool.shutdown(wait=True, cancel_futures=True)


class Harness:
    """A caller with its metrics, and the breaker's state changes as they were reported."""

    def __init__(self, executor: ThreadPoolExecutor, on_loop: bool = False, **policy: Any) -> None:
        self.metrics = PipelineMetrics()
        self.breaker: list[bool] = []
        self.caller = ModelCaller(
            policy=FailurePolicy(**{**FAST, **policy}),
            metrics=self.metrics,
            stats=EngineStats(),
            on_breaker=self.breaker.append,
            on_loop=on_loop,
        )
        self.caller.executor = executor

    async def score(
        self, model: CallableModel, rs: list[Record]
    ) -> tuple[list[Record], list[Any], list[Any]]:
        return await self.caller.score(model, rs, [r.value for r in rs])

    def metric(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels or None)
        return 0.0 if value is None else value


@pytest.fixture
async def harness(executor: ThreadPoolExecutor) -> AsyncIterator[Any]:
    def make(on_loop: bool = False, **policy: Any) -> Harness:
        return Harness(executor, on_loop, **policy)

    yield make


def ids(rs: list[Record]) -> list[int]:
    return [r.value["id"] for r in rs]


class Switch:
    """A model that answers while ``up`` and raises for every input while down; counts
    its calls (from executor threads)."""

    def __init__(self, up: bool = True) -> None:
        self.up = up
        self.calls = 0
        self._lock = threading.Lock()

    def __call__(self, xs: list[dict[str, Any]]) -> list[int]:
        with self._lock:
            self.calls += 1
        if not self.up:
            raise ConnectionError("model server unreachable")
        return [x["id"] * 10 for x in xs]


# -- the policy ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"retries": -1},
        {"backoff": 0},
        {"backoff": 0.5, "max_backoff": 0.1},
        {"timeout": 0},
        {"probe_after": 0},
    ],
)
def test_invalid_failure_policies_are_rejected(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        FailurePolicy(**kwargs)


def test_backoff_doubles_per_attempt_up_to_the_maximum() -> None:
    policy = FailurePolicy(backoff=0.1, max_backoff=0.5)
    assert [policy.delay(a) for a in (1, 2, 3, 4, 5, 6)] == pytest.approx(
        [0.1, 0.1, 0.2, 0.4, 0.5, 0.5]
    )


def test_backoff_stays_at_the_maximum_however_long_the_outage() -> None:
    """The circuit breaker's attempt number grows while the model is down (about a
    thousand attempts at the minimum backoff is enough): its delay must not overflow."""
    policy = FailurePolicy(backoff=0.001, max_backoff=0.005)
    assert policy.delay(1026) == policy.delay(100_000) == 0.005


# -- poisoned records ----------------------------------------------------------------------


async def test_poison_records_are_isolated_retried_and_returned_in_order(harness: Any) -> None:
    """Only the failing records fail, each after ``1 + retries`` attempts of its own; the
    rest is scored, in input order, and the breaker stays closed."""
    poison = {3, 17, 18, 30}
    alone: dict[int, int] = {}
    lock = threading.Lock()

    def picky(xs: list[dict[str, Any]]) -> list[int]:
        bad = [x["id"] for x in xs if x["id"] in poison]
        if bad:
            if len(xs) == 1:
                with lock:
                    alone[bad[0]] = alone.get(bad[0], 0) + 1
            raise ValueError(f"cannot score {bad}")
        return [x["id"] * 10 for x in xs]

    h = harness(retries=2)
    model = CallableModel(picky, name="picky", version="3")
    rs = records(32)
    scored, predictions, failed = await h.score(model, rs)

    assert ids(scored) == [i for i in range(32) if i not in poison]
    assert predictions == [i * 10 for i in ids(scored)]
    assert [f.record.value["id"] for f in failed] == sorted(poison)
    for f in failed:
        assert (f.stage, f.error_type, f.attempts) == ("model", "model-error", 3)
        assert f.model is not None and (f.model.name, f.model.version) == ("picky", "3")
        assert str(f.record.value["id"]) in f.error
    assert alone == dict.fromkeys(poison, 3)  # one attempt in bisection, two retries
    assert h.breaker == [] and not h.caller.down
    assert h.metric("headrace_model_retries_total") == 2 * len(poison)
    assert h.metric("headrace_model_errors_total", error_type="model-error") >= 3 * len(poison)
    assert h.metric("headrace_model_circuit_open") == 0


async def test_without_retries_a_poison_record_fails_after_one_attempt(harness: Any) -> None:
    def picky(xs: list[dict[str, Any]]) -> list[int]:
        if any(x["id"] == 5 for x in xs):
            raise KeyError("no")
        return [0] * len(xs)

    h = harness(retries=0)
    scored, _, failed = await h.score(CallableModel(picky, name="p"), records(8))
    assert len(scored) == 7
    assert [(f.record.value["id"], f.attempts, f.error_type) for f in failed] == [
        (5, 1, "model-error")
    ]
    assert h.metric("headrace_model_retries_total") == 0


async def test_a_transient_failure_that_succeeds_on_retry_is_not_failed(harness: Any) -> None:
    """A record that fails alone once and then scores is kept, in its place."""
    tries: list[int] = []

    def flaky(xs: list[dict[str, Any]]) -> list[int]:
        # Record 5 fails in every batch with others, and alone the first time only.
        if any(x["id"] == 5 for x in xs) and (len(xs) > 1 or not tries):
            if len(xs) == 1:
                tries.append(1)
            raise TimeoutError("transient")
        return [x["id"] for x in xs]

    h = harness(retries=3)
    scored, predictions, failed = await h.score(CallableModel(flaky, name="f"), records(8))
    assert failed == []
    assert ids(scored) == list(range(8)) and predictions == list(range(8))
    assert h.metric("headrace_model_retries_total") == 1
    assert h.breaker == []


async def test_a_wrong_output_count_is_isolated_like_an_error(harness: Any) -> None:
    """A model that returns one output for any batch is right only for single records:
    bisection gets there and nothing fails."""
    h = harness()
    scored, predictions, failed = await h.score(
        CallableModel(lambda xs: [xs[0]["id"]], name="one"), records(6)
    )
    assert failed == [] and predictions == list(range(6)) and ids(scored) == list(range(6))
    assert h.metric("headrace_model_errors_total", error_type="wrong-output-count") >= 1


# -- timeouts ------------------------------------------------------------------------------


async def test_a_call_past_the_timeout_fails_and_is_counted(harness: Any) -> None:
    """A record that makes the model hang times out on every attempt and is failed with
    ``ModelTimeoutError``; the others are scored."""
    release = threading.Event()

    def hangs_on_2(xs: list[dict[str, Any]]) -> list[int]:
        if any(x["id"] == 2 for x in xs):
            release.wait(5)  # hangs until the test ends
        return [x["id"] for x in xs]

    h = harness(retries=1, timeout=0.05)
    try:
        started = time.monotonic()
        scored, predictions, failed = await h.score(CallableModel(hangs_on_2, name="h"), records(4))
        elapsed = time.monotonic() - started
    finally:
        release.set()
    assert ids(scored) == [0, 1, 3] and predictions == [0, 1, 3]
    assert [(f.record.value["id"], f.error_type, f.attempts) for f in failed] == [
        (2, "model-timeout", 1)
    ]
    assert "exceeded 0.05s" in failed[0].error
    # [0..4), [2..4) and [2] timed out; a call that timed out is not retried.
    assert h.metric("headrace_model_timeouts_total") == 3
    assert h.metric("headrace_model_errors_total", error_type="model-timeout") == 3
    assert elapsed < 2.0  # the hanging calls were not waited for


async def test_an_async_model_past_the_timeout_is_cancelled(harness: Any) -> None:
    cancelled: list[int] = []

    async def slow(xs: list[dict[str, Any]]) -> list[int]:
        try:
            if any(x["id"] == 0 for x in xs):
                await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(len(xs))
            raise
        return [1] * len(xs)

    h = harness(retries=0, timeout=0.05)
    scored, _, failed = await h.score(CallableModel(slow, name="a"), records(2))
    assert ids(scored) == [1]
    assert [(f.record.value["id"], f.error_type) for f in failed] == [(0, "model-timeout")]
    assert cancelled == [2, 1]


def test_model_timeout_error_is_a_timeout_error() -> None:
    assert issubclass(ModelTimeoutError, TimeoutError)


# -- the model is down ---------------------------------------------------------------------


async def test_a_model_that_goes_down_opens_the_breaker_and_fails_nothing(harness: Any) -> None:
    """Every record failing, while the last known-good row fails too, is a model that is
    down: nothing is failed, the breaker opens, and once the model answers again the whole
    batch is scored, in order."""
    switch = Switch()
    model = CallableModel(switch, name="s")
    h = harness(probe_after=2)
    await h.score(model, records(4))  # the model answered once: a probe row exists

    switch.up = False
    rs = records(16)
    task = asyncio.create_task(h.score(model, rs))
    await wait_for(lambda: h.caller.down)
    assert h.breaker == [True]
    assert h.metric("headrace_model_circuit_open") == 1
    calls = switch.calls
    await wait_for(lambda: switch.calls > calls + 2)  # it keeps probing
    assert not task.done()

    switch.up = True
    scored, predictions, failed = await asyncio.wait_for(task, 5)
    assert failed == []
    assert ids(scored) == list(range(16)) and predictions == [i * 10 for i in range(16)]
    assert h.breaker == [True, False]
    assert not h.caller.down
    assert h.metric("headrace_model_circuit_open") == 0
    assert h.metric("headrace_model_errors_total", error_type="model-error") >= 2


async def test_a_model_that_never_answered_and_fails_everything_waits(harness: Any) -> None:
    """Without a known-good row, poison and down cannot be told apart; a batch that fails
    entirely waits for the model instead of being dead-lettered."""
    switch = Switch(up=False)
    model = CallableModel(switch, name="s")
    h = harness()
    task = asyncio.create_task(h.score(model, records(5)))
    await wait_for(lambda: h.caller.down)
    assert h.breaker == [True] and not task.done()
    switch.up = True
    scored, _, failed = await asyncio.wait_for(task, 5)
    assert failed == [] and ids(scored) == list(range(5))
    assert h.breaker == [True, False]


async def test_batches_arriving_while_down_share_one_recovery(harness: Any) -> None:
    switch = Switch()
    model = CallableModel(switch, name="s")
    h = harness(probe_after=1)
    await h.score(model, records(2))
    switch.up = False
    first = asyncio.create_task(h.score(model, records(8)))
    await wait_for(lambda: h.caller.down)
    second = asyncio.create_task(h.score(model, records(3)))
    await asyncio.sleep(0)
    switch.up = True
    (a, _, fa), (b, _, fb) = await asyncio.wait_for(asyncio.gather(first, second), 5)
    assert (len(a), len(b), fa, fb) == (8, 3, [], [])
    assert h.breaker == [True, False]


async def test_stop_while_down_makes_waiting_batches_raise(harness: Any) -> None:
    """Batches held for a model that is down give up on stop, unscored: their records are
    not committed and will be read again."""
    switch = Switch()
    model = CallableModel(switch, name="s")
    h = harness(backoff=0.05, max_backoff=1.0)
    await h.score(model, records(2))
    switch.up = False
    first = asyncio.create_task(h.score(model, records(8)))
    await wait_for(lambda: h.caller.down)
    second = asyncio.create_task(h.score(model, records(4)))
    await asyncio.sleep(0)
    h.caller.stop()
    for task in (first, second):
        with pytest.raises(ModelUnavailableError, match="stopped while the model was down"):
            await asyncio.wait_for(task, 2)
    assert h.breaker == [True]  # never reported closed: it did not recover


async def test_a_poison_record_does_not_open_the_breaker_however_many_fail(
    harness: Any,
) -> None:
    """Many consecutive failures make the caller check the model's health; a model that
    still scores the known-good row is healthy, so the failing records are failed."""
    h = harness(probe_after=1, retries=1)

    def odd_fails(xs: list[dict[str, Any]]) -> list[int]:
        if any(x["id"] % 2 for x in xs):
            raise ValueError("odd")
        return [0] * len(xs)

    scored, _, failed = await h.score(CallableModel(odd_fails, name="o"), records(16))
    assert ids(scored) == list(range(0, 16, 2))
    assert [f.record.value["id"] for f in failed] == list(range(1, 16, 2))
    assert h.breaker == []


# -- where the model is called -------------------------------------------------------------


@pytest.mark.parametrize("on_loop", [False, True], ids=["thread", "loop"])
async def test_a_model_called_on_the_loop_or_a_thread_isolates_poison_alike(
    harness: Any, on_loop: bool
) -> None:
    """``model_calls: loop`` calls the model on the event loop's own thread (no hand-off),
    the default on an inference thread; either way poison records are isolated and
    retried, and the rest is scored in order."""
    loop_thread = threading.get_ident()
    threads: set[int] = set()

    def picky(xs: list[dict[str, Any]]) -> list[int]:
        threads.add(threading.get_ident())
        if any(x["id"] == 5 for x in xs):
            raise ValueError("cannot score 5")
        return [x["id"] * 10 for x in xs]

    h = harness(on_loop=on_loop, retries=1)
    scored, predictions, failed = await h.score(CallableModel(picky, name="p"), records(16))
    assert ids(scored) == [i for i in range(16) if i != 5]
    assert predictions == [i * 10 for i in ids(scored)]
    assert [(f.record.value["id"], f.attempts) for f in failed] == [(5, 2)]
    assert (threads == {loop_thread}) is on_loop
    assert h.metric("headrace_model_retries_total") == 1


def test_a_model_on_the_loop_cannot_have_a_timeout() -> None:
    with pytest.raises(ValueError, match="cannot be timed out"):
        ModelCaller(
            policy=FailurePolicy(timeout=1.0),
            metrics=PipelineMetrics(),
            stats=EngineStats(),
            on_loop=True,
        )
