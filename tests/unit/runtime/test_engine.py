"""The engine's loop: every record read, scored and written once, batches flushed on time,
written in order though scored concurrently, models run off the event loop. What each part
of the engine does is pinned in the file named after it (test_backpressure, test_commits,
test_outputs, test_scorer, test_stages, ...)."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from typing import Any

import numpy as np

from headrace import CallableModel
from headrace.record import Record
from helpers import ListSource, MemorySink, records, wait_for
from unit.runtime.engine_helpers import engine


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


async def test_model_calls_loop_scores_on_the_event_loop_with_the_same_outputs() -> None:
    """``model_calls="loop"``: the model runs on the loop's thread; the outputs are those
    of the default, in the same order."""
    threads: set[str] = set()

    def where(xs: list[dict[str, Any]]) -> list[float]:
        threads.add(threading.current_thread().name)
        return [x["x"] * 2 for x in xs]

    outputs = []
    for calls in ("thread", "loop"):
        threads.clear()
        sink = MemorySink()
        model = CallableModel(where, name="w")
        source = ListSource([records(40, partitions=2)[:25], records(40, partitions=2)[25:]])
        summary = await engine(source, sink, model, model_calls=calls).run()
        assert summary.records_out == 40
        outputs.append([(o["source"], o["prediction"]) for o in sink.outputs])
        on_loop = threads == {threading.current_thread().name}
        assert on_loop is (calls == "loop"), threads
    assert outputs[0] == outputs[1]


async def test_model_calls_process_scores_in_processes_and_isolates_what_fails_there() -> None:
    """``model_calls="process"``: the outputs are those of the default; a
    record whose call never returns (past the model timeout) and one whose call ends the
    model's process are dead-lettered on their own, and every other record is scored."""
    import process_models
    from headrace import EngineSettings
    from headrace.runtime.engine import Engine
    from headrace.runtime.scoring import FailurePolicy
    from headrace.runtime.spec import PipelineSpec

    inputs = records(24, partitions=2)
    inputs[5].value["x"] = -2.0  # never returns
    inputs[17].value["x"] = -3.0  # ends its process
    sink, dead = MemorySink(), MemorySink()
    spec = PipelineSpec(
        source=ListSource([inputs[:12], inputs[12:]]),
        model=CallableModel(process_models.troubled, name="troubled"),
        sinks=[sink],
        dead_letter=dead,
        settings=EngineSettings(max_batch_size=4, max_wait=0.005, model_calls="process"),
        failures=FailurePolicy(retries=0, backoff=0.001, max_backoff=0.005, timeout=0.5),
    )
    summary = await Engine(spec).run()
    assert summary.records_out == 22
    scored = {o["input"]["id"]: o["prediction"] for o in sink.outputs}
    want = {r.value["id"]: r.value["x"] * 2 for r in inputs if r.value["x"] >= 0}
    assert scored == want
    failed = {f.record.value["x"]: f.error_type for f in dead.failures}
    assert failed == {-2.0: "model-timeout", -3.0: "model-error"}


async def test_model_calls_process_times_a_call_from_when_a_process_has_it() -> None:
    """A model that takes a second to load in each process, and a model timeout of half
    a second: the wait for the processes (and for the model in them) is not the calls'
    time, so nothing times out and every record is scored."""
    import process_models
    from headrace import EngineSettings
    from headrace.runtime.engine import Engine
    from headrace.runtime.scoring import FailurePolicy
    from headrace.runtime.spec import PipelineSpec

    sink, dead = MemorySink(), MemorySink()
    spec = PipelineSpec(
        source=ListSource([records(40, partitions=2)]),
        model=process_models.SlowToLoad(),
        sinks=[sink],
        dead_letter=dead,
        settings=EngineSettings(max_batch_size=8, max_wait=0.005, model_calls="process"),
        failures=FailurePolicy(retries=0, backoff=0.001, max_backoff=0.005, timeout=0.5),
    )
    summary = await Engine(spec).run()
    assert summary.records_out == 40 and not dead.failures
