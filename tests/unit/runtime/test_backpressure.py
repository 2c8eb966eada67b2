"""Backpressure (headrace.runtime.backpressure): reading pauses at the in-flight bound (records
or bytes) and while the model is down; a polling source is told to pause and goes on being
polled, a plain one is simply not read. First through the engine, then Backpressure alone."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Collection, Sequence
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from headrace import CallableModel
from headrace.connectors.base import PartitionedSource, PartitionKey, Source
from headrace.observe.metrics import PipelineMetrics
from headrace.record import Record
from headrace.runtime.backpressure import Backpressure
from headrace.runtime.flow import FlowControl
from helpers import ListSource, MemorySink, records, wait_for
from unit.runtime.engine_helpers import (
    Gate,
    PollingSource,
    RawSource,
    ScriptedSource,
    chunked,
    engine,
    make_engine,
    metric,
    raw_records,
)


class CountingSource(ListSource):
    """A ListSource that counts the chunks taken from it."""

    def __init__(self, chunks: list[list[Record]], **kwargs: Any) -> None:
        super().__init__(chunks, **kwargs)
        self.taken = 0

    async def chunks(self) -> AsyncIterator[list[Record]]:
        for chunk in self._chunks:
            self.taken += 1
            yield chunk


class SteppedSource(ScriptedSource):
    """The same, for a source the engine pauses by not iterating it (never told to)."""


class Switch:
    def __init__(self) -> None:
        self.up = True

    def __call__(self, xs: list[dict[str, Any]]) -> list[float]:
        if not self.up:
            raise ConnectionError("model server unreachable")
        return [float(x["id"]) for x in xs]


async def let_loop_run(rounds: int = 20) -> None:
    for _ in range(rounds):
        await asyncio.sleep(0)


# -- the in-flight bound -------------------------------------------------------------------


async def test_in_flight_records_stay_within_the_limit() -> None:
    """Invariant 3: with a slow model, reading pauses at the bound instead of buffering;
    one chunk read before the pause is the allowance."""

    def slow(xs: list[dict[str, Any]]) -> list[float]:
        time.sleep(0.002)
        return [0.0] * len(xs)

    chunks = [records(1000)[i : i + 50] for i in range(0, 1000, 50)]
    eng = engine(
        ListSource(chunks),
        MemorySink(),
        CallableModel(slow, name="s"),
        max_in_flight=200,
        max_batch_size=32,
    )
    summary = await eng.run()
    assert summary.records_out == 1000
    assert eng.flow.peak <= 200 + 50 - 1
    assert summary.peak_in_flight == eng.flow.peak


async def test_a_polling_source_is_paused_at_the_bound_and_resumed_below_the_low_mark() -> None:
    """A :class:`PartitionedSource` is told to pause once in-flight reaches the bound,
    goes on being polled while paused, and is told to resume once enough finished."""
    gate = Gate()
    source = PollingSource(chunked(records(200), 10))
    eng = make_engine(source, gate, max_in_flight=50, resume_at=0.5)
    run = asyncio.create_task(eng.run())
    try:
        await wait_for(lambda: source.calls == [True])
        assert eng.flow.count == 50 and source.taken == 5
        assert metric(eng, "headrace_source_paused", reason="in-flight") == 1
        polls = source.polls_while_paused
        await wait_for(lambda: source.polls_while_paused > polls + 3)  # still polled
        assert source.taken == 5
    finally:
        gate.open()
    summary = await asyncio.wait_for(run, 10)
    assert summary.records_out == 200
    assert summary.peak_in_flight <= 50 + 10 - 1
    # Paused and resumed in turn, and left running.
    assert len(source.calls) >= 2
    assert source.calls == [i % 2 == 0 for i in range(len(source.calls))]
    assert source.calls[-1] is False
    assert metric(eng, "headrace_source_paused", reason="in-flight") == 0
    assert source.committed == {("t", 0): 200}


async def test_a_plain_source_stops_being_read_at_the_bound_and_resumes_below_it() -> None:
    """A plain source is simply not iterated while paused; pausing it costs nothing, so
    reading resumes as soon as in-flight work is below the bound (no hysteresis: records
    are read close to when they are scored)."""
    gate = Gate()
    source = CountingSource(chunked(records(100), 10))
    # Bound 35: paused at 40 (one chunk over); one batch of 10 done leaves 30, below it.
    eng = make_engine(source, gate, max_in_flight=35, resume_at=0.5)
    run = asyncio.create_task(eng.run())
    try:
        await wait_for(lambda: eng.flow.over_high and len(gate.calls) == 1)
        assert source.taken == 4 and eng.flow.count == 40
        await let_loop_run()
        assert source.taken == 4, "read on while at the bound"
        gate.open(1)
        await wait_for(lambda: source.taken > 4)  # 30 in flight: resumed
    finally:
        gate.open()
    summary = await asyncio.wait_for(run, 10)
    assert summary.records_out == 100
    assert eng.flow.peak == summary.peak_in_flight <= 35 + 10 - 1
    assert source.committed == {("t", 0): 100}


async def test_the_byte_bound_pauses_reading_long_before_the_record_bound() -> None:
    gate = Gate()
    source = RawSource(chunked(raw_records(60, size=100), 3))
    eng = make_engine(
        source, gate, max_in_flight=10_000, max_in_flight_bytes=1000, max_batch_size=3
    )
    run = asyncio.create_task(eng.run())
    try:
        await wait_for(lambda: eng.flow.over_high)
        await let_loop_run()
        assert source.taken == 4  # 4 chunks of 300 bytes: 1200 >= 1000
        assert (eng.flow.count, eng.flow.bytes) == (12, 1200)
        assert metric(eng, "headrace_source_paused", reason="in-flight") == 1
    finally:
        gate.open()
    summary = await asyncio.wait_for(run, 10)
    assert summary.records_out == 60
    assert summary.peak_in_flight_bytes == eng.flow.peak_bytes <= 1000 + 300 - 1
    assert summary.peak_in_flight == 12
    assert (eng.flow.count, eng.flow.bytes) == (0, 0)
    assert metric(eng, "headrace_in_flight_bytes") == 0


# -- the model is down ---------------------------------------------------------------------


async def test_the_source_is_paused_while_the_model_is_down() -> None:
    """A model failing on everything pauses reading (reason ``model-down``) and
    dead-letters nothing; the paused source goes on being polled; when the model answers,
    reading resumes and every record is scored."""
    switch = Switch()
    go1, go2 = asyncio.Event(), asyncio.Event()
    source = PollingSource(chunked(records(40), 10), {1: go1, 2: go2})
    sink, dlq = MemorySink(), MemorySink("dlq")
    eng = make_engine(source, switch, sink=sink, dead_letter=dlq)
    run = asyncio.create_task(eng.run())
    await wait_for(lambda: len(sink.outputs) == 10)  # a first batch: the model answered
    switch.up = False
    go1.set()
    await wait_for(lambda: source.calls == [True])
    assert eng.caller.down
    assert metric(eng, "headrace_source_paused", reason="model-down") == 1
    assert metric(eng, "headrace_source_paused", reason="in-flight") == 0
    assert metric(eng, "headrace_model_circuit_open") == 1
    go2.set()  # the next chunk is there, but a paused source does not fetch it
    polls = source.polls_while_paused
    await wait_for(lambda: source.polls_while_paused > polls + 3)
    assert source.taken == 2 and not dlq.failures

    switch.up = True
    summary = await asyncio.wait_for(run, 10)
    assert source.calls == [True, False]
    assert metric(eng, "headrace_source_paused", reason="model-down") == 0
    assert metric(eng, "headrace_model_circuit_open") == 0
    assert summary.records_out == 40 and summary.records_failed == 0 and not dlq.failures
    assert sorted(o["input"]["id"] for o in sink.outputs) == list(range(40))
    assert source.committed == {("t", 0): 40}


async def test_a_plain_source_is_not_read_while_the_model_is_down() -> None:
    """A plain source is not asked for its next chunk while the model is down (the chunk
    already awaited when the breaker opened is the allowance)."""
    switch = Switch()
    switch.up = False
    go1, go2 = asyncio.Event(), asyncio.Event()
    source = SteppedSource(chunked(records(30), 10), {1: go1, 2: go2})
    sink, dlq = MemorySink(), MemorySink("dlq")
    eng = make_engine(source, switch, sink=sink, dead_letter=dlq)
    run = asyncio.create_task(eng.run())
    await wait_for(lambda: eng.caller.down)
    assert metric(eng, "headrace_source_paused", reason="model-down") == 1
    go1.set()
    await wait_for(lambda: source.taken == 2)
    go2.set()
    await let_loop_run()
    assert source.taken == 2
    assert source.calls == []  # not a polling source: never told to pause
    switch.up = True
    summary = await asyncio.wait_for(run, 10)
    assert summary.records_out == 30 and not dlq.failures
    assert source.committed == {("t", 0): 30}


# -- Backpressure alone --------------------------------------------------------------------


class FakePolled(PartitionedSource):
    """A source that must keep being polled, reduced to what Backpressure tells it: every
    ``set_paused`` and ``pause_partitions`` is recorded."""

    def __init__(self, assigned: Sequence[PartitionKey] = (("t", 0),)) -> None:
        self._assigned = list(assigned)
        self.calls: list[bool] = []
        self.partition_calls: list[tuple[set[PartitionKey], bool]] = []

    async def chunks(self) -> AsyncIterator[list[Record]]:
        for chunk in ():
            yield chunk

    def set_paused(self, paused: bool) -> None:
        self.calls.append(paused)

    def pause_partitions(self, partitions: Collection[PartitionKey], paused: bool) -> None:
        self.partition_calls.append((set(partitions), paused))

    def assigned(self) -> Sequence[PartitionKey]:
        return self._assigned


def backpressure(
    source: Source, *, max_records: int = 10, resume_at: float = 0.5, fair_shares: bool = False
) -> Backpressure:
    return Backpressure(
        FlowControl(max_records, resume_at=resume_at),
        source,
        PipelineMetrics(),
        resume_at=resume_at,
        fair_shares=fair_shares,
    )


def paused_gauge(bp: Backpressure, reason: str) -> float | None:
    return bp.metrics.registry.get_sample_value("headrace_source_paused", {"reason": reason})


def test_reading_stays_paused_while_any_reason_holds() -> None:
    bp = backpressure(ListSource([]))
    assert not bp.paused
    bp.pause("in-flight", True)
    bp.pause("model-down", True)
    assert bp.paused and bp.reasons == {"in-flight", "model-down"}
    bp.pause("in-flight", False)
    assert bp.paused and bp.reasons == {"model-down"}
    bp.pause("model-down", False)
    assert not bp.paused and bp.reasons == set()


def test_a_polling_source_is_told_only_when_reading_pauses_or_resumes() -> None:
    source = FakePolled()
    bp = backpressure(source)
    bp.pause("in-flight", True)
    bp.pause("in-flight", True)  # already paused for it
    bp.pause("model-down", True)  # paused already, for another reason
    bp.pause("in-flight", False)
    assert source.calls == [True]
    bp.pause("model-down", False)
    bp.pause("model-down", False)  # not paused for it
    assert source.calls == [True, False]


def test_the_paused_gauge_follows_each_reason() -> None:
    bp = backpressure(FakePolled())
    bp.pause("in-flight", True)
    bp.pause("model-down", True)
    bp.pause("in-flight", False)
    assert (paused_gauge(bp, "in-flight"), paused_gauge(bp, "model-down")) == (0, 1)


async def test_a_plain_source_waits_in_resumed_while_paused() -> None:
    bp = backpressure(ListSource([]))
    bp.pause("model-down", True)
    waiting = asyncio.create_task(bp.resumed())
    await let_loop_run()
    assert not waiting.done()
    bp.pause("model-down", False)
    async with asyncio.timeout(5):
        await waiting


async def test_a_polling_source_goes_on_being_read_while_paused() -> None:
    """Its pause is ``set_paused``: the reader goes on polling it."""
    bp = backpressure(FakePolled())
    bp.pause("model-down", True)
    async with asyncio.timeout(5):
        await bp.resumed()


def test_a_plain_source_resumes_below_the_bound_and_a_polling_one_below_the_low_mark() -> None:
    plain, polled = backpressure(ListSource([])), backpressure(FakePolled())
    rs = records(10)
    for bp in (plain, polled):
        bp.admit(rs[:9], 0)
        bp.check()
        assert not bp.paused  # 9 of 10
        bp.admit(rs[9:], 0)
        bp.check()
        assert bp.reasons == {"in-flight"}
        bp.release(rs[:1], 0)  # 9 in flight: below the bound, above the low mark (5)
    assert not plain.paused
    assert polled.paused
    polled.release(rs[1:5], 0)  # 5: at the low mark
    assert not polled.paused


def test_a_partition_holding_its_share_is_paused_alone_and_resumed_once_drained() -> None:
    """With two partitions assigned and a bound of 10, each may hold 5; one over it is
    paused by itself, and resumed once down to 2 (``resume_at`` of its share)."""
    source = FakePolled(assigned=[("t", 0), ("t", 1)])
    bp = backpressure(source, fair_shares=True)
    rs = records(5)  # all of partition 0
    bp.admit(rs[:4], 0)
    assert source.partition_calls == []
    bp.admit(rs[4:], 0)
    assert source.partition_calls == [({("t", 0)}, True)]
    assert bp.held == {("t", 0)} and not bp.paused  # reading goes on for the others
    bp.release(rs[:2], 0)  # 3 left
    assert len(source.partition_calls) == 1
    bp.release(rs[2:3], 0)  # 2 left
    assert source.partition_calls[1:] == [({("t", 0)}, False)]
    assert bp.held == set()


def test_only_a_polling_source_gets_fair_shares() -> None:
    bp = backpressure(ListSource([]), fair_shares=True)
    assert not bp.fair_shares
    bp.admit(records(10), 0)
    assert bp.held == set()


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(["in-flight", "model-down", "changelog"]), st.booleans()))
)
def test_set_paused_is_called_exactly_on_each_transition(moves: list[tuple[str, bool]]) -> None:
    """Whatever reasons come and go, reading is paused exactly while one holds, and a
    polling source hears of each change between paused and running, and of nothing else."""
    source = FakePolled()
    bp = backpressure(source)
    holding: set[str] = set()
    expected_calls: list[bool] = []
    for reason, on in moves:
        before = bool(holding)
        if on:
            holding.add(reason)
        else:
            holding.discard(reason)
        if bool(holding) != before:
            expected_calls.append(bool(holding))
        bp.pause(reason, on)
        assert bp.paused == bool(holding) and bp.reasons == holding
    assert source.calls == expected_calls
