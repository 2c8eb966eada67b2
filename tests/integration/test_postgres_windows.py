"""Window outputs in a real PostgreSQL table: one row per key, window and partition."""

from __future__ import annotations

import psycopg

from headrace.connectors.postgres import PostgresSink
from headrace.record import BatchKind, ModelRef, ScoredBatch, WindowRecord
from pg_helpers import PgSchema


def batch(version: str) -> ScoredBatch:
    windows = [
        WindowRecord(f"e{i}", {"n": i + 1, "avg": 0.5}, "events", i % 2, i, 0.0, 10.0, i + 1)
        for i in range(3)
    ]
    return ScoredBatch(
        records=windows,
        predictions=[{"score": 0.1 * i} for i in range(3)],
        model=ModelRef("m", version),
        processed_at=5.0,
        kind=BatchKind.WINDOWS,
    )


async def test_window_outputs_are_upserted_by_key_window_and_partition(pg_dsn: PgSchema) -> None:
    sink = PostgresSink(pg_dsn.dsn, windows_table="window_scores")
    await sink.open()
    await sink.write(batch("1"))
    await sink.write(batch("2"))  # the same windows again, as after a crash: replaced
    await sink.close()
    with psycopg.connect(pg_dsn.dsn) as conn:
        rows = conn.execute(
            "SELECT key, window_start, window_end, partition, count, prediction, model_version, "
            "features FROM window_scores ORDER BY key"
        ).fetchall()
    assert rows == [
        ("e0", 0.0, 10.0, 0, 1, {"score": 0.0}, "2", {"n": 1, "avg": 0.5}),
        ("e1", 0.0, 10.0, 1, 2, {"score": 0.1}, "2", {"n": 2, "avg": 0.5}),
        ("e2", 0.0, 10.0, 0, 3, {"score": 0.2}, "2", {"n": 3, "avg": 0.5}),
    ]


async def test_window_state_commits_with_the_transaction_or_not_at_all(pg_dsn: PgSchema) -> None:
    from headrace.windows.changelog import PostgresChangelog

    sink = PostgresSink(pg_dsn.dsn, state_table="state", transactional=True, consumer_group="g")
    await sink.open()
    assert await sink.claim([("events", 0), ("events", 1)]) == {}
    log = PostgresChangelog(sink, topic="events")
    log.write(0, [(b"a", b"1"), (b"b", b"2")])
    log.write(1, [(b"c", b"3")])
    await log.flush()
    await sink.commit_transaction({("events", 0): 10})
    log.write(0, [(b"a", None), (b"b", b"22")])
    await log.flush()
    # Kept for the next commit: nothing of it is in the database yet.
    stored = await log.read([0, 1])
    assert {p: sorted(v) for p, v in stored.items()} == {
        0: [(b"a", b"1"), (b"b", b"2")],
        1: [(b"c", b"3")],
    }
    await sink.close()  # a crash before the commit: never written
    sink = PostgresSink(pg_dsn.dsn, state_table="state", transactional=True, consumer_group="g")
    await sink.open()
    state = await PostgresChangelog(sink, topic="events").read([0, 1, 2])
    assert {p: sorted(v) for p, v in state.items()} == {
        0: [(b"a", b"1"), (b"b", b"2")],
        1: [(b"c", b"3")],
        2: [],
    }
    assert await sink.stored_positions([("events", 0)]) == {("events", 0): 10}
    await sink.close()
