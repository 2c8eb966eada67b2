"""The PostgreSQL sink: outputs, dead letters and window state in tables, one row per
record keyed by its source position, in batched inserts or upserts.

What changes with what is written and when: each ``write`` in a transaction of its own
(at-least-once), or kept until the exactly-once commit of
:class:`~headrace.connectors.postgres.exactly_once.ExactlyOnce`, the base class that also
brings the connection.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from headrace.connectors.base import Sink, SinkContext
from headrace.connectors.postgres import tables
from headrace.connectors.postgres.connection import rollback
from headrace.connectors.postgres.exactly_once import ExactlyOnce
from headrace.connectors.postgres.tables import DuplicateRowError, Mode
from headrace.connectors.rows import failure_rows, is_windows, prediction_rows, window_rows
from headrace.record import FailedRecord, ScoredBatch


class PostgresSink(ExactlyOnce, Sink):
    """Writes outputs to a table, one row per record, keyed by source position.

    **At-least-once** (the default): each ``write`` is its own transaction.

    **Exactly-once** (``transactional=True``): writes are kept in memory until
    :meth:`commit_transaction`, which writes them in one transaction with the consumed
    offsets (``offsets_table``): after a crash both or neither are there, and the source
    restarts from the stored offsets. A worker *claims* its partitions when they are
    assigned (:meth:`claim`: their epoch goes up by one, and the stored positions come
    back), and every transaction checks that the epochs are still its own: a worker that
    was paused past its session, whose partitions another worker has claimed since, has
    its transaction rolled back (:class:`FencedError`) instead of writing them twice.

    **A database that is away** (refused, lost or restarting connections) is waited out:
    the operation is retried with backoff on a new connection until it goes through, and
    the engine's flow bound pauses the source meanwhile. In exactly-once mode the whole
    transaction is written again from memory; a COMMIT whose answer was lost is looked up
    (``last_txn``) before it is repeated.

    ``mode="upsert"`` replaces an existing row with the same position; ``"insert"`` fails
    on one (:class:`DuplicateRowError`). Table names may be schema-qualified. Where the
    pipeline's inputs go as read, a row's ``input`` is the event's JSON as read.
    """

    # With inputs as read, a batch of columns is written without its records' values.
    reads_values = False

    def __init__(
        self,
        dsn: str,
        *,
        table: str = "predictions",
        failures_table: str = "dead_letters",
        offsets_table: str = "headrace_offsets",
        windows_table: str | None = None,
        state_table: str | None = None,
        mode: Mode = "upsert",
        store_input: bool = True,
        transactional: bool = False,
        consumer_group: str = "headrace",
        name: str = "postgres",
        retry_cap: float = 5.0,
        idle_transaction_timeout_s: float = 5.0,
    ) -> None:
        tables.check_names(table, failures_table, offsets_table, windows_table, state_table)
        super().__init__(
            dsn,
            name=name,
            offsets_table=offsets_table,
            consumer_group=consumer_group,
            retry_cap=retry_cap,
            idle_transaction_timeout_s=idle_transaction_timeout_s,
        )
        self.table = table
        self.failures_table = failures_table
        self.windows_table = windows_table
        self.state_table = state_table
        self.mode = mode
        self.store_input = store_input
        self.transactional = transactional
        self._encode = msgspec.json.Encoder().encode
        self._raw_inputs = False
        inserts = tables.Inserts(table, failures_table, windows_table, mode)
        self._insert = inserts.prediction
        self._insert_failure = inserts.failure
        self._insert_window = inserts.window

    def __repr__(self) -> str:
        # The DSN may hold a password: never show it.
        return f"PostgresSink(table={self.table!r}, mode={self.mode!r})"

    async def open(self) -> None:
        await self._retrying(self._create_tables)

    async def _create_tables(self) -> None:
        conn = await self._connection()
        async with conn.transaction():
            for ddl, table in (
                (tables.PREDICTIONS, self.table),
                (tables.FAILURES, self.failures_table),
                (tables.OFFSETS, self.offsets_table),
                (tables.WINDOWS, self.windows_table),
                (tables.STATE, self.state_table),
            ):
                if table is not None:
                    await conn.execute(ddl.format(table=table))
            if self.transactional and not await self._has_epochs(conn):
                upgrade = tables.OFFSETS_UPGRADE.format(table=self.offsets_table)
                for statement in upgrade.split(";"):
                    await conn.execute(statement)
        await conn.commit()

    # -- writing ---------------------------------------------------------------------------

    def bind(self, context: SinkContext) -> None:
        self._raw_inputs = context.inputs_as_read

    def _json(self, value: Any) -> str:
        return self._encode(value).decode()

    async def write(self, batch: ScoredBatch) -> None:
        if len(batch) and is_windows(batch):
            if self.windows_table is None:
                raise ValueError(f"sink {self.name!r} has no windows_table for window outputs")
            rows = window_rows(
                batch, prediction=self._json, value=self._json if self.store_input else None
            )
            await self._execute(self._insert_window, rows, self.windows_table)
        elif len(batch):
            rows = prediction_rows(
                batch,
                prediction=self._json,
                value=self._json if self.store_input else None,
                raw_inputs=self._raw_inputs,
            )
            await self._execute(self._insert, rows, self.table)

    async def write_failures(self, failures: Sequence[FailedRecord]) -> None:
        if failures:
            # PostgreSQL text cannot hold NUL characters; the raw bytes go to bytea as is.
            rows = failure_rows(
                failures,
                value=self._json,
                raw=bytes,
                text=lambda e: e.replace("\x00", "\\0"),
            )
            await self._execute(self._insert_failure, rows, self.failures_table)

    async def _execute(self, sql: str, rows: list[tuple[Any, ...]], table: str) -> None:
        if self.transactional:
            self._pending.append((sql, rows))  # written by the next commit_transaction
            return

        async def once() -> None:
            conn = await self._connection()
            try:
                async with conn.cursor() as cur:
                    await cur.executemany(sql, rows)
                await conn.commit()
            except Exception as exc:
                await rollback(conn)
                duplicate = self._duplicate(exc, table)
                if duplicate is not None:
                    raise duplicate from exc
                raise

        await self._retrying(once)

    def _duplicate(self, exc: BaseException, table: str) -> DuplicateRowError | None:
        return tables.duplicate_row(exc, mode=self.mode, sink=self.name, table=table)

    def _refused(self, exc: BaseException) -> Exception | None:
        return self._duplicate(exc, self.table)

    # -- window state ----------------------------------------------------------------------

    async def write_state(self, topic: str, partition: int, changes: Sequence[Any]) -> None:
        """Window state changes ``(key, value or None)`` of one input partition: with
        exactly-once delivery they commit with the outputs and offsets."""
        group, table = self.consumer_group, self.state_table
        upserts = [(group, topic, partition, k, v) for k, v in changes if v is not None]
        deletes = [(group, topic, partition, k) for k, v in changes if v is None]
        if deletes:
            await self._execute(
                f"DELETE FROM {table} WHERE consumer_group = %s AND topic = %s "
                "AND partition = %s AND key = %s",
                deletes,
                str(table),
            )
        if upserts:
            await self._execute(
                f"INSERT INTO {table} (consumer_group, topic, partition, key, value) "
                "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (consumer_group, topic, partition, "
                "key) DO UPDATE SET value = excluded.value",
                upserts,
                str(table),
            )

    async def read_state(self, topic: str, partitions: Sequence[int]) -> dict[int, list[Any]]:
        """The stored window state of ``partitions`` of ``topic``: ``(key, value)`` pairs."""

        async def once() -> dict[int, list[Any]]:
            out: dict[int, list[Any]] = {p: [] for p in partitions}
            conn = await self._connection()
            async with conn.cursor() as cur:
                await cur.execute(
                    f"SELECT partition, key, value FROM {self.state_table} "
                    "WHERE consumer_group = %s AND topic = %s AND partition = ANY(%s)",
                    (self.consumer_group, topic, list(partitions)),
                )
                for p, key, value in await cur.fetchall():
                    out[p].append((bytes(key), bytes(value)))
            await conn.commit()
            return out

        return await self._retrying(once)

    async def close(self) -> None:
        self._pending.clear()  # uncommitted outputs go with their uncommitted offsets
        await self._disconnect()
