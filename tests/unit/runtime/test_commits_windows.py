"""Commits of a windowed pipeline (headrace.runtime.commits): window state written at commit
points, before the positions it covers, and restored where it left off when partitions are
assigned; a crash after any commit loses no window and counts no record twice."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headrace.connectors.base import PartitionedSource
from headrace.record import Record
from headrace.windows import WindowOperator
from headrace.windows.changelog import MemoryChangelog
from headrace.windows.stage import OFFSET_KEY, WindowStage
from helpers import ListSource, MemorySink, wait_for
from unit.runtime.engine_helpers import events, expected, got, operator
from unit.runtime.engine_helpers import windowed_engine as engine


class AssigningSource(ListSource, PartitionedSource):
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

    def set_paused(self, paused: bool) -> None:
        pass  # nothing prefetched to hold back

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
