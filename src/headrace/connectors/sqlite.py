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

from headrace.connectors.base import Sink, SinkContext
from headrace.connectors.rows import (
    FAILURE_COLUMNS,
    PREDICTION_COLUMNS,
    WINDOW_COLUMNS,
    failure_rows,
    is_windows,
    prediction_rows,
    window_rows,
)
from headrace.errors import HeadraceError
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


class DuplicateRowError(HeadraceError, sqlite3.IntegrityError):
    """In ``mode="insert"``, a row for the same source position (or key and window) is
    already in the table. The message names the row and what to do."""


class SqliteSink(Sink):
    """Writes outputs to a SQLite table, one transaction per batch.

    ``mode="upsert"`` (the default) replaces a row with the same source position, so
    records re-read after a crash overwrite their earlier outputs instead of duplicating
    them. ``mode="insert"`` fails on such a duplicate, with a :class:`DuplicateRowError`
    that names the row: a restart after a crash (or a rerun of a source that does not
    resume) then stops at the first record it writes again. A scalar prediction is stored as a
    number; other predictions, and inputs, as JSON text (where the pipeline's inputs go
    as read, the event's JSON as read). All database work runs on one thread of its own,
    off the event loop.
    """

    # With inputs as read, a batch of columns is written without its records' values.
    reads_values = False

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
        self._raw_inputs = False
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

    def _executemany(self, sql: str, rows: list[tuple[Any, ...]], table: str) -> None:
        conn = self._conn
        if conn is None:
            raise RuntimeError(f"sink {self.name!r} is not open")
        conn.execute("BEGIN")
        try:
            conn.executemany(sql, rows)
        except BaseException as exc:
            conn.execute("ROLLBACK")
            if (
                self.mode == "insert"
                and isinstance(exc, sqlite3.IntegrityError)
                and str(exc).startswith("UNIQUE constraint failed")
            ):
                raise DuplicateRowError(self._duplicate(conn, table, rows, exc)) from exc
            raise
        conn.execute("COMMIT")

    def _duplicate(
        self, conn: sqlite3.Connection, table: str, rows: list[tuple[Any, ...]], exc: Exception
    ) -> str:
        """What an insert-mode conflict means, naming the first row already in ``table``."""
        windows = table == self.windows_table
        if windows:
            sql = (
                f"SELECT 1 FROM {table} WHERE key = ? AND window_start = ? AND window_end = ? "
                "AND partition = ?"
            )
        else:
            sql = f'SELECT 1 FROM {table} WHERE topic = ? AND partition = ? AND "offset" = ?'
        n = 4 if windows else 3
        row = next((r for r in rows if conn.execute(sql, r[:n]).fetchone()), None)
        if row is None:  # a duplicate within the batch itself
            return f"sink {self.name!r} (mode: insert): {exc}"
        if windows:
            what = f"key {row[0]!r}, window [{row[1]}, {row[2]}) of partition {row[3]}"
            again = "the windows closed since the last commit point are written again"
        else:
            what = f"source position {row[0]}[{row[1]}]@{row[2]}"
            again = (
                "the records not committed before it stopped are read again (all of them "
                "from a source that does not resume)"
            )
        return (
            f"sink {self.name!r} (mode: insert): table {table} already has a row for {what}. "
            f"After a restart {again}, and insert mode refuses to write a row twice: use "
            "mode: upsert (the default), which replaces such rows, or write into an empty table"
        )

    def bind(self, context: SinkContext) -> None:
        self._raw_inputs = context.inputs_as_read

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
            await self._call(self._executemany, self._insert_window, rows, self.windows_table)
            return
        rows = prediction_rows(
            batch, prediction=prediction, value=value, raw_inputs=self._raw_inputs
        )
        await self._call(self._executemany, self._insert, rows, self.table)

    async def write_failures(self, failures: Sequence[FailedRecord]) -> None:
        if failures:
            rows = failure_rows(
                failures, value=self._encode, raw=lambda b: b.decode("utf-8", "replace")
            )
            await self._call(self._executemany, self._insert_failure, rows, self.failures_table)

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await self._call(conn.close)
        self._thread.shutdown(wait=True)
