"""The windows stage (headrace.runtime.stages): windows scored, late records set aside, a
silent key or partition not holding windows back, state kept flat over a long run, and bytes
in flight settled whether a chunk was absorbed whole or in part. The commits of a windowed
pipeline are in test_commits_windows."""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from collections.abc import AsyncIterator, Iterator

import pytest

from headrace.connectors.base import Source
from headrace.connectors.files import NullSink
from headrace.record import Record
from headrace.windows.changelog import MemoryChangelog
from headrace.windows.stage import WindowStage
from helpers import ListSource, MemorySink, wait_for
from unit.runtime.engine_helpers import events, expected, got, operator
from unit.runtime.engine_helpers import windowed_engine as engine


async def test_every_window_is_scored_once_with_its_key_bounds_count_and_model() -> None:
    recs = events(500, partitions=2)
    sink = MemorySink()
    source = ListSource([recs[i : i + 37] for i in range(0, len(recs), 37)])
    summary = await engine(source, WindowStage(operator()), sink).run()
    assert got(sink) == expected(recs)
    assert len(sink.outputs) == len(expected(recs))
    first = sink.outputs[0]
    assert first["prediction"] == first["features"]["total"]
    assert (
        first["model"]["name"] == "sum" and first["window"]["end"] - first["window"]["start"] == 10
    )
    assert summary.committed == {("t", 0): 250, ("t", 1): 250}


async def test_late_records_go_to_the_late_sink_with_the_reason_and_are_counted() -> None:
    recs = events(40)
    late = Record(
        key=None,
        value={"user": "p0u1", "ts": 3.0, "amount": 5},
        event_time=0.0,
        topic="t",
        partition=0,
        offset=40,
    )
    bad = Record(
        key=None,
        value={"user": "p0u1", "amount": 5},
        event_time=0.0,
        topic="t",
        partition=0,
        offset=41,
    )
    sink, late_sink = MemorySink(), MemorySink("late")
    e = engine(ListSource([recs, [late, bad]]), WindowStage(operator()), sink, late_sink=late_sink)
    summary = await e.run()
    assert [(f.record.offset, f.error_type) for f in late_sink.failures] == [
        (40, "late"),
        (41, "missing-field"),
    ]
    assert "behind the watermark" in late_sink.failures[0].error
    assert e.metrics.window_rejected.labels("late")._value.get() == 1
    assert got(sink) == expected(recs)
    assert summary.committed == {("t", 0): 42}


async def test_a_silent_key_gets_its_last_window_scored_while_the_source_stays_open() -> None:
    # u-silent has one event at t=2, then never again; the others go on past t=10.
    silent = Record(
        key=None,
        value={"user": "silent", "ts": 2.0, "amount": 7},
        event_time=0.0,
        topic="t",
        partition=0,
        offset=0,
    )
    others = [
        Record(
            key=None,
            value={"user": "busy", "ts": float(t), "amount": 1},
            event_time=0.0,
            topic="t",
            partition=0,
            offset=t,
        )
        for t in range(1, 15)
    ]
    sink = MemorySink()
    source = ListSource([[silent], others], hold_open=True)
    e = engine(source, WindowStage(operator()), sink)
    task = asyncio.create_task(e.run())
    await wait_for(lambda: any(o["key"] == "silent" for o in sink.outputs))
    assert [o["count"] for o in sink.outputs if o["key"] == "silent"] == [1]
    e.stop()
    await task


async def test_a_silent_partition_stops_holding_windows_back_after_the_idle_timeout() -> None:
    def at(p: int, t: int) -> Record:
        return Record(
            key=None,
            value={"user": f"p{p}", "ts": float(t), "amount": 1},
            event_time=0.0,
            topic="t",
            partition=p,
            offset=t,
        )

    # Partition 1 stops at t=5; partition 0 goes on to t=30, then the source stays open.
    chunk = [at(1, t) for t in range(6)] + [at(0, t) for t in range(31)]
    sink = MemorySink()
    e = engine(ListSource([chunk], hold_open=True), WindowStage(operator(idle_timeout=0.2)), sink)
    task = asyncio.create_task(e.run())
    # Until partition 1 idles out the watermark is min(30, 5): nothing can close.
    await wait_for(lambda: len(sink.outputs) == 4)
    assert sorted((o["key"], o["window"]["start"]) for o in sink.outputs) == [
        ("p0", 0.0),
        ("p0", 10.0),
        ("p0", 20.0),
        ("p1", 0.0),
    ]
    e.stop()
    await task


@pytest.mark.parametrize("changelog", [None, MemoryChangelog], ids=["no changelog", "changelog"])
async def test_memory_stays_flat_over_a_long_run_with_many_keys(
    changelog: type[MemoryChangelog] | None,
) -> None:
    """500 keys over 40 windows: the state held, and the memory Python has allocated,
    are the same after 10 windows as after 40, as each window's state leaves on close."""
    keys, per_window = 500, 1000

    def chunks() -> Iterator[list[Record]]:
        for w in range(40):
            yield [
                Record(
                    key=None,
                    value={
                        "user": f"k{i % keys}",
                        "ts": w * 10.0 + i / per_window * 10,
                        "amount": 1,
                    },
                    event_time=0.0,
                    topic="t",
                    partition=0,
                    offset=w * per_window + i,
                )
                for i in range(per_window)
            ]

    samples: dict[int, tuple[int, int]] = {}
    stage = WindowStage(operator(), changelog=changelog() if changelog else None)

    class Sampling(ListSource):
        async def chunks(self) -> AsyncIterator[list[Record]]:
            for n, chunk in enumerate(chunks()):
                yield chunk
                if n in (9, 39):
                    # Closed windows still being scored are in flight, up to the flow
                    # bound, as many as the model lags behind: measured once they are
                    # written, the memory is the state's alone.
                    await e.state.until(lambda: e.flow.count == 0, 30)
                    # And a commit point taken now: the windows changed since the last
                    # one are tracked for the changelog until then, as many as the
                    # commit timer let pass (in CI, once: 1.3 MB -> 3.1 MB without it).
                    await e.commits.commit()
                    gc.collect()
                    samples[n] = (stage.operator.live_states, tracemalloc.get_traced_memory()[0])

    tracemalloc.start()
    try:
        # A sink that keeps nothing: only the engine's memory is measured.
        e = engine(Sampling([]), stage, NullSink(), commit_interval=0.5)
        summary = await e.run()
    finally:
        tracemalloc.stop()
    assert summary.records_out == 40 * keys
    (live_10, mem_10), (live_40, mem_40) = samples[9], samples[39]
    assert live_10 == live_40 <= 2 * keys
    assert mem_40 < mem_10 * 1.2, f"{mem_10} -> {mem_40} bytes"


async def test_bytes_in_flight_return_to_zero_with_raw_records_and_decode_failures() -> None:
    """Records read as bytes are admitted by size and released by the same size, whether a
    chunk was absorbed whole or some of it was set aside."""

    class RawSource(Source):
        def __init__(self, chunks: list[list[Record]]) -> None:
            self._chunks = chunks

        async def chunks(self) -> AsyncIterator[list[Record]]:
            for chunk in self._chunks:
                yield chunk

    def raw(i: int, payload: bytes) -> Record:
        return Record(
            key=None, value=None, event_time=0.0, topic="t", partition=0, offset=i, raw=payload
        )

    good = [raw(i, b'{"user": "u%d", "ts": %d, "amount": 1}' % (i % 3, i)) for i in range(40)]
    chunks = [good[:20], [*good[20:30], raw(40, b"{not json")], good[30:]]
    for i, r in enumerate(chunks[2]):
        r.offset = 41 + i
    dead = MemorySink("dead")
    e = engine(RawSource(chunks), WindowStage(operator()), MemorySink(), dead_letter=dead)
    summary = await e.run()
    assert [f.stage for f in dead.failures] == ["decode"]
    assert summary.peak_in_flight_bytes > 0
    assert (e.flow.count, e.flow.bytes) == (0, 0)
