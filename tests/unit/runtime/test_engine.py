"""The engine's guarantees, each against the seed flaw it replaces where there is one."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from typing import Any

import numpy as np
import pytest

from headrace import (
    CallableModel,
    Engine,
    EngineSettings,
    Featurizer,
    GeneratorSource,
    PipelineError,
)
from headrace.record import Record
from helpers import ListSource, MemorySink, records, wait_for


def double(xs: list[dict[str, Any]]) -> list[float]:
    return [x["x"] * 2 for x in xs]


def engine(
    source: ListSource | GeneratorSource,
    sink: MemorySink,
    model: Any = None,
    *,
    dead_letter: MemorySink | None = None,
    **settings: Any,
) -> Engine:
    defaults: dict[str, Any] = {"max_batch_size": 16, "max_wait": 0.005, "commit_interval": 0.05}
    defaults.update(settings)
    return Engine(
        source=source,
        model=model or CallableModel(double, name="double", version="7"),
        sinks=[sink],
        dead_letter=dead_letter,
        settings=EngineSettings(**defaults),
    )


async def test_every_record_scored_once_with_provenance() -> None:
    """Each output carries its input, the model name and version, and its source position."""
    rs = records(100, partitions=2)
    sink = MemorySink()
    summary = await engine(ListSource([rs[:60], rs[60:]]), sink).run()
    assert summary.records_out == 100
    ids = [o["input"]["id"] for o in sink.outputs]
    assert sorted(ids) == list(range(100))
    first = next(o for o in sink.outputs if o["input"]["id"] == 3)
    assert first["prediction"] == 6.0
    assert first["model"] == {"name": "double", "version": "7", "sha256": None}
    assert first["source"] == {"topic": "t", "partition": 1, "offset": 1}
    assert set(first) == {
        "key",
        "input",
        "prediction",
        "model",
        "source",
        "event_time",
        "processed_at",
    }


async def test_lone_record_is_flushed_without_a_next_record() -> None:
    """Seed flaw: the batch timeout was only checked when another event arrived."""
    source = ListSource([records(1)], hold_open=True)
    sink = MemorySink()
    eng = engine(source, sink, max_batch_size=64, max_wait=0.05)
    task = asyncio.create_task(eng.run())
    started = time.monotonic()
    await wait_for(lambda: len(sink.outputs) == 1, timeout=2.0)
    assert time.monotonic() - started < 1.0
    source.release.set()
    await task


async def test_sink_stays_open_across_batches() -> None:
    """Seed flaw: `async with self.producer` closed the producer after the first batch."""
    sink = MemorySink()
    await engine(ListSource([records(200)]), sink, max_batch_size=10).run()
    assert len(sink.batches) >= 20
    assert (sink.opened, sink.closed) == (1, 1)


async def test_a_batch_spanning_partitions_commits_every_partition() -> None:
    """Seed flaw: only the last event's partition was checkpointed."""
    rs = records(30, partitions=3)
    source = ListSource([rs])
    await engine(source, MemorySink(), max_batch_size=64).run()
    assert source.committed == {("t", 0): 10, ("t", 1): 10, ("t", 2): 10}


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
    assert (f.stage, f.error_type, f.error) == ("model", "ValueError", "cannot score this")
    assert f.model is not None and f.model.version == "2"
    assert summary.records_failed == 4
    assert source.committed == {("t", 0): 100}


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


async def test_outputs_keep_source_order_per_key_with_concurrent_batches() -> None:
    """Batches finish out of order (random compute time) but are written in order."""
    rng = random.Random(3)

    def jittery(xs: list[dict[str, Any]]) -> list[float]:
        time.sleep(rng.random() * 0.01)
        return [0.0] * len(xs)

    sink = MemorySink()
    await engine(
        ListSource([records(500, keys=7)]),
        sink,
        CallableModel(jittery, name="j"),
        max_batch_size=8,
        max_concurrency=4,
    ).run()
    seen: dict[str, int] = {}
    for o in sink.outputs:
        key, seq = o["input"]["key"], o["input"]["seq"]
        assert seq == seen.get(key, -1) + 1, f"key {key} out of order"
        seen[key] = seq
    assert sum(seen.values()) + len(seen) == 500


async def test_event_loop_keeps_running_while_a_model_computes() -> None:
    """Invariant 6: a blocking model runs in an executor; the loop is never stalled."""
    gaps: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        last = time.monotonic()
        while not stop.is_set():
            await asyncio.sleep(0.005)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    def slow(xs: list[dict[str, Any]]) -> list[float]:
        time.sleep(0.3)  # blocking compute, as a real model's would be
        return [0.0] * len(xs)

    tick = asyncio.create_task(ticker())
    await engine(
        ListSource([records(20)]),
        MemorySink(),
        CallableModel(slow, name="s"),
        max_batch_size=10,
        max_concurrency=1,
    ).run()
    stop.set()
    await tick
    assert max(gaps) < 0.25


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


async def test_commit_waits_for_sink_flush_and_stops_when_flush_fails() -> None:
    """A position is committed only after every sink flushed; a failed flush commits
    nothing and stops the pipeline."""

    class FailingFlush(MemorySink):
        async def flush(self) -> None:
            raise OSError("disk full")

    source = ListSource([records(50)])
    with pytest.raises(PipelineError, match="disk full"):
        await engine(source, FailingFlush()).run()
    assert source.commits == []


async def test_featurize_failures_are_dead_lettered_and_the_rest_scored() -> None:
    rs = records(20)
    rs[4].value["features"] = ["a", 1.0]
    rs[9].value["features"] = [float("nan"), 1.0]
    del rs[11].value["features"]
    dlq, sink = MemorySink("dlq"), MemorySink()
    eng = Engine(
        source=ListSource([rs]),
        model=CallableModel(lambda x: x.sum(axis=1), name="sum"),
        featurizer=Featurizer(vector="features"),
        sinks=[sink],
        dead_letter=dlq,
        settings=EngineSettings(max_batch_size=8, max_wait=0.005),
    )
    await eng.run()
    assert sorted(f.record.offset for f in dlq.failures) == [4, 9, 11]
    assert {f.stage for f in dlq.failures} == {"validate"}
    assert len(sink.outputs) == 17


async def test_graceful_stop_finishes_in_flight_and_commits_what_was_written() -> None:
    source = GeneratorSource(rate=5000)
    sink = MemorySink()
    eng = engine(source, sink, max_batch_size=64)  # type: ignore[arg-type]
    eng.model = CallableModel(lambda xs: [0.0] * len(xs), name="zero")
    commits: list[dict[tuple[str, int], int]] = []

    async def record_commit(positions: Any) -> None:
        commits.append(dict(positions))

    source.commit = record_commit  # type: ignore[method-assign]
    task = asyncio.create_task(eng.run())
    await wait_for(lambda: len(sink.outputs) > 500, timeout=5)
    eng.stop()
    summary = await asyncio.wait_for(task, timeout=5)
    assert summary.stopped
    assert summary.records_in == summary.records_out == len(sink.outputs)
    assert commits[-1][("generator", 0)] == len(sink.outputs)


async def test_async_models_are_awaited() -> None:
    async def predict(xs: list[dict[str, Any]]) -> list[int]:
        await asyncio.sleep(0)
        return [x["id"] for x in xs]

    sink = MemorySink()
    await engine(ListSource([records(30)]), sink, CallableModel(predict, name="a")).run()
    assert sorted(o["prediction"] for o in sink.outputs) == list(range(30))


async def test_numpy_predictions_become_plain_values() -> None:
    sink = MemorySink()
    model = CallableModel(lambda xs: np.arange(len(xs), dtype=np.float32), name="np")
    await engine(ListSource([records(5)]), sink, model, max_batch_size=5).run()
    assert [type(o["prediction"]) for o in sink.outputs] == [float] * 5


async def test_model_runs_on_an_executor_thread() -> None:
    threads: set[str] = set()

    def where(xs: list[Record]) -> list[int]:
        threads.add(threading.current_thread().name)
        return [0] * len(xs)

    await engine(ListSource([records(10)]), MemorySink(), CallableModel(where, name="w")).run()
    assert threads and all(t.startswith("headrace-infer") for t in threads)


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
