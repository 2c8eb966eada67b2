"""A lookup store in PostgreSQL (the ``postgres`` extra, psycopg 3): one
``SELECT key, columns FROM table WHERE key = ANY(%s)`` per batch on one asynchronous
connection, so the event loop goes on while the database answers."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from headrace.connectors.extras import MissingExtraError
from headrace.enrich.lookup import Key
from headrace.errors import RecordError

try:
    import psycopg
    from psycopg import sql
except ImportError as exc:
    raise MissingExtraError("PostgreSQL lookup", "psycopg", "postgres", name="psycopg") from exc

log = logging.getLogger("headrace.postgres")


def _identifier(name: str) -> sql.Identifier:
    """A possibly schema-qualified name (checked by the configuration's pattern)."""
    return sql.Identifier(*name.split("."))


class PostgresStore:
    """Rows of ``table`` whose ``key_column`` equals an event's key; ``fields`` are the
    columns merged (``None``: every column but the key). The event's keys must have the
    column's type (a text column takes strings, an integer column integers). ``numeric``
    values become floats. ``dsn`` is never printed."""

    def __init__(
        self,
        dsn: str,
        *,
        table: str,
        key_column: str,
        fields: Sequence[str] | None = None,
    ) -> None:
        self.dsn = dsn
        self.table = table
        self.key_column = key_column
        self.what = f"PostgreSQL table {table}"
        columns = (
            sql.SQL("*")
            if fields is None
            else sql.SQL(", ").join(sql.Identifier(f) for f in fields)
        )
        self._query = sql.SQL("SELECT {key}, {columns} FROM {table} WHERE {key} = ANY(%s)").format(
            key=sql.Identifier(key_column), columns=columns, table=_identifier(table)
        )
        self._all = fields is None
        self._conn: Any = None

    def __repr__(self) -> str:
        return f"PostgresStore(table={self.table!r}, key_column={self.key_column!r})"

    def transient(self, exc: BaseException) -> bool:
        # Refused, lost or restarting connections (a terminated backend included).
        return isinstance(exc, psycopg.OperationalError)

    async def fetch(self, keys: Sequence[Key]) -> dict[Key, dict[str, Any] | RecordError]:
        conn = self._conn
        if conn is None or conn.closed:
            conn = self._conn = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True)
        async with conn.cursor() as cur:
            await cur.execute(self._query, (list(keys),))
            rows = await cur.fetchall()
            names = [d.name for d in cur.description][1:]
        skip = self.key_column if self._all else None
        out: dict[Key, dict[str, Any] | RecordError] = {}
        for row in rows:
            out[row[0]] = {
                n: float(v) if v.__class__ is Decimal else v
                for n, v in zip(names, row[1:], strict=True)
                if n != skip
            }
        return out

    async def reset(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await conn.close()
            except Exception as exc:  # already broken; nothing to save
                log.debug("closing a failed lookup connection: %s", exc)

    async def close(self) -> None:
        await self.reset()
