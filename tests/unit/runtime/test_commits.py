"""Commits (headrace.runtime.commits): a position is committed only once its outputs are
flushed, for every partition a batch spans, and a graceful stop commits what was written.
The commits of a windowed pipeline are in test_commits_windows."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from headrace import CallableModel, GeneratorSource, PipelineError
from helpers import ListSource, MemorySink, records, wait_for
from unit.runtime.engine_helpers import engine


async def test_a_batch_spanning_partitions_commits_every_partition() -> None:
    """Seed flaw: only the last event's partition was checkpointed."""
    rs = records(30, partitions=3)
    source = ListSource([rs])
    await engine(source, MemorySink(), max_batch_size=64).run()
    assert source.committed == {("t", 0): 10, ("t", 1): 10, ("t", 2): 10}


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


async def test_a_stop_whose_batches_outlast_shutdown_timeout_commits_none_of_them() -> None:
    """Stopping while a model call outlasts ``shutdown_timeout``: the run fails (exit 1
    from `headrace run`) and the batches still in flight are not committed: a restart
    reads them again. What was written before them stays committed."""
    import threading

    release = threading.Event()
    slow_from = 40  # records with ids from here on are held in the model

    def held(rows: list[Any]) -> list[float]:
        if any(r["id"] >= slow_from for r in rows):
            release.wait(10)
        return [0.0] * len(rows)

    rs = records(80)
    source = ListSource([rs[:slow_from], rs[slow_from:]], hold_open=True)
    sink = MemorySink()
    eng = engine(
        source,
        sink,
        CallableModel(held, name="held"),
        max_batch_size=20,
        shutdown_timeout=0.3,
        commit_interval=0.02,
    )
    task = asyncio.create_task(eng.run())
    try:
        await wait_for(lambda: source.committed.get(("t", 0)) == slow_from, timeout=5)
        eng.stop()
        with pytest.raises(PipelineError, match=r"did not finish within shutdown_timeout=0\.3s"):
            await asyncio.wait_for(task, timeout=5)
    finally:
        release.set()
    assert source.committed == {("t", 0): slow_from}
    assert len(sink.outputs) == slow_from


async def test_a_stop_during_a_commit_that_never_ends_is_bounded_by_shutdown_timeout() -> None:
    """A commit under way when the stop comes (its sink's flush waits for a service that
    is away) is waited for up to ``shutdown_timeout``, then cancelled, and the final
    commit is not tried: the run fails within about twice the timeout, committing
    nothing (it waited for that commit for as long as the outage lasted)."""
    import time

    flushing = asyncio.Event()

    class FlushWaitsForever(MemorySink):
        async def flush(self) -> None:
            flushing.set()
            await asyncio.Event().wait()

    source = ListSource([records(50)], hold_open=True)
    eng = engine(source, FlushWaitsForever(), shutdown_timeout=0.3, commit_interval=0.02)
    task = asyncio.create_task(eng.run())
    await asyncio.wait_for(flushing.wait(), 5)
    started = time.monotonic()
    eng.stop()
    with pytest.raises(PipelineError, match="commit under way"):
        await asyncio.wait_for(task, 10)
    assert time.monotonic() - started < 2.0
    assert source.commits == []


@pytest.mark.parametrize(
    ("setting", "source_interval", "used"),
    [(None, 0.0, 0.0), (None, 1.0, 1.0), (0.25, 0.0, 0.25), (0.0, 1.0, 0.0)],
)
async def test_the_commit_interval_is_the_pipelines_else_the_sources(
    monkeypatch: pytest.MonkeyPatch, setting: float | None, source_interval: float, used: float
) -> None:
    """An MQTT broker sends no more than its window unacknowledged, and a message is
    acknowledged at commit: its source commits more often than others unless the pipeline
    says otherwise."""
    from headrace.runtime.commits import Commits

    started: list[float] = []
    start_periodic = Commits.start_periodic

    def spy(self: Commits, interval: float, **kw: Any) -> None:
        started.append(interval)
        start_periodic(self, interval, **kw)

    monkeypatch.setattr(Commits, "start_periodic", spy)
    source = ListSource([records(5)])
    source.commit_interval = source_interval
    await engine(source, MemorySink(), commit_interval=setting).run()
    assert started == [used]
    assert source.committed == {("t", 0): 5}


def test_mqtt_commits_every_100_ms_by_default() -> None:
    from headrace.connectors.kafka import KafkaSource
    from headrace.connectors.mqtt import MqttSource

    assert MqttSource.commit_interval == 0.1
    assert KafkaSource.commit_interval == GeneratorSource.commit_interval == 1.0
