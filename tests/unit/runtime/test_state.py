"""RunState (headrace.runtime.state): waiting for a run's progress with ``until``, which
``wake`` lets go once its condition holds; the first failure kept, and waiters told."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headrace.errors import HeadraceError
from headrace.runtime.state import PipelineError, RunState


async def let_loop_run(rounds: int = 20) -> None:
    for _ in range(rounds):
        await asyncio.sleep(0)


def test_a_new_run_is_neither_running_nor_stopping_nor_failed() -> None:
    state = RunState()
    assert (state.running, state.stopping, state.fatal) == (False, False, None)


def test_a_pipeline_error_is_a_headrace_error_and_a_runtime_error() -> None:
    assert issubclass(PipelineError, HeadraceError)
    assert issubclass(PipelineError, RuntimeError)


async def test_until_returns_at_once_when_the_condition_already_holds() -> None:
    state = RunState()
    async with asyncio.timeout(5):
        await state.until(lambda: True, timeout=0)


async def test_until_returns_when_the_condition_holds_after_a_wake() -> None:
    state = RunState()
    done = [False]
    waiter = asyncio.create_task(state.until(lambda: done[0], timeout=5))
    await let_loop_run()
    state.wake()  # the condition does not hold yet: the waiter stays
    await let_loop_run()
    assert not waiter.done()
    done[0] = True
    await let_loop_run()
    assert not waiter.done(), "the condition is checked at a wake, not polled"
    state.wake()
    async with asyncio.timeout(5):
        await waiter


async def test_a_wake_lets_go_only_the_waiters_whose_condition_holds() -> None:
    state = RunState()
    finished = [0]
    waiters = {n: asyncio.create_task(state.until(lambda n=n: finished[0] >= n, 5)) for n in (1, 2)}
    await let_loop_run()
    finished[0] = 1
    state.wake()
    async with asyncio.timeout(5):
        await waiters[1]
    await let_loop_run()
    assert not waiters[2].done()
    finished[0] = 2
    state.wake()
    async with asyncio.timeout(5):
        await waiters[2]


async def test_until_times_out_with_a_timeout_error() -> None:
    state = RunState()
    with pytest.raises(TimeoutError):
        await state.until(lambda: False, timeout=0.01)
    state.wake()  # nothing left waiting: a wake after the timeout is harmless
    with pytest.raises(TimeoutError):
        await state.until(lambda: False, timeout=0)


async def test_a_cancelled_waiter_leaves_no_trace() -> None:
    state = RunState()
    holds = [False]
    waiter = asyncio.create_task(state.until(lambda: holds[0], timeout=5))
    await let_loop_run()
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    holds[0] = True
    state.wake()  # would fail setting a result on a cancelled future if it were still held
    state.fail(RuntimeError("later"))


def test_fail_keeps_the_first_failure() -> None:
    state = RunState()
    first, second = OSError("sink down"), RuntimeError("a consequence")
    state.fail(first)
    state.fail(second)
    assert state.fatal is first


async def test_a_failure_makes_waiters_raise_a_pipeline_error_naming_it() -> None:
    state = RunState()
    waiters = [asyncio.create_task(state.until(lambda: False, timeout=5)) for _ in range(3)]
    await let_loop_run()
    state.fail(OSError("sink down"))
    state.fail(RuntimeError("a consequence"))
    for waiter in waiters:
        with pytest.raises(PipelineError, match="the pipeline failed: sink down"):
            async with asyncio.timeout(5):
                await waiter


async def test_a_failure_wins_over_a_condition_that_holds() -> None:
    """A waiter woken by a failure raises, even if its condition holds by then."""
    state = RunState()
    holds = [False]
    waiter = asyncio.create_task(state.until(lambda: holds[0], timeout=5))
    await let_loop_run()
    holds[0] = True
    state.fail(OSError("sink down"))
    with pytest.raises(PipelineError):
        async with asyncio.timeout(5):
            await waiter


@settings(max_examples=50, deadline=None)
@given(
    thresholds=st.lists(st.integers(0, 10), min_size=1, max_size=8),
    steps=st.lists(st.integers(0, 3), min_size=1, max_size=8),
)
def test_each_wake_lets_go_exactly_the_waiters_whose_condition_holds(
    thresholds: list[int], steps: list[int]
) -> None:
    """Waiters for ``progress >= t``: after each step of progress and a wake, those with
    ``t`` reached are done and the others still wait."""

    async def scenario() -> None:
        state = RunState()
        progress = [0]
        waiters = [
            asyncio.create_task(state.until(lambda t=t: progress[0] >= t, timeout=5))
            for t in thresholds
        ]
        await let_loop_run()
        for step in steps:
            progress[0] += step
            state.wake()
            await let_loop_run()
            done = [w.done() for w in waiters]
            assert done == [t <= progress[0] for t in thresholds]
        for w in waiters:
            w.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)

    asyncio.run(scenario())
