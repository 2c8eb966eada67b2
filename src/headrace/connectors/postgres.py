"""A PostgreSQL sink on psycopg 3: batched inserts, upserts by source position, and
exactly-once delivery by committing consumed offsets in the same transaction as outputs."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import msgspec

from headrace.connectors.base import PartitionKey, Sink
from headrace.connectors.rows import (
    FAILURE_COLUMNS,
    PREDICTION_COLUMNS,
    WINDOW_COLUMNS,
    WINDOW_KEY,
    failure_rows,
    is_windows,
    prediction_rows,
    window_rows,
)
from headrace.record import FailedRecord, ScoredBatch

log = logging.getLogger("headrace.postgres")

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}(\.[A-Za-z_][A-Za-z0-9_]{0,62})?$")

_PREDICTIONS = """
CREATE TABLE IF NOT EXISTS {table} (
    topic text NOT NULL,
    partition integer NOT NULL,
    "offset" bigint NOT NULL,
    key text,
    prediction jsonb NOT NULL,
    model_name text NOT NULL,
    model_version text NOT NULL,
    model_sha256 text,
    event_time double precision,
    processed_at double precision NOT NULL,
    input jsonb,
    PRIMARY KEY (topic, partition, "offset")
)"""

_WINDOWS = """
CREATE TABLE IF NOT EXISTS {table} (
    key text NOT NULL,
    window_start double precision NOT NULL,
    window_end double precision NOT NULL,
    partition integer NOT NULL,
    count integer NOT NULL,
    prediction jsonb NOT NULL,
    model_name text NOT NULL,
    model_version text NOT NULL,
    model_sha256 text,
    processed_at double precision NOT NULL,
    features jsonb,
    PRIMARY KEY (key, window_start, window_end, partition)
)"""

_STATE = """
CREATE TABLE IF NOT EXISTS {table} (
    consumer_group text NOT NULL,
    topic text NOT NULL,
    partition integer NOT NULL,
    key bytea NOT NULL,
    value bytea NOT NULL,
    PRIMARY KEY (consumer_group, topic, partition, key)
)"""

_FAILURES = """
CREATE TABLE IF NOT EXISTS {table} (
    topic text NOT NULL,
    partition integer NOT NULL,
    "offset" bigint NOT NULL,
    key text,
    stage text NOT NULL,
    error_type text NOT NULL,
    error text NOT NULL,
    model_name text,
    model_version text,
    input jsonb,
    raw bytea,
    attempts integer NOT NULL DEFAULT 1,
    PRIMARY KEY (topic, partition, "offset")
)"""

_OFFSETS = """
CREATE TABLE IF NOT EXISTS {table} (
    consumer_group text NOT NULL,
    topic text NOT NULL,
    partition integer NOT NULL,
    next_offset bigint NOT NULL,
    PRIMARY KEY (consumer_group, topic, partition)
)"""


class PostgresSink(Sink):
    """Writes outputs to a table, one row per record, keyed by source position.

    In the default mode each ``write`` is its own transaction. With ``transactional=True``
    (exactly-once delivery) writes accumulate in one open transaction, and
    :meth:`commit_transaction` stores the consumed offsets in ``offsets_table`` and commits
    outputs and offsets together: after a crash both or neither are there, and the source
    restarts from the stored offsets (:meth:`stored_positions`).

    ``mode="upsert"`` replaces an existing row with the same position; ``"insert"`` fails
    on one. Table names may be schema-qualified.
    """

    def __init__(
        self,
        dsn: str,
        *,
        table: str = "predictions",
        failures_table: str = "dead_letters",
        offsets_table: str = "headrace_offsets",
        windows_table: str | None = None,
        state_table: str | None = None,
        mode: Literal["upsert", "insert"] = "upsert",
        store_input: bool = True,
        transactional: bool = False,
        consumer_group: str = "headrace",
        name: str = "postgres",
    ) -> None:
        for t in (table, failures_table, offsets_table, windows_table or "x", state_table or "x"):
            if not _NAME.match(t):
                raise ValueError(f"table name {t!r} is not a plain (schema.)identifier")
        self.dsn = dsn
        self.table = table
        self.failures_table = failures_table
        self.offsets_table = offsets_table
        self.windows_table = windows_table
        self.state_table = state_table
        self.mode = mode
        self.store_input = store_input
        self.transactional = transactional
        self.consumer_group = consumer_group
        self.name = name
        self.conn: Any = None
        self._encode = msgspec.json.Encoder().encode
        conflict = (
            ' ON CONFLICT (topic, partition, "offset") DO UPDATE SET {cols}'
            if mode == "upsert"
            else ""
        )
        cols = (PREDICTION_COLUMNS, FAILURE_COLUMNS)
        self._insert = (
            f'INSERT INTO {table} (topic, partition, "offset", {cols[0]}) '
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
            + conflict.format(cols=_excluded(cols[0]))
        )
        self._insert_failure = (
            f'INSERT INTO {failures_table} (topic, partition, "offset", {cols[1]}) '
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
            + conflict.format(cols=_excluded(cols[1]))
        )
        self._insert_window = (
            f"INSERT INTO {windows_table} ({WINDOW_COLUMNS}) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
            + (
                f" ON CONFLICT ({WINDOW_KEY}) DO UPDATE SET {_excluded(WINDOW_COLUMNS)}"
                if mode == "upsert"
                else ""
            )
        )

    def __repr__(self) -> str:
        # The DSN may hold a password: never show it.
        return f"PostgresSink(table={self.table!r}, mode={self.mode!r})"

    async def open(self) -> None:
        import psycopg

        self.conn = await psycopg.AsyncConnection.connect(self.dsn, autocommit=False)
        async with self.conn.transaction():
            for ddl, table in (
                (_PREDICTIONS, self.table),
                (_FAILURES, self.failures_table),
                (_OFFSETS, self.offsets_table),
                (_WINDOWS, self.windows_table),
                (_STATE, self.state_table),
            ):
                if table is not None:
                    await self.conn.execute(ddl.format(table=table))
        await self.conn.commit()

    async def _executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        conn = self.conn
        if conn is None:
            raise RuntimeError(f"sink {self.name!r} is not open")
        async with conn.cursor() as cur:
            await cur.executemany(sql, rows)
        if not self.transactional:
            await conn.commit()

    def _json(self, value: Any) -> str:
        return self._encode(value).decode()

    async def write(self, batch: ScoredBatch) -> None:
        if len(batch) and is_windows(batch):
            if self.windows_table is None:
                raise ValueError(f"sink {self.name!r} has no windows_table for window outputs")
            rows = window_rows(
                batch, prediction=self._json, value=self._json if self.store_input else None
            )
            await self._executemany(self._insert_window, rows)
        elif len(batch):
            rows = prediction_rows(
                batch, prediction=self._json, value=self._json if self.store_input else None
            )
            await self._executemany(self._insert, rows)

    async def write_failures(self, failures: Sequence[FailedRecord]) -> None:
        if failures:
            # PostgreSQL text cannot hold NUL characters; the raw bytes go to bytea as is.
            rows = failure_rows(
                failures,
                value=self._json,
                raw=bytes,
                text=lambda e: e.replace("\x00", "\\0"),
            )
            await self._executemany(self._insert_failure, rows)

    async def commit_transaction(self, positions: Mapping[PartitionKey, int]) -> None:
        """Store ``positions`` and commit them with every write since the last commit."""
        conn = self.conn
        if positions:
            async with conn.cursor() as cur:
                await cur.executemany(
                    f"INSERT INTO {self.offsets_table} "
                    "(consumer_group, topic, partition, next_offset) VALUES (%s, %s, %s, %s) "
                    "ON CONFLICT (consumer_group, topic, partition) "
                    "DO UPDATE SET next_offset = excluded.next_offset",
                    [(self.consumer_group, t, p, o) for (t, p), o in positions.items()],
                )
        await conn.commit()

    async def write_state(self, topic: str, partition: int, changes: Sequence[Any]) -> None:
        """Window state changes ``(key, value or None)`` of one input partition, in the
        open transaction: they commit with the outputs and offsets (exactly-once)."""
        group, table = self.consumer_group, self.state_table
        upserts = [(group, topic, partition, k, v) for k, v in changes if v is not None]
        deletes = [(group, topic, partition, k) for k, v in changes if v is None]
        async with self.conn.cursor() as cur:
            if deletes:
                await cur.executemany(
                    f"DELETE FROM {table} WHERE consumer_group = %s AND topic = %s "
                    "AND partition = %s AND key = %s",
                    deletes,
                )
            if upserts:
                await cur.executemany(
                    f"INSERT INTO {table} (consumer_group, topic, partition, key, value) "
                    "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (consumer_group, topic, partition, "
                    "key) DO UPDATE SET value = excluded.value",
                    upserts,
                )
        if not self.transactional:
            await self.conn.commit()

    async def read_state(self, topic: str, partitions: Sequence[int]) -> dict[int, list[Any]]:
        """The stored window state of ``partitions`` of ``topic``: ``(key, value)`` pairs."""
        out: dict[int, list[Any]] = {p: [] for p in partitions}
        async with self.conn.cursor() as cur:
            await cur.execute(
                f"SELECT partition, key, value FROM {self.state_table} "
                "WHERE consumer_group = %s AND topic = %s AND partition = ANY(%s)",
                (self.consumer_group, topic, list(partitions)),
            )
            for p, key, value in await cur.fetchall():
                out[p].append((bytes(key), bytes(value)))
        return out

    async def stored_positions(self, partitions: Sequence[PartitionKey]) -> dict[PartitionKey, int]:
        """The committed positions of ``partitions``, where this sink has any."""
        if not partitions:
            return {}
        async with self.conn.cursor() as cur:
            await cur.execute(
                f"SELECT topic, partition, next_offset FROM {self.offsets_table} "
                "WHERE consumer_group = %s",
                (self.consumer_group,),
            )
            rows = await cur.fetchall()
        wanted = set(partitions)
        return {(t, p): o for t, p, o in rows if (t, p) in wanted}

    async def close(self) -> None:
        if self.conn is not None:
            conn, self.conn = self.conn, None
            if self.transactional:
                await conn.rollback()  # uncommitted outputs go with their uncommitted offsets
            await conn.close()


def _excluded(columns: str) -> str:
    return ", ".join(f"{c.strip()} = excluded.{c.strip()}" for c in columns.split(","))
