"""Batcher: items are grouped into batches that fire when full or when the oldest item is due.

Hypothesis drives the asyncio code through sync test functions that call ``asyncio.run``;
every run is wrapped in a timeout so a batcher that hangs fails the example instead of
stalling the suite.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headrace.runtime.batcher import Batcher, BatcherClosed
from helpers import wait_for

T = TypeVar("T")

#: The machine is a loaded 2-core box: timing bounds are generous on purpose.
SLACK = 0.5


def run(coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
    """Run ``coro`` on a fresh event loop; a hang becomes a ``TimeoutError``, not a stall."""

    async def guarded() -> T:
        async with asyncio.timeout(timeout):
            return await coro

    return asyncio.run(guarded())


def flatten(batches: Sequence[Sequence[int]]) -> list[int]:
    return [x for batch in batches for x in batch]


async def let_loop_run(rounds: int) -> None:
    """Yield to the event loop ``rounds`` times: varies interleavings, waits for nothing."""
    for _ in range(rounds):
        await asyncio.sleep(0)


class Recorder:
    """A handler that records each batch, when it started, and how many batches run at once.

    With a ``gate``, every batch blocks until the gate is set; ``compute`` simulates work.
    """

    def __init__(self, gate: asyncio.Event | None = None, compute: float = 0.0) -> None:
        self.gate = gate
        self.compute = compute
        self.batches: list[list[int]] = []
        self.started_at: list[float] = []
        self.active = 0
        self.peak = 0

    async def __call__(self, batch: list[int]) -> None:
        self.started_at.append(time.monotonic())
        self.batches.append(list(batch))
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            if self.gate is not None:
                await self.gate.wait()
            await asyncio.sleep(self.compute)  # simulated model time (0: just yield)
        finally:
            self.active -= 1

    @property
    def handled(self) -> int:
        return sum(len(b) for b in self.batches)


# -- construction and the closed state ------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_size": 0, "max_wait": 0.01},
        {"max_size": 1, "max_wait": -0.001},
        {"max_size": 1, "max_wait": 0.01, "max_concurrency": 0},
    ],
)
def test_invalid_settings_are_rejected(kwargs: dict[str, Any]) -> None:
    """Nonsense sizes, waits and concurrency fail at construction, not at run time."""
    with pytest.raises(ValueError):
        Batcher(Recorder(), **kwargs)


async def test_put_after_close_raises_batcher_closed() -> None:
    """Items given to a closed batcher are refused loudly rather than silently dropped."""
    batcher = Batcher(Recorder(), max_size=4, max_wait=0.01)
    batcher.put([1])
    batcher.close()
    with pytest.raises(BatcherClosed):
        batcher.put([2])
    assert batcher.buffered == 1


async def test_empty_put_is_a_no_op() -> None:
    """An empty put adds nothing and starts no clock."""
    recorder = Recorder()
    batcher = Batcher(recorder, max_size=4, max_wait=0.0)
    batcher.put([])
    assert batcher.buffered == 0
    batcher.close()
    await batcher.run()
    assert recorder.batches == []


# -- ordering, sizes, exactly-once ----------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(
    n=st.integers(0, 200),
    max_size=st.integers(1, 32),
    max_wait=st.sampled_from([0.0, 0.001, 0.01]),
    max_concurrency=st.integers(1, 4),
    close_first=st.booleans(),
)
def test_items_buffered_at_once_form_full_batches_in_order(
    n: int, max_size: int, max_wait: float, max_concurrency: int, close_first: bool
) -> None:
    """A backlog is cut into full batches plus one remainder, in input order, never larger
    than ``max_size`` and never needlessly small."""

    async def main() -> Recorder:
        recorder = Recorder()
        batcher = Batcher(
            recorder, max_size=max_size, max_wait=max_wait, max_concurrency=max_concurrency
        )
        batcher.put(list(range(n)))
        if close_first:
            batcher.close()
            await batcher.run()
        else:
            runner = asyncio.create_task(batcher.run())
            await wait_for(lambda: recorder.handled == n)
            batcher.close()
            await runner
        assert batcher.buffered == 0
        assert batcher.batches_in_flight == 0
        return recorder

    recorder = run(main())
    full, rest = divmod(n, max_size)
    assert [len(b) for b in recorder.batches] == [max_size] * full + ([rest] if rest else [])
    assert flatten(recorder.batches) == list(range(n))


@settings(max_examples=40, deadline=None)
@given(
    groups=st.lists(st.tuples(st.integers(1, 25), st.integers(0, 3)), min_size=1, max_size=15),
    max_size=st.integers(1, 16),
    max_wait=st.sampled_from([0.0, 0.001, 0.005]),
    max_concurrency=st.integers(1, 4),
    compute=st.sampled_from([0.0, 0.001]),
)
def test_interleaved_puts_deliver_every_item_once_in_order(
    groups: list[tuple[int, int]],
    max_size: int,
    max_wait: float,
    max_concurrency: int,
    compute: float,
) -> None:
    """Items put while batches fire and run reach the handler exactly once, in put order,
    in non-empty batches of at most ``max_size``."""

    async def main() -> tuple[Recorder, int]:
        recorder = Recorder(compute=compute)
        batcher = Batcher(
            recorder, max_size=max_size, max_wait=max_wait, max_concurrency=max_concurrency
        )
        runner = asyncio.create_task(batcher.run())
        total = 0
        for size, pause in groups:
            batcher.put(list(range(total, total + size)))
            total += size
            await let_loop_run(pause)
        batcher.close()
        await runner
        return recorder, total

    recorder, total = run(main())
    assert all(1 <= len(b) <= max_size for b in recorder.batches)
    # Handler tasks start in dispatch order, so the batches, joined, are the input.
    assert flatten(recorder.batches) == list(range(total))
    assert recorder.peak <= max_concurrency


# -- when batches fire ----------------------------------------------------------------------


@settings(max_examples=15, deadline=None)
@given(
    max_wait=st.floats(0.005, 0.06),
    max_size=st.integers(2, 64),
    dispatcher_idle=st.booleans(),
)
def test_lone_item_is_flushed_once_max_wait_has_passed(
    max_wait: float, max_size: int, dispatcher_idle: bool
) -> None:
    """A single item does not wait for company forever: it is handled ``max_wait`` after it
    arrived (not before, or batching would be pointless; not much after)."""

    async def main() -> float:
        recorder = Recorder()
        batcher = Batcher(recorder, max_size=max_size, max_wait=max_wait)
        runner = asyncio.create_task(batcher.run())
        if dispatcher_idle:
            await let_loop_run(3)  # the dispatcher parks on an empty buffer first
        start = time.monotonic()
        batcher.put([7])
        await wait_for(lambda: bool(recorder.batches), timeout=max_wait + 5)
        batcher.close()
        await runner
        assert recorder.batches == [[7]]
        return recorder.started_at[0] - start

    elapsed = run(main())
    assert max_wait - 1e-4 <= elapsed < max_wait + SLACK


@settings(max_examples=30, deadline=None)
@given(data=st.data(), max_size=st.integers(1, 64))
def test_full_batch_fires_without_waiting_for_max_wait(data: st.DataObject, max_size: int) -> None:
    """Once ``max_size`` items are buffered (in however many puts) the batch fires at once,
    even with a 10 s ``max_wait``; leftovers wait and are flushed by close()."""
    extra = data.draw(st.integers(0, max_size - 1))  # fewer than a batch left over
    cuts = sorted(data.draw(st.sets(st.integers(1, max_size - 1)))) if max_size > 1 else []
    bounds = [0, *cuts, max_size]
    parts = [list(range(a, b)) for a, b in itertools.pairwise(bounds)]
    parts[-1].extend(range(max_size, max_size + extra))
    pauses = data.draw(st.lists(st.integers(0, 2), min_size=len(parts), max_size=len(parts)))

    async def main() -> tuple[float, float]:
        recorder = Recorder()
        batcher = Batcher(recorder, max_size=max_size, max_wait=10.0)
        runner = asyncio.create_task(batcher.run())
        filled_at = 0.0
        for part, pause in zip(parts, pauses, strict=True):
            filled_at = time.monotonic()
            batcher.put(part)
            await let_loop_run(pause)
        await wait_for(lambda: bool(recorder.batches), timeout=5)
        fired_after = recorder.started_at[0] - filled_at
        assert recorder.batches == [list(range(max_size))]
        assert batcher.buffered == extra

        closed_at = time.monotonic()
        batcher.close()
        await runner
        flushed_after = time.monotonic() - closed_at
        assert flatten(recorder.batches) == list(range(max_size + extra))
        return fired_after, flushed_after

    fired_after, flushed_after = run(main())
    assert fired_after < 1.0
    assert flushed_after < 1.0


async def test_close_flushes_buffered_items_and_run_returns() -> None:
    """close() does not drop what is buffered: run() hands it over at once, then returns."""
    recorder = Recorder()
    batcher = Batcher(recorder, max_size=10, max_wait=10.0)
    runner = asyncio.create_task(batcher.run())
    batcher.put([1, 2, 3])
    batcher.put([4])
    assert batcher.buffered == 4
    start = time.monotonic()
    batcher.close()
    async with asyncio.timeout(5):
        await runner
    assert time.monotonic() - start < 1.0
    assert recorder.batches == [[1, 2, 3, 4]]
    assert batcher.buffered == 0


# -- concurrency ----------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(
    max_concurrency=st.integers(1, 5),
    max_size=st.integers(1, 8),
    extra_batches=st.integers(1, 4),
    compute=st.sampled_from([0.0, 0.001]),
)
def test_max_concurrency_bounds_batches_running_at_once(
    max_concurrency: int, max_size: int, extra_batches: int, compute: float
) -> None:
    """With more full batches ready than slots, exactly ``max_concurrency`` run at once and
    the rest stay buffered until a slot frees; nothing is lost."""
    n = max_size * (max_concurrency + extra_batches)

    async def main() -> Recorder:
        gate = asyncio.Event()
        recorder = Recorder(gate=gate, compute=compute)
        batcher = Batcher(
            recorder, max_size=max_size, max_wait=0.0, max_concurrency=max_concurrency
        )
        runner = asyncio.create_task(batcher.run())
        batcher.put(list(range(n)))
        await wait_for(lambda: recorder.active >= max_concurrency)
        assert recorder.active == max_concurrency
        assert batcher.batches_in_flight == max_concurrency
        assert batcher.buffered == n - max_size * max_concurrency
        gate.set()
        batcher.close()
        await runner
        return recorder

    recorder = run(main())
    assert recorder.peak == max_concurrency
    assert flatten(recorder.batches) == list(range(n))


@settings(max_examples=25, deadline=None)
@given(max_size=st.integers(2, 16), extra=st.integers(0, 20))
def test_next_batch_fills_while_one_computes(max_size: int, extra: int) -> None:
    """With one slot busy, arriving items accumulate: the next batch is full-sized, not the
    single item that happened to arrive first (even with ``max_wait=0``)."""

    async def main() -> Recorder:
        gate = asyncio.Event()
        recorder = Recorder(gate=gate)
        batcher = Batcher(recorder, max_size=max_size, max_wait=0.0, max_concurrency=1)
        runner = asyncio.create_task(batcher.run())
        batcher.put([0])
        await wait_for(lambda: recorder.active == 1)
        for item in range(1, max_size + extra + 1):
            batcher.put([item])
            await let_loop_run(1)  # the dispatcher gets its chance to grab too early
        assert batcher.buffered == max_size + extra
        gate.set()
        batcher.close()
        await runner
        return recorder

    recorder = run(main())
    assert recorder.batches[0] == [0]
    assert recorder.batches[1] == list(range(1, max_size + 1))
    assert flatten(recorder.batches) == list(range(max_size + extra + 1))


# -- handler errors -------------------------------------------------------------------------


class Boom(Exception):
    """A handler failure."""


@pytest.mark.parametrize("max_concurrency", [1, 2])
async def test_handler_error_makes_run_reraise_without_close(max_concurrency: int) -> None:
    """A failing handler fails the pipeline: run() re-raises it without waiting for close(),
    also when the dispatcher is idle on an empty buffer (a free slot) at that moment."""

    async def handle(batch: list[int]) -> None:
        raise Boom(batch)

    batcher = Batcher(handle, max_size=4, max_wait=0.0, max_concurrency=max_concurrency)
    runner = asyncio.create_task(batcher.run())
    batcher.put([1, 2])
    with pytest.raises(Boom) as caught:
        async with asyncio.timeout(5):
            await runner
    assert caught.value.args == ([1, 2],)


async def test_handler_error_stops_dispatching_further_batches() -> None:
    """After a handler error no new batch is started: the buffered rest is not handled."""
    handled: list[list[int]] = []

    async def handle(batch: list[int]) -> None:
        handled.append(batch)
        if batch == [0]:
            raise Boom("first batch")

    batcher = Batcher(handle, max_size=1, max_wait=0.0, max_concurrency=1)
    batcher.put([0, 1, 2])
    with pytest.raises(Boom):
        async with asyncio.timeout(5):
            await batcher.run()
    assert handled == [[0]]


async def test_run_reraises_only_after_other_in_flight_batches_finish() -> None:
    """run() waits for batches already running before it re-raises a handler's error, so
    nothing is left half-done behind the error."""
    gate = asyncio.Event()
    failed = asyncio.Event()
    finished: list[list[int]] = []

    async def handle(batch: list[int]) -> None:
        if batch == [1]:
            failed.set()
            raise Boom("second batch")
        await gate.wait()
        finished.append(batch)

    batcher = Batcher(handle, max_size=1, max_wait=0.0, max_concurrency=2)
    runner = asyncio.create_task(batcher.run())
    batcher.put([0, 1])
    async with asyncio.timeout(5):
        await failed.wait()
    await let_loop_run(5)
    assert not runner.done()
    gate.set()
    with pytest.raises(Boom):
        async with asyncio.timeout(5):
            await runner
    assert finished == [[0]]


# -- the seed's flaw ------------------------------------------------------------------------


async def test_throughput_is_not_capped_by_max_wait() -> None:
    """Regression: the seed slept the full ``max_wait`` even for a full batch, capping it at
    ``max_size / max_wait`` items/s (here 640/s). Full batches must fire immediately."""
    max_size, max_wait, total, chunk = 64, 0.1, 20_000, 50
    cap = max_size / max_wait
    recorder = Recorder()
    batcher = Batcher(recorder, max_size=max_size, max_wait=max_wait)
    start = time.monotonic()
    runner = asyncio.create_task(batcher.run())
    for first in range(0, total, chunk):
        batcher.put(list(range(first, first + chunk)))
        await asyncio.sleep(0)  # let the dispatcher interleave with the producer
    batcher.close()  # flushes the last partial batch at once instead of after max_wait
    await runner
    rate = total / (time.monotonic() - start)
    assert recorder.handled == total
    assert max(len(b) for b in recorder.batches) == max_size
    assert rate > 5_000, f"{rate:.0f} items/s (the seed's cap: {cap:.0f}/s)"


# -- priority lanes -------------------------------------------------------------------------


def test_lanes_must_be_at_least_one() -> None:
    with pytest.raises(ValueError, match="lanes must be at least 1"):
        Batcher(Recorder(), max_size=4, max_wait=0.01, lanes=0)


async def test_a_batch_is_filled_from_lane_0_first() -> None:
    """Buffered items of several lanes: the batch takes lane 0, then 1, then 2, each lane
    in its put order, and what does not fit stays buffered in its lane."""
    batches: list[list[str]] = []

    async def handle(batch: list[str]) -> None:
        batches.append(batch)

    batcher = Batcher(handle, max_size=4, max_wait=10.0, lanes=3)
    batcher.put(["c1", "c2"], lane=2)
    batcher.put(["b1"], lane=1)
    batcher.put(["a1", "a2"], lane=0)
    batcher.put(["b2"], lane=1)
    assert [batcher.buffered_in(lane) for lane in range(3)] == [2, 2, 2]
    assert batcher.buffered == 6
    runner = asyncio.create_task(batcher.run())
    await wait_for(lambda: len(batches) == 1)
    assert batches[0] == ["a1", "a2", "b1", "b2"]
    assert [batcher.buffered_in(lane) for lane in range(3)] == [0, 0, 2]
    batcher.close()
    await runner
    assert batches == [["a1", "a2", "b1", "b2"], ["c1", "c2"]]


async def test_max_wait_runs_from_the_oldest_item_of_any_lane() -> None:
    """A low-lane item that waits is not kept waiting longer because higher-lane items
    arrive after it: the batch fires ``max_wait`` after the first arrival."""
    max_wait = 0.2
    recorder = Recorder()
    batcher = Batcher(recorder, max_size=100, max_wait=max_wait, lanes=3)
    runner = asyncio.create_task(batcher.run())
    start = time.monotonic()
    batcher.put([20], lane=2)
    await asyncio.sleep(max_wait / 2)  # a later arrival, in lane 0
    batcher.put([0], lane=0)
    await wait_for(lambda: bool(recorder.batches), timeout=5)
    fired = recorder.started_at[0] - start
    batcher.close()
    await runner
    assert recorder.batches == [[0, 20]]
    assert max_wait - 1e-3 <= fired < max_wait + SLACK


async def test_partial_take_keeps_the_arrival_time_of_what_is_left() -> None:
    """After a full batch takes part of a lane, the rest is due ``max_wait`` after its own
    arrival, not after the next put."""
    max_wait = 0.1
    recorder = Recorder()
    batcher = Batcher(recorder, max_size=3, max_wait=max_wait, lanes=2)
    batcher.put([10, 11], lane=1)
    batcher.put([0, 1], lane=0)  # 4 buffered: one full batch (0, 1, 10), 11 is left
    start = time.monotonic()
    runner = asyncio.create_task(batcher.run())
    await wait_for(lambda: len(recorder.batches) == 2, timeout=5)
    batcher.close()
    await runner
    assert recorder.batches == [[0, 1, 10], [11]]
    assert recorder.started_at[1] - start < max_wait + SLACK


@settings(max_examples=60, deadline=None)
@given(
    puts=st.lists(
        st.tuples(st.integers(0, 3), st.integers(1, 12), st.integers(0, 3)),
        min_size=1,
        max_size=25,
    ),
    max_size=st.integers(1, 10),
    max_wait=st.sampled_from([0.0, 0.001, 0.005]),
    max_concurrency=st.integers(1, 3),
    compute=st.sampled_from([0.0, 0.001]),
)
def test_lanes_deliver_every_item_once_fifo_per_lane_and_lane_order_within_a_batch(
    puts: list[tuple[int, int, int]],
    max_size: int,
    max_wait: float,
    max_concurrency: int,
    compute: float,
) -> None:
    """Items put into random lanes while batches fire and run: each item is handled
    exactly once, items of one lane keep their put order across batches, no batch is
    larger than ``max_size``, and within a batch lanes never go backwards (a lane-0 item
    never follows a lane-2 item)."""
    lanes = 4

    async def main() -> tuple[list[list[tuple[int, int]]], list[tuple[int, int]]]:
        batches: list[list[tuple[int, int]]] = []

        async def handle(batch: list[tuple[int, int]]) -> None:
            batches.append(list(batch))
            await asyncio.sleep(compute)

        batcher: Batcher[tuple[int, int]] = Batcher(
            handle,
            max_size=max_size,
            max_wait=max_wait,
            max_concurrency=max_concurrency,
            lanes=lanes,
        )
        runner = asyncio.create_task(batcher.run())
        sent: list[tuple[int, int]] = []
        next_seq = [0] * lanes
        for lane, size, pause in puts:
            items = [(lane, next_seq[lane] + i) for i in range(size)]
            next_seq[lane] += size
            sent += items
            batcher.put(items, lane)
            await let_loop_run(pause)
        batcher.close()
        await runner
        return batches, sent

    batches, sent = run(main())
    handled = [item for batch in batches for item in batch]
    assert sorted(handled) == sorted(sent)
    assert len(handled) == len(set(handled))
    assert all(1 <= len(b) <= max_size for b in batches)
    for lane in range(lanes):
        seqs = [seq for item_lane, seq in handled if item_lane == lane]
        assert seqs == sorted(seqs), f"lane {lane} out of order"
    for batch in batches:
        batch_lanes = [lane for lane, _ in batch]
        assert batch_lanes == sorted(batch_lanes), batch


async def test_under_load_lane_0_is_dispatched_before_earlier_lane_2_items() -> None:
    """With the handler busy and every lane filling, what runs next is lane 0, even when
    lane 2's items have waited longer; lane 2 goes only once lanes 0 and 1 are empty."""
    gate = asyncio.Event()
    batches: list[list[tuple[int, int]]] = []

    async def slow(batch: list[tuple[int, int]]) -> None:
        batches.append(batch)
        if len(batches) == 1:
            await gate.wait()  # the first batch holds the only slot
        else:
            await asyncio.sleep(0.001)

    batcher: Batcher[tuple[int, int]] = Batcher(
        slow, max_size=4, max_wait=0.0, max_concurrency=1, lanes=3
    )
    runner = asyncio.create_task(batcher.run())
    batcher.put([(1, -1)], lane=1)
    await wait_for(lambda: len(batches) == 1)
    # Oldest first: lane 2, then lane 1, then lane 0 arrive while the slot is busy.
    for lane in (2, 1, 0):
        batcher.put([(lane, i) for i in range(6)], lane)
        await let_loop_run(2)
    assert [batcher.buffered_in(lane) for lane in range(3)] == [6, 6, 6]
    gate.set()
    batcher.close()
    await runner
    order = [lane for batch in batches[1:] for lane, _ in batch]
    assert order == [0] * 6 + [1] * 6 + [2] * 6
    # Full batches throughout: priority does not cost batch size.
    assert [len(b) for b in batches[1:]] == [4, 4, 4, 4, 2]
