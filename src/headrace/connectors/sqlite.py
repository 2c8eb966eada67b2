"""A SQLite sink: one row per output, keyed by source position."""

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import msgspec

from headrace.connectors.base import Sink
from headrace.connectors.rows import (
    FAILURE_COLUMNS,
    PREDICTION_COLUMNS,
    WINDOW_COLUMNS,
    failure_rows,
    is_windows,
    prediction_rows,
    window_rows,
)
from headrace.record import FailedRecord, ScoredBatch

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")

_PREDICTIONS = """
CREATE TABLE IF NOT EXISTS {table} (
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    "offset" INTEGER NOT NULL,
    key TEXT,
    prediction NOT NULL,
    model_name TEXT NOT NULL,
    model_version TEXT NOT NULL,
    model_sha256 TEXT,
    event_time REAL,
    processed_at REAL NOT NULL,
    input TEXT,
    PRIMARY KEY (topic, partition, "offset")
)"""

_WINDOWS = """
CREATE TABLE IF NOT EXISTS {table} (
    key TEXT NOT NULL,
    window_start REAL NOT NULL,
    window_end REAL NOT NULL,
    partition INTEGER NOT NULL,
    count INTEGER NOT NULL,
    prediction NOT NULL,
    model_name TEXT NOT NULL,
    model_version TEXT NOT NULL,
    model_sha256 TEXT,
    processed_at REAL NOT NULL,
    features TEXT,
    PRIMARY KEY (key, window_start, window_end, partition)
)"""

_FAILURES = """
CREATE TABLE IF NOT EXISTS {table} (
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    "offset" INTEGER NOT NULL,
    key TEXT,
    stage TEXT NOT NULL,
    error_type TEXT NOT NULL,
    error TEXT NOT NULL,
    model_name TEXT,
    model_version TEXT,
    input TEXT,
    raw TEXT,
    attempts INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (topic, partition, "offset")
)"""


class SqliteSink(Sink):
    """Writes outputs to a SQLite table, one transaction per batch.

    ``mode="upsert"`` (the default) replaces a row with the same source position, so
    records re-read after a crash overwrite their earlier outputs instead of duplicating
    them. ``mode="insert"`` fails on such a duplicate. A scalar prediction is stored as a
    number; other predictions, and inputs, as JSON text. All database work runs on one
    thread of its own, off the event loop.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        table: str = "predictions",
        failures_table: str = "dead_letters",
        windows_table: str | None = None,
        mode: Literal["upsert", "insert"] = "upsert",
        store_input: bool = True,
        name: str = "sqlite",
    ) -> None:
        for t in (table, failures_table, windows_table or "x"):
            if not _IDENTIFIER.match(t):
                raise ValueError(f"table name {t!r} is not a plain SQL identifier")
        self.path = str(path)
        self.table = table
        self.failures_table = failures_table
        self.windows_table = windows_table
        self.mode = mode
        self.store_input = store_input
        self.name = name
        self._conn: sqlite3.Connection | None = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix=f"headrace-sqlite-{name}")
        self._encoder = msgspec.json.Encoder()
        verb = "INSERT OR REPLACE" if mode == "upsert" else "INSERT"
        self._insert = (
            f'{verb} INTO {table} (topic, partition, "offset", {PREDICTION_COLUMNS}) '
            "VALUES (?,?,?,?,?,?,?,?,?,?,?)"
        )
        self._insert_failure = (
            f'{verb} INTO {failures_table} (topic, partition, "offset", {FAILURE_COLUMNS}) '
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?)"
        )
        self._insert_window = (
            f"{verb} INTO {windows_table} ({WINDOW_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)"
        )

    def _encode(self, value: Any) -> str:
        """JSON as TEXT. msgspec returns bytes, which SQLite would store as a BLOB: readers
        would get bytes, and SQLite's JSON functions reject a BLOB (or, from 3.45, read it
        as JSONB)."""
        return self._encoder.encode(value).decode()

    async def _call(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    def _open(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(_PREDICTIONS.format(table=self.table))
        conn.execute(_FAILURES.format(table=self.failures_table))
        if self.windows_table is not None:
            conn.execute(_WINDOWS.format(table=self.windows_table))
        self._conn = conn

    async def open(self) -> None:
        await self._call(self._open)

    def _executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        conn = self._conn
        if conn is None:
            raise RuntimeError(f"sink {self.name!r} is not open")
        conn.execute("BEGIN")
        try:
            conn.executemany(sql, rows)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    async def write(self, batch: ScoredBatch) -> None:
        if not len(batch):
            return
        enc = self._encode

        def prediction(p: Any) -> Any:
            return p if isinstance(p, int | float) else enc(p)

        value = enc if self.store_input else None
        if is_windows(batch):
            if self.windows_table is None:
                raise ValueError(f"sink {self.name!r} has no windows_table for window outputs")
            rows = window_rows(batch, prediction=prediction, value=value)
            await self._call(self._executemany, self._insert_window, rows)
            return
        rows = prediction_rows(batch, prediction=prediction, value=value)
        await self._call(self._executemany, self._insert, rows)

    async def write_failures(self, failures: Sequence[FailedRecord]) -> None:
        if failures:
            rows = failure_rows(
                failures, value=self._encode, raw=lambda b: b.decode("utf-8", "replace")
            )
            await self._call(self._executemany, self._insert_failure, rows)

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await self._call(conn.close)
        self._thread.shutdown(wait=True)
