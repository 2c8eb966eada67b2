"""The engine under load: flow control, priorities, shedding, decode failures set aside, and
the source paused while the model is down. Fakes only: sources and sinks in memory, models
gated by the test."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import pytest

from headrace import CallableModel, Engine, EngineSettings, PipelineError
from headrace.connectors.base import Source
from headrace.record import FailedRecord, Record
from headrace.runtime.priority import Priorities, ShedPolicy
from headrace.runtime.scoring import FailurePolicy
from helpers import ListSource, MemorySink, records, wait_for

LEVELS = ["high", "normal", "low"]
FAST_FAILURES = FailurePolicy(backoff=0.001, max_backoff=0.005)


# -- fakes ---------------------------------------------------------------------------------


class Gate:
    """A model whose calls each take a permit: with none given, every call blocks (in its
    executor thread) until the test opens the gate. Records the ids of each call."""

    def __init__(self, permits: int = 0) -> None:
        self._permits = threading.Semaphore(permits)
        self._lock = threading.Lock()
        self.calls: list[list[int]] = []

    def __call__(self, xs: list[dict[str, Any]]) -> list[float]:
        with self._lock:
            self.calls.append([x["id"] for x in xs])
        if not self._permits.acquire(timeout=10):
            raise RuntimeError("the test never opened the gate")
        return [float(x["id"]) for x in xs]

    def open(self, n: int = 10_000) -> None:
        self._permits.release(n)

    @property
    def scored_order(self) -> list[int]:
        with self._lock:
            return [i for call in self.calls for i in call]


class CountingSource(ListSource):
    """A ListSource that counts the chunks taken from it."""

    def __init__(self, chunks: list[list[Record]], **kwargs: Any) -> None:
        super().__init__(chunks, **kwargs)
        self.taken = 0

    async def chunks(self) -> AsyncIterator[list[Record]]:
        for chunk in self._chunks:
            self.taken += 1
            yield chunk


class PollingSource(Source):
    """A source that must keep being polled (like Kafka): paused, it fetches nothing but
    goes on polling. ``wait_before`` holds chunk ``i`` back until its event is set."""

    keeps_polling = True
    decoded = True

    def __init__(
        self, chunks: list[list[Record]], wait_before: Mapping[int, asyncio.Event] | None = None
    ) -> None:
        self._chunks = chunks
        self.wait_before = dict(wait_before or {})
        self.paused = False
        self.calls: list[bool] = []
        self.polls_while_paused = 0
        self.taken = 0
        self.commits: list[dict[tuple[str, int], int]] = []

    def set_paused(self, paused: bool) -> None:
        self.calls.append(paused)
        self.paused = paused

    async def chunks(self) -> AsyncIterator[list[Record]]:
        while self.taken < len(self._chunks):
            if self.paused:
                self.polls_while_paused += 1
                await asyncio.sleep(0.001)  # one empty poll
                continue
            gate = self.wait_before.get(self.taken)
            if gate is not None and not gate.is_set():
                await gate.wait()
                continue
            chunk = self._chunks[self.taken]
            self.taken += 1
            yield chunk
            await asyncio.sleep(0)  # a real poll awaits I/O

    async def commit(self, positions: Mapping[tuple[str, int], int]) -> None:
        self.commits.append(dict(positions))

    @property
    def committed(self) -> dict[tuple[str, int], int]:
        merged: dict[tuple[str, int], int] = {}
        for c in self.commits:
            merged.update(c)
        return merged


class SteppedSource(PollingSource):
    """The same, for a source the engine pauses by not iterating it."""

    keeps_polling = False


class RawSource(CountingSource):
    """Delivers bytes for the engine's decoder, like Kafka or MQTT."""

    decoded = False


class HeldSink(MemorySink):
    """Takes failures only once ``release`` is set."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.release = asyncio.Event()

    async def write_failures(self, failures: Sequence[FailedRecord]) -> None:
        await self.release.wait()
        await super().write_failures(failures)


def raw_records(n: int, *, size: int | None = None, bad: Sequence[int] = ()) -> list[Record]:
    """``n`` records with JSON bytes and no value; padded to ``size`` bytes each if given;
    the offsets in ``bad`` hold bytes that are not JSON."""
    out: list[Record] = []
    for i in range(n):
        doc: dict[str, Any] = {"id": i, "x": float(i), "pad": ""}
        raw = json.dumps(doc).encode()
        if size is not None:
            doc["pad"] = "p" * (size - len(raw))
            raw = json.dumps(doc).encode()
            assert len(raw) == size
        if i in bad:
            raw = b"{not json" + raw
        out.append(Record(None, None, time.time(), "t", 0, i, raw=raw))
    return out


def prioritized(levels: Sequence[str | None], *, start: int = 0) -> list[Record]:
    """One decoded record per entry, ``priority`` set to it (left out for ``None``)."""
    rs = records(start + len(levels))[start:]
    for r, level in zip(rs, levels, strict=True):
        if level is not None:
            r.value["priority"] = level
    return rs


def chunked(rs: list[Record], size: int) -> list[list[Record]]:
    return [rs[i : i + size] for i in range(0, len(rs), size)]


def make_engine(
    source: Source,
    model: Any,
    *,
    sink: MemorySink | None = None,
    dead_letter: MemorySink | None = None,
    priorities: Priorities | None = None,
    shedding: ShedPolicy | None = None,
    shed_sink: MemorySink | None = None,
    failures: FailurePolicy | None = FAST_FAILURES,
    **settings: Any,
) -> Engine:
    defaults: dict[str, Any] = {
        "max_batch_size": 10,
        "max_wait": 0.005,
        "max_concurrency": 1,
        "commit_interval": 0.02,
    }
    defaults.update(settings)
    return Engine(
        source=source,
        model=CallableModel(model, name="gated"),
        sinks=[sink if sink is not None else MemorySink()],
        dead_letter=dead_letter,
        priorities=priorities,
        shedding=shedding,
        shed_sink=shed_sink,
        failures=failures,
        settings=EngineSettings(**defaults),
    )


def metric(eng: Engine, name: str, **labels: str) -> float:
    value = eng.metrics.registry.get_sample_value(name, labels or None)
    return 0.0 if value is None else value


async def let_loop_run(rounds: int = 20) -> None:
    for _ in range(rounds):
        await asyncio.sleep(0)


# -- flow control --------------------------------------------------------------------------


async def test_a_polling_source_is_paused_at_the_bound_and_resumed_below_the_low_mark() -> None:
    """A source with ``keeps_polling`` is told to pause once in-flight reaches the bound,
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
    """A source without ``keeps_polling`` is simply not iterated while paused; pausing it
    costs nothing, so reading resumes as soon as in-flight work is below the bound (no
    hysteresis: records are read close to when they are scored)."""
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


# -- priorities ----------------------------------------------------------------------------


async def test_under_load_high_priority_records_are_scored_before_earlier_low_ones() -> None:
    """While the model is busy, low-priority records arrive first and high-priority ones
    after; once the model is free, the high ones are scored first."""
    gate = Gate()
    go = asyncio.Event()
    first = prioritized(["normal"] * 4)
    low = prioritized(["low"] * 8, start=4)
    normal = prioritized([None] * 4, start=12)  # no field: the default level
    high = prioritized(["high"] * 8, start=16)
    source = PollingSource([first, low[:4], low[4:], normal, high[:4], high[4:]], {1: go})
    sink = MemorySink()
    eng = make_engine(
        source, gate, sink=sink, priorities=Priorities("priority", LEVELS), max_batch_size=4
    )
    run = asyncio.create_task(eng.run())
    try:
        await wait_for(lambda: len(gate.calls) == 1)  # the model is busy with `first`
        go.set()
        await wait_for(lambda: eng.stats.records_in == 24)
    finally:
        gate.open()
    await asyncio.wait_for(run, 10)
    assert gate.scored_order == list(range(4)) + list(range(16, 24)) + list(range(12, 16)) + list(
        range(4, 12)
    )
    assert [len(call) for call in gate.calls] == [4] * 6
    assert [o["input"]["id"] for o in sink.outputs] == gate.scored_order


async def test_a_priority_value_that_is_not_a_level_does_not_stop_the_pipeline() -> None:
    """Any value of the priority field that is not a level, even one that cannot be a
    dict key, puts the record in the default lane."""
    rs = prioritized(["high", "low", "urgent", None])
    rs[2].value["priority"] = ["high"]
    rs[3].value["priority"] = {"level": "high"}
    sink = MemorySink()
    eng = make_engine(
        ListSource([rs]), Gate(permits=100), sink=sink, priorities=Priorities("priority", LEVELS)
    )
    summary = await asyncio.wait_for(eng.run(), 10)
    assert summary.records_out == 4
    assert [o["input"]["id"] for o in sink.outputs] == [0, 2, 3, 1]


# -- shedding ------------------------------------------------------------------------------


async def test_in_flight_shedding_sheds_only_sheddable_lanes_and_commits_past_them() -> None:
    """Above half the bound, arriving normal and low records are shed (never high ones);
    each reaches the shed sink with its reason, the summary and metrics count them, and
    the committed position moves past them."""
    gate = Gate()
    levels = [LEVELS[i % 3] for i in range(100)]
    source = ListSource(chunked(prioritized(levels), 10))
    sink, shed_sink = MemorySink(), HeldSink("shed")
    eng = make_engine(
        source,
        gate,
        sink=sink,
        priorities=Priorities("priority", LEVELS),
        shedding=ShedPolicy(frozenset({1, 2}), in_flight_above=0.5),
        shed_sink=shed_sink,
        max_in_flight=100,
    )
    run = asyncio.create_task(eng.run())
    try:
        # Nothing finishes before all 100 were read: in flight before each chunk arrives
        # is 0, 10, 20, ...
        await wait_for(lambda: eng.stats.records_in == 100 and eng.flow.over_high)
    finally:
        shed_sink.release.set()
        gate.open()
    summary = await asyncio.wait_for(run, 10)

    # Judged by how full the pipeline was before each chunk: chunks 1-6 find it at most
    # 50% full and are kept; chunks 7-10 find it above and shed.
    expected = [i for i in range(60, 100) if i % 3 != 0]
    assert sorted(f.record.value["id"] for f in shed_sink.failures) == expected
    for f in shed_sink.failures:
        assert (f.stage, f.error_type) == ("shed", "in-flight")
        assert "above 50%" in f.error
        assert f.record.value["priority"] != "high"
    assert sorted(o["input"]["id"] for o in sink.outputs) == sorted(set(range(100)) - set(expected))
    assert summary.records_shed == len(expected)
    assert summary.records_out == 100 - len(expected)
    assert summary.records_failed == 0
    assert source.committed == {("t", 0): 100}
    by_level = {
        level: metric(eng, "headrace_records_shed_total", reason="in-flight", priority=level)
        for level in LEVELS
    }
    assert by_level == {
        "high": 0,
        "normal": sum(1 for i in expected if i % 3 == 1),
        "low": sum(1 for i in expected if i % 3 == 2),
    }


async def test_deadline_shedding_sheds_old_records_of_sheddable_lanes() -> None:
    """Records older than the deadline when their batch is formed are shed, unless they
    are of the highest priority; fresh ones are scored."""
    levels = ["high", "normal", "low", None] * 5
    rs = prioritized(levels)
    old = {i for i in range(20) if i % 2 == 0}
    for i in old:
        rs[i].event_time -= 120
    sink, shed_sink = MemorySink(), MemorySink("shed")
    source = ListSource(chunked(rs, 5))
    eng = make_engine(
        source,
        Gate(permits=100),
        sink=sink,
        priorities=Priorities("priority", LEVELS),
        shedding=ShedPolicy(frozenset({1, 2}), max_event_age=60.0),
        shed_sink=shed_sink,
    )
    summary = await asyncio.wait_for(eng.run(), 10)
    expected = sorted(i for i in old if levels[i] != "high")
    assert sorted(f.record.value["id"] for f in shed_sink.failures) == expected
    assert {(f.stage, f.error_type) for f in shed_sink.failures} == {("shed", "deadline")}
    assert all("beyond the deadline of 60.0s" in f.error for f in shed_sink.failures)
    assert sorted(o["input"]["id"] for o in sink.outputs) == sorted(set(range(20)) - set(expected))
    assert summary.records_shed == len(expected)
    assert source.committed == {("t", 0): 20}


async def test_without_priorities_lane_1_stands_for_every_record() -> None:
    rs = records(10)
    for r in rs[:4]:
        r.event_time -= 120
    sink, shed_sink = MemorySink(), MemorySink("shed")
    eng = make_engine(
        ListSource([rs]),
        Gate(permits=100),
        sink=sink,
        shedding=ShedPolicy(frozenset({1}), max_event_age=60.0),
        shed_sink=shed_sink,
    )
    summary = await asyncio.wait_for(eng.run(), 10)
    assert [f.record.value["id"] for f in shed_sink.failures] == [0, 1, 2, 3]
    assert [o["input"]["id"] for o in sink.outputs] == list(range(4, 10))
    assert summary.records_shed == 4
    assert metric(eng, "headrace_records_shed_total", reason="deadline", priority="none") == 4


def test_a_shedding_policy_needs_a_shed_sink() -> None:
    with pytest.raises(ValueError, match="needs a shed sink"):
        make_engine(
            ListSource([]), Gate(), shedding=ShedPolicy(frozenset({1}), in_flight_above=0.5)
        )


# -- records set aside before batching -----------------------------------------------------


async def test_decode_failures_are_dead_lettered_and_the_rest_scored() -> None:
    bad = [3, 17, 18, 41]
    source = RawSource(chunked(raw_records(50, bad=bad), 10))
    sink, dlq = MemorySink(), MemorySink("dlq")
    eng = make_engine(source, Gate(permits=100), sink=sink, dead_letter=dlq)
    summary = await asyncio.wait_for(eng.run(), 10)
    assert sorted(f.record.offset for f in dlq.failures) == bad
    assert {f.stage for f in dlq.failures} == {"decode"}
    assert all(f.record.raw is not None and f.model is None for f in dlq.failures)
    assert sorted(o["input"]["id"] for o in sink.outputs) == sorted(set(range(50)) - set(bad))
    assert summary.records_failed == 4 and summary.records_out == 46
    assert metric(eng, "headrace_records_failed_total", stage="decode") == 4
    assert source.committed == {("t", 0): 50}


async def test_a_failing_dead_letter_sink_stops_before_committing_the_record() -> None:
    """A decode failure whose dead letter cannot be written stops the pipeline, and the
    committed position stays at or below it."""

    class BrokenDeadLetters(MemorySink):
        async def write_failures(self, failures: Sequence[FailedRecord]) -> None:
            raise OSError("dead-letter store unavailable")

    source = RawSource(chunked(raw_records(100, bad=[30]), 10))
    eng = make_engine(source, Gate(permits=100), dead_letter=BrokenDeadLetters("dlq"))
    with pytest.raises(PipelineError, match="dead-letter store unavailable"):
        await asyncio.wait_for(eng.run(), 10)
    assert source.committed.get(("t", 0), 0) <= 30


async def test_without_a_dead_letter_sink_a_decode_failure_stops_before_its_position() -> None:
    source = RawSource(chunked(raw_records(50, bad=[22]), 10))
    with pytest.raises(PipelineError, match=r"t\[0\]@22 failed at stage 'decode'"):
        await asyncio.wait_for(make_engine(source, Gate(permits=100)).run(), 10)
    assert source.committed.get(("t", 0), 0) <= 22


async def test_a_failing_shed_sink_stops_before_committing_the_shed_record() -> None:
    class BrokenShedSink(MemorySink):
        async def write_failures(self, failures: Sequence[FailedRecord]) -> None:
            raise OSError("shed store unavailable")

    rs = records(40)
    rs[25].event_time -= 120
    source = ListSource(chunked(rs, 10))
    eng = make_engine(
        source,
        Gate(permits=100),
        shedding=ShedPolicy(frozenset({1}), max_event_age=60.0),
        shed_sink=BrokenShedSink("shed"),
    )
    with pytest.raises(PipelineError, match="shed store unavailable"):
        await asyncio.wait_for(eng.run(), 10)
    assert source.committed.get(("t", 0), 0) <= 25


# -- the model is down ---------------------------------------------------------------------


class Switch:
    def __init__(self) -> None:
        self.up = True

    def __call__(self, xs: list[dict[str, Any]]) -> list[float]:
        if not self.up:
            raise ConnectionError("model server unreachable")
        return [float(x["id"]) for x in xs]


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
    """A source without ``keeps_polling`` is not asked for its next chunk while the model
    is down (the chunk already awaited when the breaker opened is the allowance)."""
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
