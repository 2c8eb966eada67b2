"""InFlightLimit: the bound on records in flight between source and sinks."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headrace.runtime.flow import InFlightLimit
from helpers import wait_for

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
    """Run ``coro`` on a fresh event loop; a deadlock becomes a ``TimeoutError``."""

    async def guarded() -> T:
        async with asyncio.timeout(timeout):
            return await coro

    return asyncio.run(guarded())


async def let_loop_run(rounds: int = 5) -> None:
    """Yield to the event loop ``rounds`` times, so a task that could proceed does.

    This gives a blocked acquire() every chance to (wrongly) complete; it waits for no
    condition and no amount of time.
    """
    for _ in range(rounds):
        await asyncio.sleep(0)


def test_limit_must_be_positive() -> None:
    """A limit that could never admit anything is refused up front."""
    with pytest.raises(ValueError):
        InFlightLimit(0)


async def test_acquire_within_the_limit_does_not_block() -> None:
    """Chunks that fit together are admitted at once, up to exactly the limit."""
    limit = InFlightLimit(10)
    async with asyncio.timeout(5):
        await limit.acquire(3)
        await limit.acquire(7)
    assert limit.count == 10


async def test_acquire_blocks_over_the_limit_and_resumes_on_release() -> None:
    """A chunk that would overflow waits; a release that does not make room keeps it
    waiting; the release that makes room lets it through."""
    limit = InFlightLimit(10)
    await limit.acquire(8)
    waiter = asyncio.create_task(limit.acquire(5))
    await let_loop_run()
    assert not waiter.done()
    assert limit.count == 8

    limit.release(2)  # 6 + 5 > 10: still no room
    await let_loop_run()
    assert not waiter.done()

    limit.release(1)  # 5 + 5 == 10: room
    await wait_for(waiter.done)
    await waiter
    assert limit.count == 10


async def test_chunk_larger_than_the_limit_passes_when_nothing_is_in_flight() -> None:
    """An oversized chunk cannot deadlock the pipeline: it goes through alone."""
    limit = InFlightLimit(10)
    async with asyncio.timeout(5):
        await limit.acquire(25)
    assert limit.count == 25
    limit.release(25)
    assert limit.count == 0


async def test_oversized_chunk_waits_until_everything_is_released() -> None:
    """An oversized chunk is not let through while anything else is in flight."""
    limit = InFlightLimit(10)
    await limit.acquire(1)
    waiter = asyncio.create_task(limit.acquire(25))
    await let_loop_run()
    assert not waiter.done()
    limit.release(1)
    await wait_for(waiter.done)
    await waiter
    assert limit.count == 25


async def test_one_release_admits_only_the_waiters_that_fit() -> None:
    """Waiters woken together re-check the limit: only one of two 6-chunks fits in 10, the
    other waits for the next release."""
    limit = InFlightLimit(10)
    await limit.acquire(10)
    first = asyncio.create_task(limit.acquire(6))
    second = asyncio.create_task(limit.acquire(6))
    await let_loop_run()
    limit.release(10)
    await wait_for(lambda: first.done() or second.done())
    await let_loop_run()
    assert limit.count == 6
    assert [first.done(), second.done()].count(True) == 1
    limit.release(6)
    await wait_for(lambda: first.done() and second.done())
    assert limit.count == 6


async def test_cancelled_waiter_takes_no_credits() -> None:
    """Cancelling a blocked acquire() leaves the count untouched."""
    limit = InFlightLimit(4)
    await limit.acquire(4)
    waiter = asyncio.create_task(limit.acquire(2))
    await let_loop_run()
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    limit.release(4)
    assert limit.count == 0


async def test_peak_tracks_the_highest_count() -> None:
    """peak is the high-water mark of the count, oversized chunks included."""
    limit = InFlightLimit(100)
    assert limit.peak == 0
    await limit.acquire(4)
    await limit.acquire(3)
    limit.release(7)
    await limit.acquire(2)
    assert (limit.count, limit.peak) == (2, 7)
    limit.release(2)
    await limit.acquire(40)
    assert (limit.count, limit.peak) == (40, 40)


@settings(max_examples=50, deadline=None)
@given(
    bound=st.integers(1, 20),
    chunks=st.lists(st.tuples(st.integers(1, 30), st.integers(0, 3)), min_size=1, max_size=30),
)
def test_concurrent_readers_never_exceed_the_limit_and_all_finish(
    bound: int, chunks: list[tuple[int, int]]
) -> None:
    """Many tasks acquiring and releasing chunks: the count never exceeds the limit except
    for an oversized chunk held alone; nobody deadlocks; peak is the highest count seen."""

    async def main() -> tuple[InFlightLimit, int]:
        limit = InFlightLimit(bound)
        seen = 0

        async def reader(n: int, hold: int) -> None:
            nonlocal seen
            await limit.acquire(n)
            assert limit.count <= bound or limit.count == n, (limit.count, n)
            seen = max(seen, limit.count)
            await let_loop_run(hold)  # hold the credits while "records are in flight"
            limit.release(n)

        await asyncio.gather(*(reader(n, hold) for n, hold in chunks))
        return limit, seen

    limit, seen = run(main())
    assert limit.count == 0
    assert limit.peak == seen
    assert limit.peak >= max(n for n, _ in chunks)
