"""headrace.testing: the source's input and markers, the sink's record of what was written,
each through a real pipeline run."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from headrace import CallableModel, Pipeline, PipelineError
from headrace.testing import (
    Crash,
    CrashError,
    EndOfInput,
    Input,
    Pause,
    TestingBytesSource,
    TestingSink,
    TestingSource,
)
from helpers import wait_for


def double(values: list[Any]) -> list[float]:
    return [v["x"] * 2 for v in values]


def pipeline(
    source: TestingSource, sink: TestingSink, dead_letter: TestingSink | None = None
) -> Pipeline:
    p = (
        Pipeline("under-test")
        .source(source)
        .model(CallableModel(double, name="double", version="1"))
        .batching(max_size=8, max_wait=0.005)
        .sink(sink)
    )
    return p.dead_letter(dead_letter) if dead_letter is not None else p


async def run(p: Pipeline) -> int:
    summary = await p.run_async(install_signal_handlers=False)
    return summary.records_out


async def test_inputs_keep_their_key_event_time_and_partition() -> None:
    source = TestingSource(
        [
            {"x": 1},
            Input({"x": 2}, key="a", event_time=10.0, partition=1),
            Input({"x": 3}, key="b", partition=1),
        ],
        topic="events",
    )
    sink = TestingSink()
    before = time.time()
    assert await run(pipeline(source, sink)) == 3
    out = {o["input"]["x"]: o for o in sink.outputs}
    assert [(o["key"], o["source"]) for o in (out[1], out[2], out[3])] == [
        (None, {"topic": "events", "partition": 0, "offset": 0}),
        ("a", {"topic": "events", "partition": 1, "offset": 0}),
        ("b", {"topic": "events", "partition": 1, "offset": 1}),
    ]
    assert out[2]["event_time"] == 10.0
    assert out[1]["event_time"] >= before  # no event time: when it was read
    assert sink.predictions == [2, 4, 6]
    assert source.committed == {("events", 0): 1, ("events", 1): 2}
    assert (sink.opened, sink.closed) == (1, 1) and sink.flushes >= 1
    assert sum(len(b) for b in sink.batches) == 3


async def test_a_crash_fails_the_run_and_a_restart_goes_past_it() -> None:
    """Nothing is lost: what was not committed before the crash is read again."""
    source = TestingSource([{"x": i} for i in range(10)] + [Crash()] + [{"x": 10}])
    sink = TestingSink()
    with pytest.raises(PipelineError, match="crashed on purpose") as failed:
        await run(pipeline(source, sink))
    assert isinstance(failed.value.__cause__, CrashError)
    committed = source.committed.get(("testing", 0), 0)
    assert await run(pipeline(source, sink)) == 11 - committed
    assert {o["input"]["x"] for o in sink.outputs} == set(range(11))
    assert source.committed == {("testing", 0): 11}
    assert await run(pipeline(source, sink)) == 0  # a third run: nothing left to read


async def test_a_crash_raises_the_error_it_was_given() -> None:
    source = TestingSource([{"x": 1}, Crash(ConnectionResetError("the broker went away"))])
    with pytest.raises(PipelineError, match="broker went away") as failed:
        await run(pipeline(source, TestingSink()))
    assert isinstance(failed.value.__cause__, ConnectionResetError)


async def test_a_pause_until_an_event_holds_the_rest_back() -> None:
    """The pipeline scores what it has while the source waits."""
    go = asyncio.Event()
    source = TestingSource([{"x": 1}, {"x": 2}, Pause(until=go), {"x": 3}])
    sink = TestingSink()
    task = asyncio.create_task(run(pipeline(source, sink)))
    await wait_for(lambda: len(sink.outputs) == 2)
    await asyncio.sleep(0.05)
    assert len(sink.outputs) == 2 and not task.done()
    go.set()
    assert await task == 3
    assert sink.predictions == [2, 4, 6]


async def test_a_pause_for_seconds() -> None:
    source = TestingSource([{"x": 1}, Pause(0.2), {"x": 2}])
    sink = TestingSink()
    assert await run(pipeline(source, sink)) == 2
    first, second = sink.outputs
    # Read 0.2 s apart (the event time of an input without one is when it was read; the
    # loop's clock may round a little), and the first scored meanwhile.
    assert second["event_time"] - first["event_time"] > 0.19
    assert first["processed_at"] < second["event_time"]


async def test_end_of_input_ends_a_run_and_the_next_goes_on_after_it() -> None:
    source = TestingSource([{"x": 1}, {"x": 2}, EndOfInput(), {"x": 3}])
    sink = TestingSink()
    assert await run(pipeline(source, sink)) == 2
    assert source.committed == {("testing", 0): 2}
    assert await run(pipeline(source, sink)) == 1
    assert sink.predictions == [2, 4, 6]


async def test_undecoded_input_goes_through_the_decoder() -> None:
    """From a TestingBytesSource values arrive as bytes, as from Kafka: bad ones are dead
    letters at stage decode."""
    source = TestingBytesSource([{"x": 1}, b"{not json", b'{"x": 2}'])
    sink, dead = TestingSink(), TestingSink("dead")
    assert await run(pipeline(source, sink, dead)) == 2
    assert sink.predictions == [2, 4]
    [failure] = dead.failures
    assert (failure.stage, failure.error_type, failure.record.raw) == (
        "decode",
        "invalid-json",
        b"{not json",
    )


async def test_chunks_are_cut_at_chunk_size_and_at_every_marker() -> None:
    source = TestingSource([*range(5), Pause(), *range(5, 7)], chunk_size=2)
    sizes = [len(chunk) async for chunk in source.chunks()]
    assert sizes == [2, 2, 1, 2]


def test_chunk_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="chunk_size must be 1 or more, got 0"):
        TestingSource([], chunk_size=0)
