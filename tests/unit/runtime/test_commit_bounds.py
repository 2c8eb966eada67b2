"""Bounds of committing: a revocation ends within ``revoke_timeout``, and what a crash
would write twice is counted.

The consumer waits in its rebalance callback while the engine finishes the revoked
partitions' records and makes their outputs durable. Waiting for the records was bounded;
the sinks' flush after it was not, so a sink waiting for its service (a database down)
held the consumer, and the worker, for as long as the outage lasted. The sink here is a
stand-in whose flush never returns (the real outage is in
tests/integration/kafka/test_fault_guarantees.py); the rest is the engine's own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping, Sequence

import pytest

from headrace import EngineSettings, NullSink
from headrace.connectors.base import PartitionedSource, PartitionKey, Sink, Source
from headrace.observe.metrics import PipelineMetrics
from headrace.record import Record, source_record
from headrace.runtime.commits import Commits
from headrace.runtime.delivery import AtLeastOnce, Delivery
from headrace.runtime.order import WriteOrder
from headrace.runtime.state import PipelineError, RunState


class Partitioned(PartitionedSource):
    name = "partitioned"

    async def chunks(self) -> AsyncIterator[list[Record]]:
        return
        yield

    def set_paused(self, paused: bool) -> None:
        pass


class FlushNeverReturns(NullSink):
    """Takes every write; its flush waits for a service that never comes back."""

    async def flush(self) -> None:
        await asyncio.Event().wait()


def commits_with(sink: Sink, revoke_timeout: float) -> Commits:
    state = RunState()
    state.running = True
    return Commits(
        source=Partitioned(),
        delivery=AtLeastOnce(),
        sinks=lambda: [sink],
        order=WriteOrder(),
        state=state,
        metrics=PipelineMetrics(),
        windows=None,
        forget=lambda partitions: None,
        settings=EngineSettings(revoke_timeout=revoke_timeout),
    )


def finished(commits: Commits, key: PartitionKey, offsets: Sequence[int]) -> None:
    records = [
        source_record(
            key=None, value=None, event_time=0.0, topic=key[0], partition=key[1], offset=o
        )
        for o in offsets
    ]
    commits.tracker.track(records)
    commits.tracker.done(records)


def test_a_flush_that_never_returns_ends_the_revocation_at_revoke_timeout() -> None:
    commits = commits_with(FlushNeverReturns(), revoke_timeout=0.5)
    finished(commits, ("t", 0), range(10))

    async def revoke() -> None:
        await commits.partitions_revoked([("t", 0)])

    started = time.monotonic()
    with pytest.raises(PipelineError, match=r"not made durable within revoke_timeout=0.5s"):
        asyncio.run(asyncio.wait_for(revoke(), 10))
    assert time.monotonic() - started < 5
    assert commits.committed == {}  # nothing handed over to be committed


def test_a_flush_that_returns_hands_the_positions_over() -> None:
    commits = commits_with(NullSink(), revoke_timeout=0.5)
    finished(commits, ("t", 0), range(10))
    finished(commits, ("t", 1), range(3))

    async def revoke() -> object:
        return await commits.partitions_revoked([("t", 0)])

    assert asyncio.run(revoke()) == {("t", 0): 10}
    assert commits.committed == {("t", 0): 10}


def test_uncommitted_records_are_counted_until_a_commit_is_confirmed() -> None:
    """``headrace_uncommitted_records``: what a crash now would write twice, from the
    outputs written to the commits the broker confirmed."""
    from headrace.runtime.acks import Acknowledgements

    commits = commits_with(NullSink(), revoke_timeout=0.5)
    registry = commits.metrics.registry

    def gauge() -> float | None:
        return registry.get_sample_value("headrace_uncommitted_records")

    records = [
        source_record(key=None, value=None, event_time=0.0, topic="t", partition=p, offset=o)
        for p in (0, 1)
        for o in range(5)
    ]

    async def run() -> list[float | None]:
        seen = []
        await commits.make_room([records[:5]], Acknowledgements(lambda exc: None))
        seen.append(gauge())
        await commits.make_room([records[5:]], Acknowledgements(lambda exc: None))
        seen.append(gauge())
        commits.positions_committed({("t", 0): 3}, [])
        seen.append(gauge())
        commits.positions_committed({("t", 0): 5, ("t", 1): 5}, [])
        seen.append(gauge())
        return seen

    assert asyncio.run(run()) == [5, 10, 7, 0]


class InOneTransaction(Delivery):
    """Exactly-once: outputs and positions commit together (here, nowhere)."""

    exactly_once = True

    async def commit(
        self, positions: Mapping[PartitionKey, int], sinks: Sequence[Sink], source: Source
    ) -> None:
        pass


class ClosedWindowsNeverWritten:
    """Window state with a closed window whose output is never written (the model is
    down): no commit point comes."""

    pending = 1


@pytest.mark.parametrize("exactly_once", [True, False])
def test_a_revocation_waits_for_a_commit_point_shutdown_timeout_not_commit_point_timeout(
    exactly_once: bool,
) -> None:
    """A windowed commit during a revocation waits ``shutdown_timeout`` for its commit
    point, then stops the worker without committing (README, Windows): with exactly-once
    it waited ``commit_point_timeout`` instead (2026-12-07)."""
    state = RunState()
    state.running = True
    commits = Commits(
        source=Partitioned(),
        delivery=InOneTransaction() if exactly_once else AtLeastOnce(),
        sinks=lambda: [NullSink()],
        order=WriteOrder(),
        state=state,
        metrics=PipelineMetrics(),
        windows=ClosedWindowsNeverWritten(),  # type: ignore[arg-type]
        forget=lambda partitions: None,
        settings=EngineSettings(
            revoke_timeout=30.0, shutdown_timeout=0.3, commit_point_timeout=20.0
        ),
    )
    finished(commits, ("t", 0), range(10))

    async def revoke() -> None:
        await commits.partitions_revoked([("t", 0)])

    started = time.monotonic()
    with pytest.raises(PipelineError, match=r"no commit point within 0.3s"):
        asyncio.run(asyncio.wait_for(revoke(), 10))
    assert time.monotonic() - started < 5
    assert commits.committed == {}
