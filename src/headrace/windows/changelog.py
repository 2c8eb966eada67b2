"""Where window state is made durable: a changelog, one partition per input partition.

A changelog takes ``(key, value)`` byte pairs per input partition (``value`` ``None``
deletes the key) and gives back, on restore, every pair written, oldest first: the latest
value per key is the state. :class:`KafkaChangelog` keeps them in a compacted Kafka topic
partitioned like the input, so that whichever worker is assigned input partition ``p``
restores it from changelog partition ``p``. :class:`MemoryChangelog` keeps the latest
value per key in memory, for tests.
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from headrace.errors import HeadraceError

if TYPE_CHECKING:
    # Only for types: the engine imports this module, and `import headrace` must not load
    # the optional Kafka connector.
    from headrace.connectors.kafka import KafkaProducer
    from headrace.connectors.postgres import PostgresSink

log = logging.getLogger("headrace.windows")

Change = tuple[bytes, bytes | None]


class ChangelogError(HeadraceError, RuntimeError):
    """The changelog cannot be used: missing, partitioned unlike the input, unreadable."""


class Changelog(ABC):
    """Durable window state, per input partition number."""

    name = "changelog"
    #: Whether writes are durable once :meth:`flush` returns (a memory changelog's are not).
    durable = True

    async def open(self) -> None:  # noqa: B027 - optional hook
        """Connect, and check (or create) where the state goes."""

    @abstractmethod
    async def read(self, partitions: Sequence[int]) -> dict[int, list[Change]]:
        """Every pair written to each partition, oldest first."""

    @abstractmethod
    def write(self, partition: int, changes: Sequence[Change]) -> None:
        """Queue ``changes`` of one partition; durable after :meth:`flush`."""

    @abstractmethod
    async def flush(self) -> None:
        """Wait until every change written so far is durable; raise if any failed."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        pass


class MemoryChangelog(Changelog):
    """A changelog in this process's memory, compacted as it is written (the latest value
    per key): state survives a rebalance inside one process, not a restart. For tests."""

    name = "memory"
    durable = False

    def __init__(self) -> None:
        self.partitions: dict[int, dict[bytes, bytes]] = {}

    async def read(self, partitions: Sequence[int]) -> dict[int, list[Change]]:
        return {p: list(self.partitions.get(p, {}).items()) for p in partitions}

    def write(self, partition: int, changes: Sequence[Change]) -> None:
        latest = self.partitions.setdefault(partition, {})
        for key, value in changes:
            if value is None:
                latest.pop(key, None)
            else:
                latest[key] = value

    async def flush(self) -> None:
        pass


class PostgresChangelog(Changelog):
    """Window state in a table of a PostgreSQL sink's database (``state_table``), written
    on the sink's connection. With exactly-once delivery into PostgreSQL the changes join
    the sink's open transaction, so state, outputs and offsets commit together. The sink
    opens and closes the connection; this only uses it."""

    name = "postgres-changelog"

    def __init__(self, sink: PostgresSink, *, topic: str) -> None:
        if sink.state_table is None:
            raise ValueError(f"sink {sink.name!r} has no state_table for window state")
        self.sink = sink
        self.topic = topic
        self._queued: list[tuple[int, list[Change]]] = []

    async def read(self, partitions: Sequence[int]) -> dict[int, list[Change]]:
        return await self.sink.read_state(self.topic, partitions)

    def write(self, partition: int, changes: Sequence[Change]) -> None:
        self._queued.append((partition, list(changes)))

    async def flush(self) -> None:
        queued, self._queued = self._queued, []
        for partition, changes in queued:
            await self.sink.write_state(self.topic, partition, changes)


class KafkaChangelog(Changelog):
    """A compacted topic with as many partitions as the input topic.

    Writes go through ``producer``: in exactly-once mode that is the transactional
    producer, so state changes commit in the same transaction as outputs and offsets.
    ``open`` creates the topic (``cleanup.policy=compact``) when it does not exist, and
    refuses one with fewer partitions than the input. ``client`` are the librdkafka
    connection settings for the admin client and the restore consumer.

    Restoring reads each partition from its start to its high watermark, then until
    ``settle`` seconds pass without a record: some Kafka-protocol brokers (Tansu) report a
    high watermark that leaves out the last batch.
    """

    name = "kafka-changelog"

    def __init__(
        self,
        topic: str,
        *,
        input_topic: str,
        producer: KafkaProducer,
        client: Mapping[str, Any],
        create: bool = True,
        settle: float = 0.2,
        restore_timeout: float = 600.0,
    ) -> None:
        self.topic = topic
        self.input_topic = input_topic
        self.producer = producer
        self.client = dict(client)
        self.create = create
        self.settle = settle
        self.restore_timeout = restore_timeout

    async def open(self) -> None:
        await self.producer.open()
        await asyncio.get_running_loop().run_in_executor(None, self._ensure_topic)

    def _ensure_topic(self) -> None:
        from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

        admin = AdminClient(self.client)
        md = admin.list_topics(timeout=30)
        source = md.topics.get(self.input_topic)
        if source is None or source.error is not None or not source.partitions:
            raise ChangelogError(
                f"input topic {self.input_topic!r} not found: its partition count is what the "
                f"changelog {self.topic!r} must have"
            )
        wanted = len(source.partitions)
        existing = md.topics.get(self.topic)
        if existing is not None and existing.error is None and existing.partitions:
            have = len(existing.partitions)
            if have < wanted:
                raise ChangelogError(
                    f"changelog topic {self.topic!r} has {have} partitions, input topic "
                    f"{self.input_topic!r} {wanted}: state for the missing partitions has "
                    "nowhere to go. Add partitions to the changelog (and keep them compacted)"
                )
            return
        if not self.create:
            raise ChangelogError(
                f"changelog topic {self.topic!r} does not exist; create it compacted with "
                f"{wanted} partitions, or let headrace create it"
            )
        new = NewTopic(
            self.topic,
            num_partitions=wanted,
            replication_factor=-1,  # the broker's default
            config={"cleanup.policy": "compact"},
        )
        try:
            admin.create_topics([new], operation_timeout=30, request_timeout=30)[self.topic].result(
                60
            )
        except Exception as exc:  # another worker may have created it meanwhile
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise ChangelogError(f"creating changelog topic {self.topic!r}: {exc}") from exc
        log.info("created changelog topic %s (%d partitions, compacted)", self.topic, wanted)

    async def read(self, partitions: Sequence[int]) -> dict[int, list[Change]]:
        if not partitions:
            return {}
        return await asyncio.get_running_loop().run_in_executor(None, self._read, partitions)

    def _read(self, partitions: Sequence[int]) -> dict[int, list[Change]]:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        from headrace.connectors.kafka import KafkaFatalError

        consumer = Consumer(
            {
                **self.client,
                "group.id": f"{self.topic}-restore",  # never joined: partitions are assigned
                "enable.auto.commit": False,
                "enable.partition.eof": False,
                "isolation.level": "read_committed",  # aborted state changes stay out
                "fetch.wait.max.ms": 10,
            }
        )
        out: dict[int, list[Change]] = {p: [] for p in partitions}
        try:
            ends: dict[int, int] = {}
            for p in partitions:
                low, high = consumer.get_watermark_offsets(
                    TopicPartition(self.topic, p), timeout=30, cached=False
                )
                if high > low:
                    ends[p] = high
            if not ends:
                return out
            consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in ends])
            deadline = time.monotonic() + self.restore_timeout
            reached: set[int] = set()
            quiet_since: float | None = None
            while True:
                if time.monotonic() > deadline:
                    raise ChangelogError(
                        f"restoring {self.topic!r} partitions {sorted(ends)} took longer than "
                        f"{self.restore_timeout}s"
                    )
                messages = consumer.consume(10_000, 0.05)
                for m in messages:
                    err = m.error()
                    if err is not None:
                        if err.fatal():
                            raise KafkaFatalError(f"changelog restore: {err.str()}")
                        continue
                    part, key, offset = m.partition(), m.key(), m.offset()
                    if part is None or key is None or offset is None:
                        continue  # every changelog record has a key
                    out[part].append((key, m.value()))
                    if offset + 1 >= ends[part]:
                        reached.add(part)
                if len(reached) < len(ends):
                    continue
                # At every reported end: read on until nothing more comes.
                now = time.monotonic()
                if messages or quiet_since is None:
                    quiet_since = now
                elif now - quiet_since >= self.settle:
                    return out
        finally:
            consumer.close()

    def write(self, partition: int, changes: Sequence[Change]) -> None:
        produce, topic = self.producer.produce, self.topic
        for key, value in changes:
            produce(topic, value, key, partition=partition)

    async def flush(self) -> None:
        await self.producer.flush()

    async def close(self) -> None:
        await self.producer.close()
