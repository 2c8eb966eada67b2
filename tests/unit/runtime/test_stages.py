"""The event stage (headrace.runtime.stages): priority lanes under load, shedding by
in-flight share or by deadline (never the highest lane), and a windowed pipeline refusing
priorities. The windows stage is in test_stages_windows."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from headrace.record import FailedRecord, Record
from headrace.runtime.priority import Priorities, ShedPolicy
from headrace.windows.stage import WindowStage
from helpers import ListSource, MemorySink, records, wait_for
from unit.runtime.engine_helpers import Gate, PollingSource, chunked, make_engine, metric, operator
from unit.runtime.engine_helpers import windowed_engine as engine

LEVELS = ["high", "normal", "low"]


class HeldSink(MemorySink):
    """Takes failures only once ``release`` is set."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.release = asyncio.Event()

    async def write_failures(self, failures: Sequence[FailedRecord]) -> None:
        await self.release.wait()
        await super().write_failures(failures)


def prioritized(levels: Sequence[str | None], *, start: int = 0) -> list[Record]:
    """One decoded record per entry, ``priority`` set to it (left out for ``None``)."""
    rs = records(start + len(levels))[start:]
    for r, level in zip(rs, levels, strict=True):
        if level is not None:
            r.value["priority"] = level
    return rs


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


async def test_a_windowed_pipeline_refuses_priorities() -> None:
    from headrace.runtime.priority import Priorities

    with pytest.raises(ValueError, match="not to windows"):
        engine(
            ListSource([]),
            WindowStage(operator()),
            MemorySink(),
            priorities=Priorities("p", ["high", "low"], "low"),
        )


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
        assert (f.stage, f.error_type) == ("shed", "shed-in-flight")
        assert "above 50%" in f.error
        assert f.record.value["priority"] != "high"
    assert sorted(o["input"]["id"] for o in sink.outputs) == sorted(set(range(100)) - set(expected))
    assert summary.records_shed == len(expected)
    assert summary.records_out == 100 - len(expected)
    assert summary.records_failed == 0
    assert source.committed == {("t", 0): 100}
    by_level = {
        level: metric(eng, "headrace_records_shed_total", reason="shed-in-flight", priority=level)
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
    assert {(f.stage, f.error_type) for f in shed_sink.failures} == {("shed", "shed-deadline")}
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
    assert metric(eng, "headrace_records_shed_total", reason="shed-deadline", priority="none") == 4


def test_a_shedding_policy_needs_a_shed_sink() -> None:
    with pytest.raises(ValueError, match="needs a shed sink"):
        make_engine(
            ListSource([]), Gate(), shedding=ShedPolicy(frozenset({1}), in_flight_above=0.5)
        )
