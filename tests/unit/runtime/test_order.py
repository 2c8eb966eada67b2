"""WriteOrder and Turn (headrace.runtime.order): turns write in the order they were taken,
whatever order they are entered in; a turn ended early, or left by an exception, lets the
next one go."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headrace.runtime.order import Turn, WriteOrder


async def let_loop_run(rounds: int = 20) -> None:
    for _ in range(rounds):
        await asyncio.sleep(0)


class Log:
    """What the writers did, in order, and how many were inside a turn at once."""

    def __init__(self) -> None:
        self.entries: list[str] = []
        self.inside = 0
        self.most_inside = 0

    async def write(self, turn: Turn, name: str, *, hold: asyncio.Event | None = None) -> None:
        async with turn:
            self.inside += 1
            self.most_inside = max(self.most_inside, self.inside)
            self.entries.append(f"{name} in")
            if hold is not None:
                await hold.wait()
            await asyncio.sleep(0)  # a write awaits I/O: let the others try to go
            self.entries.append(f"{name} out")
            self.inside -= 1


async def test_turns_run_in_the_order_taken_even_when_entered_out_of_order() -> None:
    order, log = WriteOrder(), Log()
    first, second, third = order.turn(), order.turn(), order.turn()
    async with asyncio.timeout(5):
        await asyncio.gather(
            log.write(third, "third"), log.write(first, "first"), log.write(second, "second")
        )
    assert log.entries == [
        "first in",
        "first out",
        "second in",
        "second out",
        "third in",
        "third out",
    ]
    assert log.most_inside == 1


async def test_a_turn_waits_while_the_one_before_is_held() -> None:
    order, log = WriteOrder(), Log()
    first, second = order.turn(), order.turn()
    hold = asyncio.Event()
    writing = asyncio.create_task(log.write(first, "first", hold=hold))
    waiting = asyncio.create_task(log.write(second, "second"))
    await let_loop_run()
    assert log.entries == ["first in"] and not waiting.done()
    hold.set()
    async with asyncio.timeout(5):
        await asyncio.gather(writing, waiting)
    assert log.entries == ["first in", "first out", "second in", "second out"]


async def test_the_first_turn_goes_at_once() -> None:
    order = WriteOrder()
    async with asyncio.timeout(5), order.turn():
        pass


async def test_an_ended_turn_lets_the_next_go() -> None:
    """A batch that failed before writing ends its turn without entering it."""
    order, log = WriteOrder(), Log()
    first, second = order.turn(), order.turn()
    waiting = asyncio.create_task(log.write(second, "second"))
    await let_loop_run()
    assert not waiting.done()
    first.end()
    async with asyncio.timeout(5):
        await waiting
    assert log.entries == ["second in", "second out"]


async def test_ending_a_turn_twice_is_harmless() -> None:
    order, log = WriteOrder(), Log()
    first, second = order.turn(), order.turn()
    first.end()
    first.end()
    await log.write(first, "first")  # entered after it ended: ends again on exit
    first.end()
    async with asyncio.timeout(5):
        await log.write(second, "second")
    assert log.entries == ["first in", "first out", "second in", "second out"]


async def test_an_exception_inside_a_turn_still_releases_the_next() -> None:
    order, log = WriteOrder(), Log()
    first, second = order.turn(), order.turn()
    waiting = asyncio.create_task(log.write(second, "second"))
    with pytest.raises(OSError, match="sink down"):
        async with first:
            await let_loop_run()
            assert not waiting.done()
            raise OSError("sink down")
    async with asyncio.timeout(5):
        await waiting
    assert log.entries == ["second in", "second out"]


async def test_turns_taken_after_a_write_went_wait_only_for_the_turns_before_them() -> None:
    order, log = WriteOrder(), Log()
    await log.write(order.turn(), "early")
    later = order.turn()
    async with asyncio.timeout(5):
        await log.write(later, "later")
    assert log.entries == ["early in", "early out", "later in", "later out"]


async def test_a_turn_cancelled_while_waiting_does_not_let_the_next_overtake() -> None:
    """A batch cancelled while it waits for its turn (and which ends its turn, as the
    engine's batches do) must not let a later batch write before an earlier one is done."""
    order, log = WriteOrder(), Log()
    first, second, third = order.turn(), order.turn(), order.turn()
    hold = asyncio.Event()

    async def ended_on_the_way_out(turn: Turn, name: str) -> None:
        try:
            await log.write(turn, name)
        finally:
            turn.end()

    writing = asyncio.create_task(log.write(first, "first", hold=hold))
    cancelled = asyncio.create_task(ended_on_the_way_out(second, "second"))
    last = asyncio.create_task(ended_on_the_way_out(third, "third"))
    await let_loop_run()
    cancelled.cancel()
    await let_loop_run()
    hold.set()
    async with asyncio.timeout(5):
        await asyncio.gather(writing, cancelled, last, return_exceptions=True)
    assert log.entries == ["first in", "first out", "third in", "third out"]


async def test_a_turn_ended_early_does_not_let_the_next_overtake_the_ones_before() -> None:
    """``async with turn`` waits until every earlier turn is over, also when one between
    them was ended early (a batch that failed before writing)."""
    order, log = WriteOrder(), Log()
    first, second, third = order.turn(), order.turn(), order.turn()
    hold = asyncio.Event()
    writing = asyncio.create_task(log.write(first, "first", hold=hold))
    await let_loop_run()
    second.end()
    last = asyncio.create_task(log.write(third, "third"))
    await let_loop_run()
    hold.set()
    async with asyncio.timeout(5):
        await asyncio.gather(writing, last)
    assert log.entries == ["first in", "first out", "third in", "third out"]


@settings(max_examples=100, deadline=None)
@given(data=st.data(), n=st.integers(1, 8))
def test_any_order_of_entering_writes_in_the_order_taken(data: st.DataObject, n: int) -> None:
    """Turns entered in any order, each after any number of loop rounds and holding its
    turn for any number, write one at a time in the order they were taken."""
    entering = data.draw(st.permutations(range(n)), label="entering")
    arrive = data.draw(st.lists(st.integers(0, 3), min_size=n, max_size=n), label="arrive")
    hold = data.draw(st.lists(st.integers(0, 3), min_size=n, max_size=n), label="hold")

    async def scenario() -> list[int]:
        order = WriteOrder()
        turns = [order.turn() for _ in range(n)]
        written: list[int] = []
        inside = 0

        async def write(i: int) -> None:
            nonlocal inside
            await let_loop_run(arrive[i])
            async with turns[i]:
                inside += 1
                assert inside == 1, "two turns at once"
                await let_loop_run(hold[i])
                written.append(i)
                inside -= 1

        async with asyncio.timeout(5):
            await asyncio.gather(*(write(i) for i in entering))
        return written

    assert asyncio.run(scenario()) == list(range(n))
