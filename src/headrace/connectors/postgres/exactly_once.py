"""Exactly-once into PostgreSQL: consumed offsets committed in the same transaction as
the outputs, fenced against a worker that lost its partitions.

The offsets table holds one row per partition of a consumer group: the next offset to
read, the *epoch* (how many times the partition was claimed) and the number of the last
transaction that moved it. A worker claims its partitions when they are assigned (the
epoch goes up by one); each of its commits moves the offsets only where the epoch is
still the one it claimed, so a worker paused past its session, whose partitions another
has claimed since, is rolled back instead of writing them twice. A take-over does not
wait for a stopped earlier owner's locks for longer than the hold limit.

What changes with the exactly-once protocol; the rows themselves are written by
:class:`~headrace.connectors.postgres.sink.PostgresSink`, which this class is the base of.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

import psycopg

from headrace.connectors.base import PartitionKey
from headrace.connectors.postgres.connection import Connection, rollback
from headrace.errors import HeadraceError

log = logging.getLogger("headrace.postgres")

#: Claims that wait for an earlier owner's locks at most the hold limit, ending it after
#: each; then one that waits as long as it takes.
_CLAIM_ATTEMPTS = 3


class FencedError(HeadraceError, RuntimeError):
    """Another worker claimed partitions this one still had uncommitted work for (this one
    was paused or cut off past its session, and the group moved on): the transaction was
    rolled back, and nothing of it was committed."""


class ExactlyOnce(Connection):
    """Claims, fenced commits and stored positions of consumer group ``consumer_group``
    in ``offsets_table``; statements kept in :attr:`_pending` are written by the next
    :meth:`commit_transaction`."""

    def __init__(
        self,
        dsn: str,
        *,
        name: str,
        offsets_table: str,
        consumer_group: str,
        retry_cap: float,
        idle_transaction_timeout_s: float,
    ) -> None:
        super().__init__(
            dsn,
            name=name,
            retry_cap=retry_cap,
            idle_transaction_timeout_s=idle_transaction_timeout_s,
        )
        self.offsets_table = offsets_table
        self.consumer_group = consumer_group
        # Statements waiting for the next commit, and the claimed epochs.
        self._pending: list[tuple[str, list[tuple[Any, ...]]]] = []
        self._epochs: dict[PartitionKey, int] = {}

    def _refused(self, exc: BaseException) -> Exception | None:
        """The error to raise instead of ``exc``, a failure of the commit's statements
        (the sink: a row already there); ``None`` raises ``exc`` itself."""
        return None

    async def _has_epochs(self, conn: Any) -> bool:
        """Whether the offsets table has the fencing columns (checked first: an ALTER
        TABLE would wait for, and then hold up, every other worker's commit)."""
        async with conn.cursor() as cur:
            await cur.execute(
                "SELECT count(*) FROM pg_attribute "
                "WHERE attrelid = to_regclass(%s) AND attname IN ('epoch', 'last_txn')",
                (self.offsets_table,),
            )
            row = await cur.fetchone()
        return row is not None and row[0] == 2

    async def claim(self, partitions: Sequence[PartitionKey]) -> dict[PartitionKey, int]:
        """Take ``partitions`` over for this worker: their epoch goes up by one, which
        fails any transaction an earlier owner still has open for them, and their stored
        positions (where there are any) come back. Committed at once, on its own."""
        if not partitions:
            return {}
        topics = [t for t, _ in partitions]
        numbers = [p for _, p in partitions]

        async def once() -> list[Any]:
            conn = await self._connection()
            for _ in range(_CLAIM_ATTEMPTS):
                try:
                    return await self._claim_rows(conn, topics, numbers)
                except psycopg.errors.LockNotAvailable:
                    await rollback(conn)
                    await self._end_stale_holders(conn, topics, numbers)
                except Exception:
                    await rollback(conn)
                    raise
            return await self._claim_rows(conn, topics, numbers)  # waits, as it always did

        rows = await self._retrying(once)
        positions: dict[PartitionKey, int] = {}
        for topic, partition, next_offset, epoch in rows:
            self._epochs[(topic, partition)] = epoch
            if next_offset is not None:
                positions[(topic, partition)] = next_offset
        return positions

    async def _claim_rows(self, conn: Any, topics: list[str], numbers: list[int]) -> list[Any]:
        async with conn.cursor() as cur:
            # Bounded: the rows may be locked by an earlier owner's open transaction.
            await cur.execute("SELECT set_config('lock_timeout', %s, true)", (self._hold_limit_ms,))
            await cur.execute(
                f"INSERT INTO {self.offsets_table} AS o "
                "(consumer_group, topic, partition, next_offset, epoch) "
                "SELECT %s, t, p, NULL, 1 FROM unnest(%s::text[], %s::int[]) AS v(t, p) "
                "ON CONFLICT (consumer_group, topic, partition) "
                "DO UPDATE SET epoch = o.epoch + 1 "
                "RETURNING topic, partition, next_offset, epoch",
                (self.consumer_group, topics, numbers),
            )
            rows = await cur.fetchall()
        await conn.commit()
        return list(rows)

    async def _end_stale_holders(self, conn: Any, topics: list[str], numbers: list[int]) -> None:
        """End the transactions that hold the offsets rows of partitions Kafka just gave
        this worker, past the hold limit.

        Only an earlier owner's transaction holds them (its fence locked them), and that
        owner is stopped mid-transaction: SIGSTOP, a frozen VM. When it stopped inside a
        pipelined statement, its session is not "idle in transaction" and the server's
        idle timeout never ends it; measured on the fault test, the new owner then waited
        for the whole pause. Ending it is safe either way: its outputs and offsets go in
        one transaction, rolled back together, and when it runs again its retry is
        fenced (the epoch moved on).
        """
        async with conn.cursor() as cur:
            await cur.execute(
                f"SELECT DISTINCT l.pid, o.topic, o.partition FROM {self.offsets_table} o "
                "JOIN pg_locks l ON l.locktype = 'transactionid' AND l.granted "
                "AND l.transactionid = o.xmax "
                "JOIN unnest(%s::text[], %s::int[]) AS v(t, p) "
                "ON o.topic = v.t AND o.partition = v.p "
                "WHERE o.consumer_group = %s AND l.pid <> pg_backend_pid()",
                (topics, numbers, self.consumer_group),
            )
            holders = await cur.fetchall()
            for pid, topic, partition in holders:
                log.warning(
                    "sink %r: %s[%s] was held by a transaction of an earlier owner "
                    "(server process %s) for more than %ss; ending it so that this worker "
                    "can take the partition over (that transaction is rolled back whole)",
                    self.name,
                    topic,
                    partition,
                    pid,
                    self.idle_transaction_timeout_s,
                )
                try:
                    await cur.execute("SELECT pg_terminate_backend(%s)", (pid,))
                except psycopg.Error as exc:  # e.g. another role's session: wait for it
                    log.warning("sink %r: could not end it (%s); waiting", self.name, exc)
                    await rollback(conn)
                    return
        await conn.commit()

    def release(self, partitions: Sequence[PartitionKey]) -> None:
        """``partitions`` went to another worker: later transactions leave them alone."""
        for key in partitions:
            self._epochs.pop(key, None)

    async def commit_transaction(self, positions: Mapping[PartitionKey, int]) -> None:
        """Commit ``positions`` with everything written since the last commit.

        Steps, in order, in one transaction:

        1. move the offsets of every partition this worker claimed (``positions`` where
           given, else as they are) and stamp them with this transaction's number, only
           where the epoch is still the one this worker claimed: a row that does not match
           means another worker claimed the partition since, and the transaction is rolled
           back (:class:`FencedError`);
        2. write the outputs, dead letters and window state kept since the last commit;
        3. commit, and forget what was kept.

        A lost connection anywhere: a new one, and all the steps again. If the connection
        was lost during the COMMIT itself, the stamp says whether it went through.
        """
        unclaimed = [k for k in positions if k not in self._epochs]
        if unclaimed:
            raise RuntimeError(f"sink {self.name!r}: positions of unclaimed partitions {unclaimed}")
        claimed = sorted(self._epochs.items())
        txn = secrets.randbits(62)
        committing = False

        async def once() -> None:
            nonlocal committing
            conn = await self._connection()
            if committing:  # the last attempt failed during COMMIT: did it go through?
                committing = False
                if claimed and await self._stamped(conn, claimed[0][0], txn):
                    return
            try:
                await self._fence(conn, claimed, positions, txn)
                async with conn.cursor() as cur:
                    for sql, rows in self._pending:
                        await cur.executemany(sql, rows)
                committing = True
                await conn.commit()
                committing = False
            except Exception as exc:
                if not committing:
                    await rollback(conn)
                refused = self._refused(exc)
                if refused is not None:
                    raise refused from exc
                raise

        await self._retrying(once)
        self._pending.clear()

    async def _fence(
        self,
        conn: Any,
        claimed: list[tuple[PartitionKey, int]],
        positions: Mapping[PartitionKey, int],
        txn: int,
    ) -> None:
        if not claimed:
            return
        async with conn.cursor() as cur:
            await cur.execute(
                f"UPDATE {self.offsets_table} AS o "
                "SET next_offset = COALESCE(v.next_offset, o.next_offset), last_txn = %s "
                "FROM unnest(%s::text[], %s::int[], %s::bigint[], %s::bigint[]) "
                "AS v(topic, partition, next_offset, epoch) "
                "WHERE o.consumer_group = %s AND o.topic = v.topic "
                "AND o.partition = v.partition AND o.epoch = v.epoch "
                "RETURNING o.topic, o.partition",
                (
                    txn,
                    [t for (t, _), _ in claimed],
                    [p for (_, p), _ in claimed],
                    [positions.get(k) for k, _ in claimed],
                    [e for _, e in claimed],
                    self.consumer_group,
                ),
            )
            mine = {(t, p) for t, p in await cur.fetchall()}
        lost = [k for k, _ in claimed if k not in mine]
        if lost:
            await rollback(conn)
            for key in lost:
                self._epochs.pop(key, None)
            names = ", ".join(f"{t}[{p}]" for t, p in lost)
            raise FencedError(
                f"sink {self.name!r}: partitions {names} were claimed by another worker of "
                f"group {self.consumer_group!r} (this one was paused or cut off past its "
                "session): this worker's open transaction was rolled back and nothing of "
                "it was committed; stopping. The other worker has the partitions from "
                "the last commit."
            )

    async def _stamped(self, conn: Any, key: PartitionKey, txn: int) -> bool:
        async with conn.cursor() as cur:
            await cur.execute(
                f"SELECT last_txn FROM {self.offsets_table} "
                "WHERE consumer_group = %s AND topic = %s AND partition = %s",
                (self.consumer_group, *key),
            )
            row = await cur.fetchone()
        await conn.commit()
        return row is not None and row[0] == txn

    async def stored_positions(self, partitions: Sequence[PartitionKey]) -> dict[PartitionKey, int]:
        """The committed positions of ``partitions``, where this sink has any (without
        claiming them: see :meth:`claim`)."""
        if not partitions:
            return {}

        async def once() -> list[Any]:
            conn = await self._connection()
            async with conn.cursor() as cur:
                await cur.execute(
                    f"SELECT topic, partition, next_offset FROM {self.offsets_table} "
                    "WHERE consumer_group = %s AND next_offset IS NOT NULL",
                    (self.consumer_group,),
                )
                rows = await cur.fetchall()
            await conn.commit()
            return list(rows)

        wanted = set(partitions)
        return {(t, p): o for t, p, o in await self._retrying(once) if (t, p) in wanted}
