"""Window outputs in a real PostgreSQL table: one row per key, window and partition."""

from __future__ import annotations

import psycopg

from headrace.connectors.postgres import PostgresSink
from headrace.record import ModelRef, ScoredBatch, WindowRecord
from pg_helpers import PgSchema


def batch(version: str) -> ScoredBatch:
    windows = [
        WindowRecord(f"e{i}", {"n": i + 1, "avg": 0.5}, "events", i % 2, i, 0.0, 10.0, i + 1)
        for i in range(3)
    ]
    return ScoredBatch(windows, [{"score": 0.1 * i} for i in range(3)], ModelRef("m", version), 5.0)


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
