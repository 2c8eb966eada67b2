"""The PostgreSQL sink's one connection: opened when first needed, with the session
settings the take-over of partitions relies on, and opened again after a failure while
the database is away (refused, lost or restarting connections are waited out).

What changes with how the sink talks to the server; what it says is in
:mod:`~headrace.connectors.postgres.sink` and
:mod:`~headrace.connectors.postgres.exactly_once`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import psycopg

from headrace.connectors.outage import Outage

log = logging.getLogger("headrace.postgres")

T = TypeVar("T")


def transient(exc: BaseException) -> bool:
    """Whether ``exc`` means "the database is not reachable now" (connection refused,
    lost, the server shutting down or starting), not "this statement is wrong"."""
    return isinstance(exc, psycopg.OperationalError)


async def rollback(conn: Any) -> None:
    """End a failed transaction, if the connection is still there to end it on."""
    try:
        await conn.rollback()
    except Exception as exc:
        log.debug("rollback after a failure: %s", exc)


class Connection:
    """The connection of the sink ``name`` to ``dsn``, used by one operation at a time:
    each goes through :meth:`_retrying`, which waits out an outage and holds a lock, so
    that a claim never lands inside a commit's transaction."""

    def __init__(
        self, dsn: str, *, name: str, retry_cap: float, idle_transaction_timeout_s: float
    ) -> None:
        self.dsn = dsn
        self.name = name
        self.idle_transaction_timeout_s = idle_transaction_timeout_s
        self._hold_limit_ms = f"{max(1, round(idle_transaction_timeout_s * 1000))}ms"
        self.conn: Any = None
        # One transaction at a time on the one connection: a claim must not land inside
        # a commit's transaction.
        self._lock = asyncio.Lock()
        self._outage = Outage(f"PostgreSQL sink {name!r}", transient=transient, cap=retry_cap)

    @property
    def down(self) -> bool:
        """Whether the sink is waiting for its database to answer again."""
        return self._outage.down

    async def _connection(self) -> Any:
        if self.conn is None or self.conn.closed:
            conn = await psycopg.AsyncConnection.connect(self.dsn, autocommit=False)
            # A worker stopped (SIGSTOP, a frozen VM) in the middle of a transaction holds
            # the row locks of its offsets, and the worker that takes its partitions over
            # would wait for them in claim() for as long as the pause lasts: seen as a
            # group that stopped writing. The server ends such a transaction after this
            # long; when the worker runs again its retry is fenced. (Our own transactions
            # go from one statement to the next without waiting on anything else.)
            async with conn.cursor() as cur:
                await cur.execute(
                    "SELECT set_config('idle_in_transaction_session_timeout', %s, false)",
                    (self._hold_limit_ms,),
                )
            await conn.commit()
            self.conn = conn
        return self.conn

    async def _drop(self) -> None:
        """Forget a connection that failed: the next attempt opens a new one."""
        conn, self.conn = self.conn, None
        if conn is not None:
            try:
                await conn.close()
            except Exception as exc:  # already broken; nothing to save
                log.debug("closing a failed connection: %s", exc)

    async def _retrying(self, op: Callable[[], Awaitable[T]]) -> T:
        async with self._lock:
            return await self._outage.run(op, reset=self._drop)

    async def _disconnect(self) -> None:
        """Roll back what is open and close the connection, for good."""
        if self.conn is not None:
            conn, self.conn = self.conn, None
            try:
                await conn.rollback()
                await conn.close()
            except Exception as exc:  # the database is away: nothing was pending on it
                log.warning("sink %s: closing the connection failed: %s", self.name, exc)
