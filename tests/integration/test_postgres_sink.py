"""The PostgreSQL sink against real servers: exactly-once transactions fenced by partition
claims, and a database that goes away and comes back (a private server the test stops and
starts itself; the shared one is never stopped)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from headrace.connectors.postgres import FencedError, PostgresSink
from headrace.record import ModelRef, Record, ScoredBatch
from pg_helpers import PgSchema
from pg_server import PrivatePostgres
from workers import insert_only_table


def batch(partition: int, offsets: range) -> ScoredBatch:
    records = [
        Record(
            key=f"k{o}",
            value={"id": o},
            event_time=1.0,
            topic="events",
            partition=partition,
            offset=o,
        )
        for o in offsets
    ]
    return ScoredBatch(
        records=records,
        predictions=[0.5] * len(records),
        model=ModelRef("m", "1"),
        processed_at=2.0,
    )


def ids(dsn: str) -> list[int]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT (input->>'id')::int FROM predictions").fetchall()
    return sorted(r[0] for r in rows)


def offsets(dsn: str) -> dict[int, int | None]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT partition, next_offset FROM headrace_offsets").fetchall()
    return dict(rows)


async def until(condition: Callable[[], bool]) -> None:
    """Wait (20 s at most) for a flag of the sink under test, which has no event to await."""
    async with asyncio.timeout(20):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


# -- fencing ---------------------------------------------------------------------------------


async def test_a_worker_whose_partitions_were_claimed_cannot_commit(pg_dsn: PgSchema) -> None:
    """Worker A claims partitions 0 and 1 and writes; worker B claims partition 0 (A was
    paused past its session); A's commit fails and writes nothing, for either partition;
    B goes on from A's last commit."""
    a = PostgresSink(pg_dsn.dsn, transactional=True, consumer_group="g")
    b = PostgresSink(pg_dsn.dsn, transactional=True, consumer_group="g")
    await a.open()
    await b.open()
    try:
        assert await a.claim([("events", 0), ("events", 1)]) == {}
        await a.write(batch(0, range(0, 5)))
        await a.commit_transaction({("events", 0): 5})
        await a.write(batch(0, range(5, 10)))
        await a.write(batch(1, range(100, 103)))

        assert await b.claim([("events", 0)]) == {("events", 0): 5}
        with pytest.raises(FencedError, match=r"events\[0\] were claimed by another worker"):
            await a.commit_transaction({("events", 0): 10, ("events", 1): 103})
        assert ids(pg_dsn.dsn) == list(range(5))  # nothing of the fenced transaction
        assert offsets(pg_dsn.dsn) == {0: 5, 1: None}

        await b.write(batch(0, range(5, 10)))
        await b.commit_transaction({("events", 0): 10})
        assert ids(pg_dsn.dsn) == list(range(10))
        assert offsets(pg_dsn.dsn) == {0: 10, 1: None}
    finally:
        await a.close()
        await b.close()


async def test_a_worker_paused_inside_its_transaction_does_not_hold_up_the_take_over(
    pg_dsn: PgSchema,
) -> None:
    """Worker A stops between two statements of its commit's transaction (as a SIGSTOP
    lands): it holds the row locks of its offsets. Worker B's claim of A's partition must
    not wait for A to run again: the server ends A's idle transaction, B takes over from A's
    last commit, and when A runs on, its commit is fenced and writes nothing. (B's claim
    used to wait for as long as A was stopped: a group that stopped writing.)"""
    a = PostgresSink(
        pg_dsn.dsn, transactional=True, consumer_group="g", idle_transaction_timeout_s=1.0
    )
    b = PostgresSink(pg_dsn.dsn, transactional=True, consumer_group="g")
    await a.open()
    await b.open()
    armed, inside, paused = asyncio.Event(), asyncio.Event(), asyncio.Event()
    fence = a._fence

    async def fence_then_pause(*args: object) -> None:
        await fence(*args)  # type: ignore[arg-type]
        if armed.is_set() and not paused.is_set():  # a retry after the pause runs straight on
            inside.set()
            await paused.wait()

    a._fence = fence_then_pause  # type: ignore[method-assign]
    try:
        await a.claim([("events", 0)])
        await a.write(batch(0, range(0, 5)))
        await a.commit_transaction({("events", 0): 5})
        await a.write(batch(0, range(5, 10)))
        armed.set()
        commit = asyncio.create_task(a.commit_transaction({("events", 0): 10}))
        await asyncio.wait_for(inside.wait(), 10)

        async with asyncio.timeout(15):
            assert await b.claim([("events", 0)]) == {("events", 0): 5}
        paused.set()
        with pytest.raises(FencedError, match=r"events\[0\] were claimed by another worker"):
            await asyncio.wait_for(commit, 30)
        assert ids(pg_dsn.dsn) == list(range(5))
        assert offsets(pg_dsn.dsn) == {0: 5}
    finally:
        paused.set()
        await a.close()
        await b.close()


async def test_a_worker_stopped_inside_a_statement_is_ended_by_the_take_over(
    pg_dsn: PgSchema,
) -> None:
    """Worker A stops in the middle of a statement of its commit's transaction (a SIGSTOP
    during a pipelined insert): its session is active, not idle, so the server's idle
    timeout never ends it, and it holds the row locks of its offsets. Worker B's claim
    waits for them at most its hold limit, then ends A's transaction and takes over from
    A's last commit; A's retry is fenced. (In the fault test with real workers, B used to
    wait for as long as A was stopped.)"""
    a = PostgresSink(pg_dsn.dsn, transactional=True, consumer_group="g")
    b = PostgresSink(
        pg_dsn.dsn, transactional=True, consumer_group="g", idle_transaction_timeout_s=1.0
    )
    await a.open()
    await b.open()
    armed, inside = asyncio.Event(), asyncio.Event()
    fence = a._fence

    async def fence_then_hang(conn: Any, *args: Any) -> None:
        await fence(conn, *args)
        if armed.is_set() and not inside.is_set():  # the retry after it runs straight on
            inside.set()
            async with conn.cursor() as cur:  # active, holding the locks, for ten minutes
                await cur.execute("SELECT pg_sleep(600)")

    a._fence = fence_then_hang  # type: ignore[method-assign]
    try:
        await a.claim([("events", 0)])
        await a.write(batch(0, range(0, 5)))
        await a.commit_transaction({("events", 0): 5})
        await a.write(batch(0, range(5, 10)))
        armed.set()
        commit = asyncio.create_task(a.commit_transaction({("events", 0): 10}))
        await asyncio.wait_for(inside.wait(), 10)

        async with asyncio.timeout(20):
            assert await b.claim([("events", 0)]) == {("events", 0): 5}
        with pytest.raises(FencedError, match=r"events\[0\] were claimed by another worker"):
            await asyncio.wait_for(commit, 60)
        assert ids(pg_dsn.dsn) == list(range(5))
        assert offsets(pg_dsn.dsn) == {0: 5}
    finally:
        await a.close()
        await b.close()


async def test_a_commit_whose_answer_was_lost_is_looked_up_not_repeated(
    pg_dsn: PgSchema, caplog: pytest.LogCaptureFixture
) -> None:
    """The COMMIT goes through, then the connection drops before its answer arrives: the
    retry finds the transaction's stamp in the offsets table and does not write its rows
    a second time (a table without a key: a repeat would show)."""
    caplog.set_level(logging.WARNING, logger="headrace")
    insert_only_table(pg_dsn.dsn)
    sink = PostgresSink(
        pg_dsn.dsn, transactional=True, consumer_group="g", mode="insert", retry_cap=0.1
    )
    await sink.open()
    lost = 0
    try:
        await sink.claim([("events", 0)])
        await sink.write(batch(0, range(0, 10)))
        conn = sink.conn
        assert conn is not None
        real_commit = conn.commit

        async def commit_then_lose_the_answer() -> None:
            nonlocal lost
            await real_commit()
            if lost == 0 and sink._pending:  # the transaction's COMMIT, not a claim's
                lost += 1
                await conn.close()
                raise psycopg.OperationalError("server closed the connection unexpectedly")

        conn.commit = commit_then_lose_the_answer  # type: ignore[method-assign]
        await sink.commit_transaction({("events", 0): 10})
    finally:
        await sink.close()
    assert lost == 1
    assert ids(pg_dsn.dsn) == list(range(10))  # once, not twice
    assert offsets(pg_dsn.dsn) == {0: 10}


async def test_each_claim_moves_the_epoch_on_by_one(pg_dsn: PgSchema) -> None:
    """A claim is one new owner: its epoch is the last one plus one (a claim that ran twice
    used to skip one)."""
    a = PostgresSink(pg_dsn.dsn, transactional=True, consumer_group="g")
    b = PostgresSink(pg_dsn.dsn, transactional=True, consumer_group="g")
    await a.open()
    await b.open()
    try:
        for sink, epoch in ((a, 1), (b, 2), (a, 3)):
            await sink.claim([("events", 0)])
            with psycopg.connect(pg_dsn.dsn) as conn:
                row = conn.execute("SELECT epoch FROM headrace_offsets").fetchone()
            assert row == (epoch,)
    finally:
        await a.close()
        await b.close()


async def test_a_released_partition_is_no_longer_checked(pg_dsn: PgSchema) -> None:
    """A partition handed over cleanly (committed, then released) does not fence the
    worker that gave it up."""
    a = PostgresSink(pg_dsn.dsn, transactional=True, consumer_group="g")
    b = PostgresSink(pg_dsn.dsn, transactional=True, consumer_group="g")
    await a.open()
    await b.open()
    try:
        await a.claim([("events", 0), ("events", 1)])
        await a.write(batch(0, range(3)))
        await a.commit_transaction({("events", 0): 3})
        a.release([("events", 0)])
        assert await b.claim([("events", 0)]) == {("events", 0): 3}
        await a.write(batch(1, range(100, 102)))
        await a.commit_transaction({("events", 1): 102})  # partition 1 is still A's
        assert offsets(pg_dsn.dsn) == {0: 3, 1: 102}
    finally:
        await a.close()
        await b.close()


async def test_an_offsets_table_from_before_fencing_is_upgraded(pg_dsn: PgSchema) -> None:
    with psycopg.connect(pg_dsn.dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE headrace_offsets (consumer_group text NOT NULL, topic text NOT NULL, "
            "partition integer NOT NULL, next_offset bigint NOT NULL, "
            "PRIMARY KEY (consumer_group, topic, partition))"
        )
        conn.execute("INSERT INTO headrace_offsets VALUES ('g', 'events', 0, 42)")
    sink = PostgresSink(pg_dsn.dsn, transactional=True, consumer_group="g")
    await sink.open()
    try:
        assert await sink.claim([("events", 0), ("events", 1)]) == {("events", 0): 42}
    finally:
        await sink.close()


# -- a database that goes away ---------------------------------------------------------------


@pytest.fixture
def private_pg() -> Iterator[PrivatePostgres]:
    try:
        server = PrivatePostgres()
    except RuntimeError as exc:  # no initdb here
        pytest.skip(str(exc))
    with server:
        yield server


@pytest.mark.parametrize("transactional", [False, True], ids=["at-least-once", "exactly-once"])
async def test_the_sink_waits_out_a_database_restart(
    private_pg: PrivatePostgres, transactional: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """The server stops mid-run: the write (or the commit) waits, retrying with backoff
    and saying so once, and goes through when the server is back; nothing is lost or
    written twice."""
    caplog.set_level(logging.WARNING, logger="headrace")
    sink = PostgresSink(
        private_pg.dsn, transactional=transactional, consumer_group="g", retry_cap=0.2
    )
    await sink.open()
    try:
        if transactional:
            await sink.claim([("events", 0)])
        await sink.write(batch(0, range(0, 10)))
        if transactional:
            await sink.commit_transaction({("events", 0): 10})
        private_pg.stop()

        async def more() -> None:
            await sink.write(batch(0, range(10, 20)))
            if transactional:
                await sink.commit_transaction({("events", 0): 20})

        task = asyncio.create_task(more())
        await until(lambda: sink.down)
        await asyncio.sleep(1.0)  # several retries while the server is away
        assert not task.done()
        private_pg.start()
        await asyncio.wait_for(task, 30)
        assert not sink.down
    finally:
        await sink.close()
    assert ids(private_pg.dsn) == list(range(20))
    if transactional:
        assert offsets(private_pg.dsn) == {0: 20}
    lines = [r.getMessage() for r in caplog.records if "PostgreSQL sink" in r.getMessage()]
    assert len(lines) == 2, lines  # it went away, it came back: not a line per attempt
    assert "unavailable" in lines[0] and "answers again" in lines[1]


async def test_a_sink_opened_while_the_database_is_down_waits_for_it(
    private_pg: PrivatePostgres,
) -> None:
    private_pg.stop()
    sink = PostgresSink(private_pg.dsn, retry_cap=0.2)
    task = asyncio.create_task(sink.open())
    await until(lambda: sink.down)
    private_pg.start()
    await asyncio.wait_for(task, 30)
    try:
        await sink.write(batch(0, range(3)))
    finally:
        await sink.close()
    assert ids(private_pg.dsn) == [0, 1, 2]
