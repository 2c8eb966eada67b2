"""MicroBatcher: ``await batcher.infer(x)`` answered from batched model calls.

Hypothesis drives the asyncio code through sync test functions that call ``asyncio.run``;
every run is wrapped in a timeout so a lost result fails the example instead of hanging.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headrace.runtime.batcher import BatcherClosed, OutputCountError
from headrace.runtime.microbatcher import MicroBatcher
from helpers import wait_for

T = TypeVar("T")

#: The machine is a loaded 2-core box: timing bounds are generous on purpose.
SLACK = 0.5

Output = tuple[str, int]


def run(coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
    """Run ``coro`` on a fresh event loop; a hang becomes a ``TimeoutError``, not a stall."""

    async def guarded() -> T:
        async with asyncio.timeout(timeout):
            return await coro

    return asyncio.run(guarded())


def score(x: int) -> Output:
    """The fake model's output for ``x``: distinct from the input, so echoes are caught."""
    return ("scored", x)


async def let_loop_run(rounds: int) -> None:
    """Yield to the event loop ``rounds`` times: varies interleavings, waits for nothing."""
    for _ in range(rounds):
        await asyncio.sleep(0)


class FakeModel:
    """Scores with :func:`score` and records every batch it sees (from any thread).

    ``predict`` is the plain-function face (run in an executor), ``apredict`` the coroutine
    face. ``on_batch`` may raise or return replacement outputs to simulate a broken model.
    """

    def __init__(self, on_batch: Callable[[list[int]], list[Output] | None] | None = None) -> None:
        self.on_batch = on_batch
        self.batches: list[list[int]] = []
        self._lock = threading.Lock()

    def predict(self, xs: list[int]) -> list[Output]:
        with self._lock:
            self.batches.append(list(xs))
        if self.on_batch is not None:
            replaced = self.on_batch(xs)
            if replaced is not None:
                return replaced
        return [score(x) for x in xs]

    async def apredict(self, xs: list[int]) -> list[Output]:
        await asyncio.sleep(0)
        return self.predict(xs)

    def face(self, use_async: bool) -> Callable[[list[int]], Any]:
        return self.apredict if use_async else self.predict

    def batch_of(self) -> dict[int, list[int]]:
        """Which batch each item was scored in; asserts no item was scored twice."""
        where = {x: batch for batch in self.batches for x in batch}
        assert len(where) == sum(len(b) for b in self.batches), "an item was scored twice"
        return where


# -- ordering, sizes, exactly-once ----------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    groups=st.lists(st.tuples(st.integers(1, 20), st.integers(0, 3)), min_size=1, max_size=10),
    max_size=st.integers(1, 16),
    max_wait=st.sampled_from([0.0, 0.001, 0.003]),
    max_concurrency=st.integers(1, 4),
    use_async=st.booleans(),
    via_many=st.booleans(),
)
def test_every_input_gets_exactly_one_result_in_input_order(
    groups: list[tuple[int, int]],
    max_size: int,
    max_wait: float,
    max_concurrency: int,
    use_async: bool,
    via_many: bool,
) -> None:
    """Each caller gets the output of its own input, whether it came through infer() or
    infer_many(); the model sees every input once, in batches of at most ``max_size``."""
    model = FakeModel()

    async def main() -> tuple[list[Output], int]:
        calls: list[asyncio.Task[Any]] = []
        total = 0
        async with MicroBatcher(
            model.face(use_async),
            max_size=max_size,
            max_wait=max_wait,
            max_concurrency=max_concurrency,
        ) as batcher:
            for size, pause in groups:
                items = list(range(total, total + size))
                total += size
                if via_many:
                    calls.append(asyncio.create_task(batcher.infer_many(items)))
                else:
                    calls.extend(asyncio.create_task(batcher.infer(x)) for x in items)
                await let_loop_run(pause)
            results = await asyncio.gather(*calls)
        if via_many:
            results = [out for outs in results for out in outs]
        return results, total

    results, total = run(main())
    assert results == [score(x) for x in range(total)]
    assert sorted(model.batch_of()) == list(range(total))
    for batch in model.batches:
        assert 1 <= len(batch) <= max_size
        assert batch == list(range(batch[0], batch[0] + len(batch))), "batch not contiguous"
    if use_async or max_concurrency == 1:  # model calls then start in dispatch order
        assert [x for b in model.batches for x in b] == list(range(total))


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 200), max_size=st.integers(1, 32), use_async=st.booleans())
def test_aclose_flushes_everything_submitted(n: int, max_size: int, use_async: bool) -> None:
    """aclose() scores what is still buffered at once (``max_wait`` is 10 s) in full batches
    plus one remainder, and every caller gets its result."""
    model = FakeModel()

    async def main() -> tuple[list[Output], float]:
        batcher: MicroBatcher[int, Output] = MicroBatcher(
            model.face(use_async), max_size=max_size, max_wait=10.0
        )
        calls = [asyncio.create_task(batcher.infer(x)) for x in range(n)]
        start = time.monotonic()
        # Tasks run in creation order: every infer() has put its item before close() runs.
        closer = asyncio.create_task(batcher.aclose())
        results = await asyncio.gather(*calls)
        await closer
        return results, time.monotonic() - start

    results, elapsed = run(main())
    assert results == [score(x) for x in range(n)]
    full, rest = divmod(n, max_size)
    assert [len(b) for b in model.batches] == [max_size] * full + ([rest] if rest else [])
    assert elapsed < 1.0 + SLACK


async def test_infer_after_close_raises_batcher_closed() -> None:
    """A closed MicroBatcher refuses new work instead of leaving the caller waiting."""
    model = FakeModel()
    async with MicroBatcher(model.predict, max_size=4, max_wait=0.001) as batcher:
        assert await batcher.infer(1) == score(1)
    with pytest.raises(BatcherClosed):
        async with asyncio.timeout(5):
            await batcher.infer(2)
    with pytest.raises(BatcherClosed):
        async with asyncio.timeout(5):
            await batcher.infer_many([3, 4])
    assert model.batches == [[1]]


async def test_plain_predict_runs_in_the_given_executor() -> None:
    """A plain predict function runs off the event loop, in the executor it was given."""
    threads: list[str] = []

    def predict(xs: list[int]) -> list[int]:
        threads.append(threading.current_thread().name)
        return xs

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="fake-model") as executor:
        async with MicroBatcher(predict, max_size=2, max_wait=0.0, executor=executor) as mb:
            assert await mb.infer_many([1, 2, 3]) == [1, 2, 3]
    assert threads and all(name.startswith("fake-model") for name in threads)


# -- when batches fire ----------------------------------------------------------------------


@settings(max_examples=15, deadline=None)
@given(max_size=st.integers(2, 64), use_async=st.booleans())
def test_lone_item_is_scored_at_once_while_the_model_is_idle(
    max_size: int, use_async: bool
) -> None:
    """A request that finds the model idle is not held back for a fuller batch: it is
    scored at once, even with a 10 s ``max_wait``."""
    model = FakeModel()

    async def main() -> float:
        async with MicroBatcher(model.face(use_async), max_size=max_size, max_wait=10.0) as mb:
            start = time.monotonic()
            assert await mb.infer(5) == score(5)
            return time.monotonic() - start

    elapsed = run(main())
    assert model.batches == [[5]]
    assert elapsed < SLACK


class HeldModel:
    """A coroutine model whose first call waits for :attr:`gate`; later calls answer at
    once. Records each batch as it starts."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.batches: list[list[int]] = []

    async def predict(self, xs: list[int]) -> list[Output]:
        self.batches.append(list(xs))
        if len(self.batches) == 1:
            await self.gate.wait()
        return [score(x) for x in xs]


@settings(max_examples=30, deadline=None)
@given(data=st.data(), max_size=st.integers(1, 64))
def test_full_batch_fires_without_waiting_for_max_wait_while_the_model_is_busy(
    data: st.DataObject, max_size: int
) -> None:
    """With a call in flight and a slot free, ``max_size`` requests arriving in any number
    of groups (in separate turns of the loop) are scored as one batch at once, even with a
    10 s ``max_wait``."""
    cuts = sorted(data.draw(st.sets(st.integers(1, max_size - 1)))) if max_size > 1 else []
    bounds = [0, *cuts, max_size]
    parts = [list(range(a, b)) for a, b in itertools.pairwise(bounds)]

    async def main() -> tuple[HeldModel, list[Output], float]:
        model = HeldModel()
        async with MicroBatcher(
            model.predict, max_size=max_size, max_wait=10.0, max_concurrency=2
        ) as batcher:
            held = asyncio.create_task(batcher.infer(-1))
            await wait_for(lambda: bool(model.batches))
            calls = []
            for part in parts:
                calls.append(asyncio.create_task(batcher.infer_many(part)))
                await let_loop_run(1)
            start = time.monotonic()
            results = await asyncio.gather(*calls)
            elapsed = time.monotonic() - start
            model.gate.set()
            assert await held == score(-1)
        return model, [out for outs in results for out in outs], elapsed

    model, results, elapsed = run(main())
    assert results == [score(x) for x in range(max_size)]
    assert model.batches == [[-1], list(range(max_size))]
    assert elapsed < 1.0


@settings(max_examples=10, deadline=None)
@given(max_wait=st.floats(0.005, 0.05))
def test_partial_batch_waits_at_most_max_wait_while_the_model_is_busy(max_wait: float) -> None:
    """With a call in flight and a slot free, a lone request waits for company, but no
    longer than ``max_wait`` after it arrived."""

    async def main() -> tuple[HeldModel, float]:
        model = HeldModel()
        async with MicroBatcher(
            model.predict, max_size=8, max_wait=max_wait, max_concurrency=2
        ) as batcher:
            held = asyncio.create_task(batcher.infer(-1))
            await wait_for(lambda: bool(model.batches))
            start = time.monotonic()
            assert await batcher.infer(5) == score(5)
            elapsed = time.monotonic() - start
            assert not held.done()  # scored while the first call was still running
            model.gate.set()
            await held
        return model, elapsed

    model, elapsed = run(main())
    assert model.batches == [[-1], [5]]
    assert max_wait - 1e-3 <= elapsed < max_wait + SLACK


async def test_waiting_batch_fires_when_the_model_goes_idle() -> None:
    """A partial batch waiting for company (``max_wait`` 10 s) fires as soon as the call
    in flight ends: the model does not sit idle while requests wait."""
    model = HeldModel()
    async with MicroBatcher(model.predict, max_size=8, max_wait=10.0, max_concurrency=2) as mb:
        held = asyncio.create_task(mb.infer(-1))
        await wait_for(lambda: bool(model.batches))
        waiting = asyncio.create_task(mb.infer_many([1, 2]))
        await let_loop_run(3)
        assert model.batches == [[-1]] and mb.waiting == 2
        model.gate.set()
        async with asyncio.timeout(SLACK):
            assert await waiting == [score(1), score(2)]
        await held
    assert model.batches == [[-1], [1, 2]]


# -- model failures -------------------------------------------------------------------------


class BatchFailed(Exception):
    """The fake model's failure, naming the batch it failed on."""

    def __init__(self, batch: Sequence[int]) -> None:
        super().__init__(f"model failed on {list(batch)}")
        self.batch = list(batch)


@settings(max_examples=40, deadline=None)
@given(
    data=st.data(),
    n=st.integers(1, 60),
    max_size=st.integers(1, 10),
    max_concurrency=st.integers(1, 3),
    max_wait=st.sampled_from([0.0, 0.001]),
    use_async=st.booleans(),
)
def test_failing_predict_fails_only_the_callers_in_that_batch(
    data: st.DataObject,
    n: int,
    max_size: int,
    max_concurrency: int,
    max_wait: float,
    use_async: bool,
) -> None:
    """A batch whose model call raises fails exactly its own callers, with that batch's
    error; other batches' callers get results and the batcher keeps serving."""
    poison = data.draw(st.sets(st.integers(0, n - 1)))

    def on_batch(xs: list[int]) -> None:
        if poison.intersection(xs):
            raise BatchFailed(xs)

    model = FakeModel(on_batch)

    async def main() -> tuple[list[Any], Output]:
        async with MicroBatcher(
            model.face(use_async),
            max_size=max_size,
            max_wait=max_wait,
            max_concurrency=max_concurrency,
        ) as batcher:
            results = await asyncio.gather(
                *(batcher.infer(x) for x in range(n)), return_exceptions=True
            )
            after = await batcher.infer(n)  # n is never poison
        return results, after

    results, after = run(main())
    batch_of = model.batch_of()
    for x, result in enumerate(results):
        batch = batch_of[x]
        if poison.intersection(batch):
            assert isinstance(result, BatchFailed), (x, result)
            assert result.batch == batch
        else:
            assert result == score(x)
    assert after == score(n)


@settings(max_examples=40, deadline=None)
@given(
    data=st.data(),
    n=st.integers(1, 60),
    max_size=st.integers(1, 10),
    mode=st.sampled_from(["short", "long", "empty"]),
    use_async=st.booleans(),
)
def test_wrong_output_count_fails_that_batch_with_output_count_error(
    data: st.DataObject, n: int, max_size: int, mode: str, use_async: bool
) -> None:
    """A model returning too few or too many outputs fails its batch's callers with
    OutputCountError (never a silently truncated or shifted pairing); others are fine."""
    marked = data.draw(st.sets(st.integers(0, n - 1)))

    def on_batch(xs: list[int]) -> list[Output] | None:
        if not marked.intersection(xs):
            return None
        outputs = [score(x) for x in xs]
        if mode == "short":
            return outputs[:-1]
        if mode == "long":
            return [*outputs, score(-1)]
        return []

    model = FakeModel(on_batch)

    async def main() -> list[Any]:
        async with MicroBatcher(
            model.face(use_async), max_size=max_size, max_wait=0.001
        ) as batcher:
            return await asyncio.gather(
                *(batcher.infer(x) for x in range(n)), return_exceptions=True
            )

    results = run(main())
    batch_of = model.batch_of()
    for x, result in enumerate(results):
        batch = batch_of[x]
        if marked.intersection(batch):
            assert isinstance(result, OutputCountError), (x, result)
            got = {"short": len(batch) - 1, "long": len(batch) + 1, "empty": 0}[mode]
            assert (result.expected, result.got) == (len(batch), got)
        else:
            assert result == score(x)


async def test_short_output_fails_every_caller_instead_of_truncating() -> None:
    """Regression: the seed paired outputs with ``zip``, so a model returning 2 outputs for
    3 inputs answered two callers (possibly wrongly) and left the third waiting forever."""

    def predict(xs: list[int]) -> list[Output]:
        return [score(x) for x in xs[1:]]  # lost the first output: the pairing shifts

    async with MicroBatcher(predict, max_size=3, max_wait=10.0) as batcher:
        async with asyncio.timeout(5):
            results = await asyncio.gather(
                *(batcher.infer(x) for x in range(3)), return_exceptions=True
            )
    assert all(isinstance(r, OutputCountError) for r in results), results
    assert all((r.expected, r.got) == (3, 2) for r in results if isinstance(r, OutputCountError))


# -- concurrency ----------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(
    max_concurrency=st.integers(1, 4),
    max_size=st.integers(1, 8),
    extra_batches=st.integers(1, 4),
)
def test_max_concurrency_bounds_model_calls_running_at_once(
    max_concurrency: int, max_size: int, extra_batches: int
) -> None:
    """No more than ``max_concurrency`` model calls overlap, and with work waiting that
    many do run at once."""
    n = max_size * (max_concurrency + extra_batches)

    async def main() -> tuple[list[int], int]:
        gate = asyncio.Event()
        active = peak = 0

        async def predict(xs: list[int]) -> list[Output]:
            nonlocal active, peak
            active += 1
            peak = max(peak, active)
            try:
                await gate.wait()
                await asyncio.sleep(0.001)  # simulated compute
                return [score(x) for x in xs]
            finally:
                active -= 1

        async with MicroBatcher(
            predict, max_size=max_size, max_wait=0.0, max_concurrency=max_concurrency
        ) as batcher:
            pending = asyncio.create_task(batcher.infer_many(list(range(n))))
            try:
                await wait_for(lambda: active >= max_concurrency)
                active_when_blocked = active
            finally:
                gate.set()  # a failure below must not leave the model blocked
            results = await pending
        assert results == [score(x) for x in range(n)]
        return active_when_blocked, peak

    active_when_blocked, peak = run(main())
    assert active_when_blocked == max_concurrency
    assert peak == max_concurrency


@pytest.mark.parametrize("max_concurrency", [1, 2, 3])
async def test_max_concurrency_bounds_plain_predict_in_threads(max_concurrency: int) -> None:
    """The bound holds for plain functions in a thread pool with spare workers: model calls
    overlap up to ``max_concurrency`` (a barrier proves they can) and never beyond."""
    lock = threading.Lock()
    barrier = threading.Barrier(max_concurrency)
    calls = active = peak = 0

    def predict(xs: list[int]) -> list[Output]:
        nonlocal calls, active, peak
        with lock:
            call, calls = calls, calls + 1
            active += 1
            peak = max(peak, active)
        try:
            if call < max_concurrency:
                barrier.wait(timeout=10)  # the first calls must all be running together
            time.sleep(0.002)  # simulated compute
            return [score(x) for x in xs]
        finally:
            with lock:
                active -= 1

    n = 4 * (max_concurrency + 2)
    with ThreadPoolExecutor(max_workers=max_concurrency + 3) as executor:
        async with MicroBatcher(
            predict,
            max_size=4,
            max_wait=0.0,
            max_concurrency=max_concurrency,
            executor=executor,
        ) as batcher:
            async with asyncio.timeout(20):
                results = await batcher.infer_many(list(range(n)))
    assert results == [score(x) for x in range(n)]
    assert peak == max_concurrency


@settings(max_examples=25, deadline=None)
@given(max_size=st.integers(2, 16), extra=st.integers(0, 20))
def test_next_batch_fills_while_one_computes(max_size: int, extra: int) -> None:
    """With ``max_concurrency=1`` and a slow model, requests arriving during a model call
    are collected: the second batch is full-sized, not the first request to arrive."""
    model = FakeModel()

    async def main() -> list[Output]:
        gate = asyncio.Event()

        async def slow_predict(xs: list[int]) -> list[Output]:
            if not model.batches:
                model.predict(xs)  # record it, then compute slowly
                await gate.wait()
                return [score(x) for x in xs]
            return model.predict(xs)

        async with MicroBatcher(
            slow_predict, max_size=max_size, max_wait=0.0, max_concurrency=1
        ) as batcher:
            calls = [asyncio.create_task(batcher.infer(0))]
            await wait_for(lambda: bool(model.batches))
            for x in range(1, max_size + extra + 1):
                calls.append(asyncio.create_task(batcher.infer(x)))
                await let_loop_run(1)  # the request is submitted before the next one
            gate.set()
            return await asyncio.gather(*calls)

    results = run(main())
    assert results == [score(x) for x in range(max_size + extra + 1)]
    assert model.batches[0] == [0]
    assert model.batches[1] == list(range(1, max_size + 1))


# -- the seed's flaw ------------------------------------------------------------------------


async def test_throughput_is_not_capped_by_max_wait() -> None:
    """Regression: the seed slept the full ``max_wait`` even when a batch was full, capping
    throughput at ``max_size / max_wait`` (64 / 0.1 s = 640 requests/s). 20,000 requests
    from 200 concurrent clients through a trivial model must go far faster."""
    max_size, max_wait, clients, per_client = 64, 0.1, 200, 100
    cap = max_size / max_wait
    model = FakeModel()

    async with MicroBatcher(model.predict, max_size=max_size, max_wait=max_wait) as batcher:

        async def client(first: int) -> None:
            for x in range(first, first + per_client):
                assert await batcher.infer(x) == score(x)

        start = time.monotonic()
        async with asyncio.timeout(60):
            await asyncio.gather(*(client(c * per_client) for c in range(clients)))
        rate = clients * per_client / (time.monotonic() - start)

    assert sum(len(b) for b in model.batches) == clients * per_client
    assert rate > 5_000, f"{rate:.0f} requests/s (the seed's cap: {cap:.0f}/s)"


async def test_an_object_with_an_async_call_is_awaited() -> None:
    """A model object whose __call__ is a coroutine function is awaited, not run in a
    thread (where it would return an unawaited coroutine)."""

    class Doubler:
        async def __call__(self, xs: list[int]) -> list[int]:
            return [x * 2 for x in xs]

    async with MicroBatcher(Doubler(), max_size=4, max_wait=0) as batcher:
        assert await batcher.infer(21) == 42
