"""The inference pool: a call that never returns costs one thread, replaced, up to a limit;
and scoring on a model that hangs on one record isolates that record without retrying it."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from headrace.models.base import CallableModel
from headrace.observe.metrics import PipelineMetrics
from headrace.observe.stats import EngineStats
from headrace.record import Record
from headrace.runtime.pool import InferencePool, PoolExhaustedError
from headrace.runtime.scoring import FailurePolicy, ModelCaller


@pytest.fixture
def never() -> Iterator[threading.Event]:
    """Set only when the test ends, so that stuck threads finish then."""
    event = threading.Event()
    yield event
    event.set()


def test_a_written_off_thread_is_replaced_and_the_pool_keeps_its_size(
    never: threading.Event,
) -> None:
    pool = InferencePool(1, max_hung=2, name="t")
    stuck = pool.submit(never.wait)
    deadline = time.monotonic() + 5
    while not stuck.running():
        assert time.monotonic() < deadline
        time.sleep(0.001)
    pool.abandon(stuck)
    assert pool.hung == 1
    assert pool.submit(sum, [1, 2]).result(timeout=5) == 3  # a new thread took it
    pool.shutdown(wait=True)  # does not wait for the stuck thread


def test_past_max_hung_the_pool_says_so(never: threading.Event) -> None:
    pool = InferencePool(1, max_hung=1, name="t")
    for expect_error in (False, True):
        call = pool.submit(never.wait)
        while not call.running():
            time.sleep(0.001)
        if expect_error:
            with pytest.raises(PoolExhaustedError, match="max_hung_calls=1"):
                pool.abandon(call)
        else:
            pool.abandon(call)
    pool.shutdown(wait=False)


def test_abandoning_a_queued_call_cancels_it(never: threading.Event) -> None:
    pool = InferencePool(1, max_hung=1, name="t")
    first = pool.submit(never.wait)
    queued = pool.submit(sum, [1])
    pool.abandon(queued)
    assert queued.cancelled() and pool.hung == 0
    never.set()
    first.result(timeout=5)
    pool.shutdown()


async def test_a_call_completes_its_future_on_the_loop_and_a_queued_one_can_be_dropped() -> None:
    """The engine's calls (``call``) resolve an asyncio future with the result or the
    error; one given up on before a thread took it never runs."""
    pool = InferencePool(1, max_hung=1, name="t")
    gate = threading.Event()
    ran: list[str] = []

    def job(name: str) -> str:
        if name == "first":
            gate.wait(5)
        ran.append(name)
        return name.upper()

    first = pool.call(job, "first")
    queued = pool.call(job, "queued")
    pool.abandon(queued)
    assert queued.future.cancelled() and pool.hung == 0
    gate.set()
    assert await first.future == "FIRST"
    failing = pool.call(int, "not a number")
    with pytest.raises(ValueError, match="invalid literal"):
        await failing.future
    assert await pool.call(job, "last").future == "LAST"
    assert ran == ["first", "last"]
    pool.shutdown()


def records(n: int) -> list[Record]:
    return [
        Record(key=None, value={"id": i}, event_time=0.0, topic="t", partition=0, offset=i)
        for i in range(n)
    ]


async def test_a_record_that_hangs_the_model_is_isolated_once_and_costs_few_threads(
    never: threading.Event,
) -> None:
    """One record of 64 makes the model block forever: it fails as model-timeout after one
    isolation (no retries), the others are scored, and the threads written off are the
    bisection's (about log2 of the batch), all replaced."""

    def model(xs: list[dict[str, Any]]) -> list[int]:
        if any(x["id"] == 21 for x in xs):
            never.wait()
        return [x["id"] for x in xs]

    metrics = PipelineMetrics()
    caller = ModelCaller(
        policy=FailurePolicy(retries=3, timeout=0.05, max_hung_calls=16),
        metrics=metrics,
        stats=EngineStats(written={}),
    )
    pool = InferencePool(2, max_hung=16, name="t")
    caller.executor = pool
    rs = records(64)
    scored, _, failed = await caller.score(
        CallableModel(model, name="m"), rs, [r.value for r in rs]
    )
    assert [r.value["id"] for r in scored] == [i for i in range(64) if i != 21]
    assert [(f.record.value["id"], f.error_type, f.attempts) for f in failed] == [
        (21, "model-timeout", 1)
    ]
    assert pool.hung == 7  # [0,64) [0,32) [16,32) [16,24) [20,24) [20,22) [21]
    # Later calls still find threads.
    rs = records(8)
    more, _, none = await caller.score(CallableModel(model, name="m"), rs, [r.value for r in rs])
    assert len(more) == 8 and none == []
    pool.shutdown(wait=False)


def test_a_process_exits_with_threads_stuck_in_a_model() -> None:
    """Daemon threads: the interpreter does not wait for a call that never returns (a
    ThreadPoolExecutor's threads are joined at exit, and SIGTERM then never ended the
    worker)."""
    code = (
        "import threading\n"
        "from headrace.runtime.pool import InferencePool\n"
        "pool = InferencePool(1, max_hung=1)\n"
        "call = pool.submit(threading.Event().wait)\n"
        "while not call.running(): pass\n"
        "pool.abandon(call)\n"
        "pool.shutdown(wait=True)\n"
        "print('done')\n"
    )
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == b"done"
    assert time.monotonic() - started < 20


async def test_shutdown_with_a_call_in_flight_does_not_block_the_loop() -> None:
    pool = InferencePool(1, max_hung=1, name="t")
    call = asyncio.wrap_future(pool.submit(time.sleep, 0.05))
    await call
    pool.shutdown(wait=True)
