"""Outputs (headrace.runtime.outputs): sinks stay open across batches; records that fail
(model, featurize or decode failures) go to the dead-letter sink and the rest are scored;
a dead-letter or shed sink that fails, or no dead-letter sink at all, stops the pipeline
before the record's position is committed."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from headrace import CallableModel, EngineSettings, Featurizer, PipelineError
from headrace.record import FailedRecord
from headrace.runtime.engine import Engine
from headrace.runtime.priority import ShedPolicy
from headrace.runtime.spec import PipelineSpec
from helpers import ListSource, MemorySink, records, wait_for
from unit.runtime.engine_helpers import (
    Gate,
    RawSource,
    chunked,
    engine,
    make_engine,
    metric,
    raw_records,
)

# -- sinks ---------------------------------------------------------------------------------


async def test_sink_stays_open_across_batches() -> None:
    """Seed flaw: `async with self.producer` closed the producer after the first batch."""
    sink = MemorySink()
    await engine(ListSource([records(200)]), sink, max_batch_size=10).run()
    assert len(sink.batches) >= 20
    assert (sink.opened, sink.closed) == (1, 1)


# -- records the model fails on ------------------------------------------------------------


async def test_poison_records_are_isolated_by_bisection() -> None:
    """Seed flaw: a model exception lost the whole batch. Only the failing records are
    dead-lettered, with the model version and error; the rest are scored."""
    poison = {7, 20, 21, 63}

    def picky(xs: list[dict[str, Any]]) -> list[float]:
        if any(x["id"] in poison for x in xs):
            raise ValueError("cannot score this")
        return [x["x"] for x in xs]

    sink, dlq = MemorySink(), MemorySink("dlq")
    source = ListSource([records(100)])
    summary = await engine(
        source,
        sink,
        CallableModel(picky, name="picky", version="2"),
        dead_letter=dlq,
        max_batch_size=32,
    ).run()
    assert sorted(o["input"]["id"] for o in sink.outputs) == sorted(set(range(100)) - poison)
    assert sorted(f.record.value["id"] for f in dlq.failures) == sorted(poison)
    f = dlq.failures[0]
    assert (f.stage, f.error_type, f.error) == ("model", "model-error", "cannot score this")
    assert f.model is not None and f.model.version == "2"
    assert summary.records_failed == 4
    assert source.committed == {("t", 0): 100}


async def test_wrong_number_of_outputs_is_an_error_not_a_truncation() -> None:
    """Seed flaw: zip() silently dropped records when a model returned too few outputs."""
    dlq = MemorySink("dlq")
    sink = MemorySink()
    await engine(
        ListSource([records(10)]),
        sink,
        CallableModel(lambda xs: [1.0], name="short"),
        dead_letter=dlq,
        max_batch_size=10,
    ).run()
    # Bisection reaches single records, where one output is the right count.
    assert len(sink.outputs) == 10 and not dlq.failures

    # A model that fails for every record, from the start, is down, not poisoned: it
    # holds the records (nothing dead-lettered, nothing committed) until it is stopped.
    dlq = MemorySink("dlq")
    source = ListSource([records(10)])
    eng = engine(source, MemorySink(), CallableModel(lambda xs: [], name="none"), dead_letter=dlq)
    run = asyncio.create_task(eng.run())
    await wait_for(lambda: eng.caller.down)
    eng.stop()
    with pytest.raises(PipelineError, match="model was down"):
        await run
    assert not dlq.failures and source.committed.get(("t", 0), 0) == 0


async def test_without_dead_letter_a_failure_stops_before_committing_it() -> None:
    """Seed flaw: a checkpoint could advance past a batch the model failed on."""

    def fails_on_50(xs: list[dict[str, Any]]) -> list[float]:
        if any(x["id"] == 50 for x in xs):
            raise RuntimeError("boom")
        return [0.0] * len(xs)

    source = ListSource([records(100)])
    eng = engine(source, MemorySink(), CallableModel(fails_on_50, name="m"), max_batch_size=10)
    with pytest.raises(PipelineError, match=r"t\[0\]@50 failed at stage 'model'"):
        await eng.run()
    assert source.committed.get(("t", 0), 0) <= 50


async def test_a_failed_dead_letter_write_stops_before_committing_the_record() -> None:
    """A record is never both unwritten and committed: when the dead-letter sink fails,
    the pipeline stops and the position stays below the record it could not set aside."""

    class BrokenDeadLetters(MemorySink):
        async def write_failures(self, failures: Any) -> None:
            raise OSError("dead-letter store unavailable")

    def fails_on_30(xs: list[dict[str, Any]]) -> list[float]:
        if any(x["id"] == 30 for x in xs):
            raise ValueError("poison")
        return [0.0] * len(xs)

    source = ListSource([records(100)])
    eng = engine(
        source,
        MemorySink(),
        CallableModel(fails_on_30, name="m"),
        dead_letter=BrokenDeadLetters("dlq"),
        max_batch_size=10,
    )
    with pytest.raises(PipelineError, match="dead-letter store unavailable"):
        await eng.run()
    assert source.committed.get(("t", 0), 0) <= 30


# -- records set aside before scoring ------------------------------------------------------


async def test_featurize_failures_are_dead_lettered_and_the_rest_scored() -> None:
    rs = records(20)
    rs[4].value["features"] = ["a", 1.0]
    rs[9].value["features"] = [float("nan"), 1.0]
    del rs[11].value["features"]
    dlq, sink = MemorySink("dlq"), MemorySink()
    eng = Engine(
        PipelineSpec(
            source=ListSource([rs]),
            model=CallableModel(lambda x: x.sum(axis=1), name="sum"),
            featurizer=Featurizer(vector="features"),
            sinks=[sink],
            dead_letter=dlq,
            settings=EngineSettings(max_batch_size=8, max_wait=0.005),
        )
    )
    await eng.run()
    assert sorted(f.record.offset for f in dlq.failures) == [4, 9, 11]
    assert {f.stage for f in dlq.failures} == {"validate"}
    assert len(sink.outputs) == 17


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
