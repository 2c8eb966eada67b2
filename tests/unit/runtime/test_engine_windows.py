"""The engine with a windows stage: windows scored, late records set aside, state written
at commit points and restored where it left off."""

from __future__ import annotations

import asyncio
import gc
import random
import tracemalloc
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headrace.connectors.base import Sink
from headrace.connectors.files import NullSink
from headrace.models.base import CallableModel
from headrace.record import Record
from headrace.runtime.engine import Engine, EngineSettings
from headrace.windows import Count, Max, Sum, Tumbling, WindowOperator
from headrace.windows.changelog import MemoryChangelog
from headrace.windows.stage import OFFSET_KEY, WindowStage
from helpers import ListSource, MemorySink, wait_for


def total(values: list[Any]) -> list[float]:
    return [float(v["total"]) for v in values]


MODEL = CallableModel(total, name="sum", version="1")


def operator(**kw: Any) -> WindowOperator:
    return WindowOperator(
        Tumbling(10),
        {"n": (None, Count()), "total": ("amount", Sum()), "top": ("amount", Max())},
        key_field="user",
        time_source="ts",
        **kw,
    )


def events(n: int, *, partitions: int = 1, users: int = 5, start: int = 0) -> list[Record]:
    """Event time 1 s apart per partition, in order; amounts 1..n. Keyed like a Kafka
    topic: each user's events are in one partition."""
    out = []
    for i in range(start, start + n):
        p = i % partitions
        value = {"user": f"p{p}u{i % users}", "ts": float(i // partitions), "amount": i + 1}
        out.append(Record(None, value, 0.0, "t", p, i // partitions))
    return out


def expected(records: list[Record]) -> dict[tuple[Any, float], tuple[int, float]]:
    """Batch recomputation: per (user, window start), the count and sum."""
    out: dict[tuple[Any, float], list[float]] = defaultdict(lambda: [0, 0.0])
    for r in records:
        v = r.value
        acc = out[(v["user"], v["ts"] // 10 * 10)]
        acc[0] += 1
        acc[1] += v["amount"]
    return {k: (int(c), s) for k, (c, s) in out.items()}


def got(sink: MemorySink) -> dict[tuple[Any, float], tuple[int, float]]:
    return {
        (o["key"], o["window"]["start"]): (o["count"], o["features"]["total"]) for o in sink.outputs
    }


def engine(
    source: Any, stage: WindowStage, sink: Sink, commit_interval: float = 0.05, **kw: Any
) -> Engine:
    settings = EngineSettings(max_wait=0.001, commit_interval=commit_interval, window_tick=0.01)
    return Engine(source=source, model=MODEL, sinks=[sink], windows=stage, settings=settings, **kw)


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
    late = Record(None, {"user": "p0u1", "ts": 3.0, "amount": 5}, 0.0, "t", 0, 40)
    bad = Record(None, {"user": "p0u1", "amount": 5}, 0.0, "t", 0, 41)
    sink, late_sink = MemorySink(), MemorySink("late")
    e = engine(ListSource([recs, [late, bad]]), WindowStage(operator()), sink, late_sink=late_sink)
    summary = await e.run()
    assert [(f.record.offset, f.error_type) for f in late_sink.failures] == [
        (40, "late"),
        (41, "invalid"),
    ]
    assert "behind the watermark" in late_sink.failures[0].error
    assert e.metrics.window_rejected.labels("late")._value.get() == 1
    assert got(sink) == expected(recs)
    assert summary.committed == {("t", 0): 42}


async def test_a_silent_key_gets_its_last_window_scored_while_the_source_stays_open() -> None:
    # u-silent has one event at t=2, then never again; the others go on past t=10.
    silent = Record(None, {"user": "silent", "ts": 2.0, "amount": 7}, 0.0, "t", 0, 0)
    others = [
        Record(None, {"user": "busy", "ts": float(t), "amount": 1}, 0.0, "t", 0, t)
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
        return Record(None, {"user": f"p{p}", "ts": float(t), "amount": 1}, 0.0, "t", p, t)

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


class AssigningSource(ListSource):
    """Like a Kafka source: asks the engine where to start (restoring its state), then
    delivers the records from there on."""

    def __init__(
        self,
        records: list[Record],
        *,
        stop_after: int | None = None,
        chunk: int = 25,
        pace: bool = False,
    ) -> None:
        super().__init__([], hold_open=stop_after is not None)
        self.all = records
        self.stop_after = stop_after
        self.chunk = chunk
        self.pace = pace  # wait for a commit after each chunk, like a live source would
        self.delivered = 0
        self.on_commit: Callable[[], None] | None = None
        self.started_at: Mapping[tuple[str, int], int] | None = None

    async def chunks(self) -> AsyncIterator[list[Record]]:
        keys = sorted({(r.topic, r.partition) for r in self.all})
        self.started_at = await self.listener.partitions_assigned(keys) or {}
        todo = [r for r in self.all if r.offset >= self.started_at.get((r.topic, r.partition), 0)]
        if self.stop_after is not None:
            todo = todo[: self.stop_after]
        for i in range(0, len(todo), self.chunk):
            before = len(self.commits)
            yield todo[i : i + self.chunk]
            self.delivered += 1
            if self.pace:
                await wait_for(lambda n=before: len(self.commits) > n)
        if self.hold_open:
            await self.release.wait()

    def bind(self, listener: Any) -> None:
        self.listener = listener

    async def commit(self, positions: Mapping[tuple[str, int], int]) -> None:
        if self.on_commit is not None:
            self.on_commit()  # the state is written; the positions are about to be
        await super().commit(positions)


@pytest.mark.parametrize("cut", [7, 180, 333])
async def test_a_restarted_worker_restores_state_and_resumes_where_the_state_left_off(
    cut: int,
) -> None:
    recs = events(400, partitions=2)
    changelog = MemoryChangelog()
    first, second = MemorySink(), MemorySink()
    one = engine(
        AssigningSource(recs, stop_after=cut), WindowStage(operator(), changelog=changelog), first
    )
    task = asyncio.create_task(one.run())
    await wait_for(lambda: one.stats.records_in == cut)
    one.stop()  # graceful: the final commit writes the state of the open windows
    await task
    assert changelog.partitions, "state was written"
    source = AssigningSource(recs)
    two = engine(source, WindowStage(operator(), changelog=changelog), second)
    await two.run()
    assert source.started_at == one.summary().committed  # state and positions agree
    merged = got(first) | got(second)
    assert merged == expected(recs)
    assert len(first.outputs) + len(second.outputs) == len(expected(recs)), "none twice"


async def test_state_is_written_before_the_positions_it_covers() -> None:
    recs = events(60)
    changelog = MemoryChangelog()
    source = ListSource([recs[:30], recs[30:]], hold_open=True)
    e = engine(source, WindowStage(operator(), changelog=changelog), MemorySink())
    task = asyncio.create_task(e.run())
    await wait_for(lambda: source.committed.get(("t", 0)) == 60)
    assert changelog.partitions[0][OFFSET_KEY] == b"\x3c"  # msgpack 60: the state covers them
    e.stop()
    await task


async def test_a_windowed_pipeline_refuses_priorities() -> None:
    from headrace.runtime.priority import Priorities

    with pytest.raises(ValueError, match="not to windows"):
        engine(
            ListSource([]),
            WindowStage(operator()),
            MemorySink(),
            priorities=Priorities("p", ["high", "low"], "low"),
        )


async def crash_and_restart(
    recs: list[Record], make: Callable[[], WindowOperator], crash_after: int, chunk: int
) -> None:
    """Run until ``crash_after`` chunks were read and committed, take what a crash would
    leave (the changelog as written, the outputs as written), restart from that, and check
    the distinct outputs against a batch recomputation."""
    changelog = MemoryChangelog()
    first = MemorySink()
    source = AssigningSource(recs, stop_after=len(recs), chunk=chunk, pace=True)
    one = engine(source, WindowStage(make(), changelog=changelog), first, commit_interval=0)
    task = asyncio.create_task(one.run())
    crash_after = min(crash_after, -(-len(recs) // chunk))
    durable = MemoryChangelog()
    written: list[dict[str, Any]] = []

    def crash() -> None:
        # The worst moment: the state is written, its positions are not committed yet.
        # What is durable now is all a restart gets.
        if len(source.commits) + 1 == crash_after:
            durable.partitions = {p: dict(v) for p, v in changelog.partitions.items()}
            written.extend(first.outputs)

    source.on_commit = crash
    await wait_for(lambda: len(source.commits) >= crash_after)
    one.stop()
    await task
    second = MemorySink()
    restarted = AssigningSource(recs, chunk=chunk)
    await engine(restarted, WindowStage(make(), changelog=durable), second).run()
    seen: dict[tuple[Any, float], tuple[int, float]] = {}
    for o in written + second.outputs:
        k, v = (o["key"], o["window"]["start"]), (o["count"], o["features"]["total"])
        assert seen.setdefault(k, v) == v, f"window {k} written twice, differently"
    assert seen == expected(recs)


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(50, 400),
    crash_after=st.integers(1, 12),
    chunk=st.integers(1, 40),
    disorder=st.integers(0, 3),
    seed=st.integers(0, 1000),
)
def test_a_crash_after_any_commit_loses_no_window_and_counts_no_record_twice(
    n: int, crash_after: int, chunk: int, disorder: int, seed: int
) -> None:
    recs = events(n, partitions=2)
    rng = random.Random(seed)
    for r in recs:  # bounded disorder: event times moved back by up to `disorder` s
        r.value["ts"] = max(0.0, r.value["ts"] - rng.randint(0, disorder))
    asyncio.run(
        crash_and_restart(recs, lambda: operator(allowed_lateness=disorder), crash_after, chunk)
    )


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
                    None,
                    {"user": f"k{i % keys}", "ts": w * 10.0 + i / per_window * 10, "amount": 1},
                    0.0,
                    "t",
                    0,
                    w * per_window + i,
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
                    gc.collect()
                    samples[n] = (stage.operator.live_states, tracemalloc.get_traced_memory()[0])

    tracemalloc.start()
    try:
        # A sink that keeps nothing: only the engine's memory is measured.
        summary = await engine(Sampling([]), stage, NullSink(), commit_interval=0.5).run()
    finally:
        tracemalloc.stop()
    assert summary.records_out == 40 * keys
    (live_10, mem_10), (live_40, mem_40) = samples[9], samples[39]
    assert live_10 == live_40 <= 2 * keys
    assert mem_40 < mem_10 * 1.2, f"{mem_10} -> {mem_40} bytes"


async def test_bytes_in_flight_return_to_zero_with_raw_records_and_decode_failures() -> None:
    """Records read as bytes are admitted by size and released by the same size, whether a
    chunk was absorbed whole or some of it was set aside."""

    class RawSource(ListSource):
        decoded = False

    def raw(i: int, payload: bytes) -> Record:
        return Record(None, None, 0.0, "t", 0, i, raw=payload)

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
