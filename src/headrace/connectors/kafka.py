"""Kafka (and Kafka-protocol services: Redpanda, Azure Event Hubs) on confluent-kafka.

The consumer never commits by itself: the engine commits explicit offsets, per partition,
only for records that reached a terminal state. Rebalances are cooperative; on revocation
the engine finishes (or gives up on) the revoked partitions' records before they are
committed, never after.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import msgspec

from headrace.connectors.base import PartitionKey, RebalanceListener, Sink, Source
from headrace.record import FailedRecord, Record, ScoredBatch

log = logging.getLogger("headrace.kafka")

Settings = dict[str, Any]

# Settings the engine depends on: offsets are committed explicitly, after terminal state.
_CONSUMER_REQUIRED: Settings = {"enable.auto.commit": False, "enable.auto.offset.store": False}
_CONSUMER_DEFAULTS: Settings = {
    "partition.assignment.strategy": "cooperative-sticky",
    "auto.offset.reset": "earliest",
    "enable.partition.eof": False,
}
_PRODUCER_DEFAULTS: Settings = {
    "enable.idempotence": True,
    "acks": "all",
    "linger.ms": 5,
    # Java clients' partitioner: the same key lands on the same partition whoever produces.
    "partitioner": "murmur2_random",
}

SECRET_KEYS = ("password", "secret", "sasl.jaas", "ssl.key", "token")


def redacted(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Settings safe to log: values of secret-looking keys are masked."""
    return {
        k: ("***" if any(s in k.lower() for s in SECRET_KEYS) else v) for k, v in settings.items()
    }


class KafkaFatalError(RuntimeError):
    """An error the Kafka client cannot recover from (fenced, authorisation, config)."""


class KafkaSource(Source):
    """Consumes ``topics`` as a member of consumer group ``group_id``.

    Records keep the Kafka key (as text), headers and timestamp (as event time, unless the
    decoder takes it from a field). ``settings`` pass through to librdkafka; the source
    only insists on manual offset commits.
    """

    decoded = False
    keeps_polling = True

    def __init__(
        self,
        topics: Sequence[str],
        *,
        group_id: str,
        settings: Mapping[str, Any] | None = None,
        max_records: int = 1000,
        poll_timeout: float = 0.1,
        name: str = "kafka",
    ) -> None:
        if not topics:
            raise ValueError("a Kafka source needs at least one topic")
        self.topics = list(topics)
        self.group_id = group_id
        self.settings: Settings = {
            **_CONSUMER_DEFAULTS,
            **(settings or {}),
            **_CONSUMER_REQUIRED,
            "group.id": group_id,
        }
        self.max_records = max_records
        self.poll_timeout = poll_timeout
        self.name = name
        self.consumer: Any = None
        self._listener: RebalanceListener | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # One thread for every consumer call: polls (rebalance callbacks run in them) and
        # commits take turns, so a commit never races a revocation.
        self._poll_thread = ThreadPoolExecutor(1, thread_name_prefix="headrace-kafka-poll")
        self._fatal: BaseException | None = None
        self._group_metadata: Any = None
        self._cooperative = "cooperative" in str(
            self.settings.get("partition.assignment.strategy", "")
        )
        # Flow control: the engine says what to fetch (everything paused, or some
        # partitions held); the poll thread applies it between polls.
        self._want_paused = False
        self._held: frozenset[PartitionKey] = frozenset()
        self._paused: set[PartitionKey] = set()
        self._assigned: frozenset[PartitionKey] = frozenset()
        self._last_read: dict[PartitionKey, float] = {}
        # Lag queries ask the broker: never in the poll thread, which must keep polling.
        self._lag_thread = ThreadPoolExecutor(1, thread_name_prefix="headrace-kafka-lag")
        # The offset after the last record consumed, per partition.
        self._next: dict[PartitionKey, int] = {}

    def bind(self, listener: RebalanceListener) -> None:
        self._listener = listener

    async def open(self) -> None:
        from confluent_kafka import Consumer

        self._loop = asyncio.get_running_loop()
        config = {**self.settings, "error_cb": self._on_error, "logger": log}
        self.consumer = Consumer(config)
        self.consumer.subscribe(
            self.topics, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )
        log.info("kafka source %s: group %s, topics %s", self.name, self.group_id, self.topics)

    async def chunks(self) -> AsyncIterator[list[Record]]:
        from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, KafkaError

        loop = asyncio.get_running_loop()
        consumer = self.consumer
        # Updated here, read by the next poll: the two take turns, never at once.
        following = self._next
        last_read = self._last_read
        while True:
            messages = await loop.run_in_executor(self._poll_thread, self._poll, consumer)
            if self._fatal is not None:
                raise self._fatal
            if not messages:
                continue
            now = time.time()
            chunk: list[Record] = []
            for m in messages:
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        continue
                    if err.fatal():
                        raise KafkaFatalError(f"kafka consumer: {err.str()}")
                    log.warning("kafka %s[%s]: %s", m.topic(), m.partition(), err.str())
                    continue
                kind, ts = m.timestamp()
                key = m.key()
                topic, partition, offset = m.topic(), m.partition(), m.offset()
                when = ts / 1000.0 if kind != TIMESTAMP_NOT_AVAILABLE else now
                chunk.append(
                    Record(
                        key.decode("utf-8", "replace") if key is not None else None,
                        None,
                        when,
                        topic,
                        partition,
                        offset,
                        m.value(),
                        m.headers(),
                    )
                )
                following[(topic, partition)] = offset + 1
                last_read[(topic, partition)] = when
            if chunk:
                yield chunk

    def _poll(self, consumer: Any) -> list[Any]:
        """One poll, in the poll thread, after applying a change of pause state. While
        paused the consumer goes on polling: that keeps it in its group (a consumer that
        does not poll within ``max.poll.interval.ms`` is evicted) and runs rebalances."""
        assigned = self._assigned
        want = set(assigned) if self._want_paused else set(self._held & assigned)
        if want != self._paused:
            self._apply_pause(consumer, want)
        messages: list[Any] = consumer.consume(self.max_records, self.poll_timeout)
        return messages

    def _apply_pause(self, consumer: Any, want: set[PartitionKey]) -> None:
        from confluent_kafka import TopicPartition

        pause = sorted(want - self._paused)
        resume = sorted((self._paused - want) & self._assigned)
        if pause:
            consumer.pause([TopicPartition(t, p) for t, p in pause])
            log.info("kafka %s: paused %s", self.name, _fmt(pause))
        if resume:
            tps = [TopicPartition(t, p) for t, p in resume]
            consumer.resume(tps)
            self._wake_fetcher(consumer, tps)
            log.info("kafka %s: resumed %s", self.name, _fmt(resume))
        self._paused = want

    def _wake_fetcher(self, consumer: Any, partitions: list[Any]) -> None:
        """librdkafka's fetcher notices a resume only at its next wake-up, up to a second
        later: a stall per pause. A seek wakes it at once. The seek goes to the offset after
        the last record consumed, kept here: librdkafka forgets its own position on a seek
        until a record arrives, and a pause in that window resumes from
        ``auto.offset.reset``. Partitions nothing was consumed from yet are left alone."""
        from confluent_kafka import TopicPartition

        for tp in partitions:
            offset = self._next.get((tp.topic, tp.partition))
            if offset is not None:
                consumer.seek(TopicPartition(tp.topic, tp.partition, offset))

    def set_paused(self, paused: bool) -> None:
        self._want_paused = paused

    def pause_partitions(self, partitions: Collection[PartitionKey], paused: bool) -> None:
        if paused:
            self._held = self._held | frozenset(partitions)
        else:
            self._held = self._held - frozenset(partitions)

    def assigned(self) -> list[PartitionKey]:
        return sorted(self._assigned)

    def paused_partitions(self) -> list[PartitionKey]:
        return sorted(self._paused)

    async def lag(self) -> dict[PartitionKey, tuple[int, float]]:
        """Per partition: records between the next one to read and the high watermark,
        and the age of the last record read, by its Kafka timestamp (0 when none are
        left)."""
        if self.consumer is None:
            return {}
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._lag_thread, self._lag)

    def _lag(self) -> dict[PartitionKey, tuple[int, float]]:
        consumer = self.consumer
        if consumer is None:
            return {}
        from confluent_kafka import TopicPartition

        now = time.time()
        paused = set(self._paused)
        out: dict[PartitionKey, tuple[int, float]] = {}
        for key in sorted(self._assigned):
            tp = TopicPartition(*key)
            # The next offset to read: what this worker handed out, else where it starts.
            position = self._next.get(key)
            if position is None:
                (committed,) = consumer.committed([tp], timeout=1.0)
                position = committed.offset
            # A paused partition is not fetched, so its cached high watermark would stand
            # still while the partition grows: ask the broker.
            low, high = consumer.get_watermark_offsets(tp, timeout=1.0, cached=key not in paused)
            if high < 0:
                continue
            if position < 0:  # nothing committed: auto.offset.reset applies
                position = low if self.settings.get("auto.offset.reset") == "earliest" else high
            behind = max(0, high - position)
            last = self._last_read.get(key)
            out[key] = (behind, max(0.0, now - last) if behind and last is not None else 0.0)
        return out

    async def commit(self, positions: Mapping[PartitionKey, int]) -> None:
        """Commit in the poll thread, between two polls: never while a rebalance callback
        runs, and after any revocation that came first, so the partitions still assigned
        when it runs are the only ones committed (a revoked partition's next owner may
        already have moved its offset on)."""
        if positions:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._poll_thread, self._commit_assigned, dict(positions))

    def mirror_commit(self, positions: Mapping[PartitionKey, int]) -> None:
        """Commit without waiting, for lag monitoring where the truth is kept elsewhere."""
        if positions and self.consumer is not None:
            try:
                self.consumer.commit(offsets=_topic_partitions(positions), asynchronous=True)
            except Exception as exc:  # informational only
                log.debug("kafka %s: mirror commit failed: %s", self.name, exc)

    def _commit_assigned(self, positions: dict[PartitionKey, int]) -> None:
        assigned = {(tp.topic, tp.partition) for tp in self.consumer.assignment()}
        mine = {k: v for k, v in positions.items() if k in assigned}
        if mine:
            self._commit(_topic_partitions(mine))

    def _commit(self, offsets: list[Any]) -> None:
        from confluent_kafka import KafkaException

        try:
            self.consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            err = exc.args[0]
            if err.code() in _NOTHING_TO_COMMIT:
                return
            raise

    def group_metadata(self) -> Any:
        """For ``send_offsets_to_transaction``: who commits, in which generation. Taken in
        the rebalance callbacks (the generation changes only there): asked for on the event
        loop, it would wait for the poll in progress."""
        if self._group_metadata is None:
            self._group_metadata = self.consumer.consumer_group_metadata()
        return self._group_metadata

    async def close(self) -> None:
        if self.consumer is not None:
            consumer, self.consumer = self.consumer, None
            # close() leaves the group; its revoke callback runs in the poll thread.
            await asyncio.get_running_loop().run_in_executor(self._poll_thread, consumer.close)
        self._poll_thread.shutdown(wait=True)
        self._lag_thread.shutdown(wait=True)

    # -- callbacks, in the poll thread ---------------------------------------------------

    def _call_listener(self, coro: Any) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        keys = [(p.topic, p.partition) for p in partitions]
        log.info("kafka %s: assigned %s", self.name, _fmt(keys))
        starts: Mapping[PartitionKey, int] | None = None
        if self._listener is not None:
            try:
                starts = self._call_listener(self._listener.partitions_assigned(keys))
            except Exception as exc:
                self._fatal = exc
        if starts:
            for p in partitions:
                if (p.topic, p.partition) in starts:
                    p.offset = starts[(p.topic, p.partition)]
        # Assigning explicitly (the client would otherwise do it) carries the offsets.
        if self._cooperative:
            consumer.incremental_assign(partitions)
        else:
            consumer.assign(partitions)
        self._assigned = self._assigned | frozenset(keys)
        if self._want_paused:  # flow control holds: new partitions start paused
            consumer.pause(partitions)
            self._paused |= set(keys)
        self._group_metadata = consumer.consumer_group_metadata()

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        keys = [(p.topic, p.partition) for p in partitions]
        log.info("kafka %s: revoking %s", self.name, _fmt(keys))
        if self._listener is not None and self._fatal is None:
            try:
                positions = self._call_listener(self._listener.partitions_revoked(keys))
                if positions:
                    self._commit(_topic_partitions(positions))
            except Exception as exc:
                # Not committed: the next owner reads these records again.
                log.error("kafka %s: revocation of %s failed: %s", self.name, _fmt(keys), exc)
                self._fatal = exc
        if self._cooperative:
            consumer.incremental_unassign(partitions)
        else:
            consumer.unassign()
        self._forget(keys)
        self._group_metadata = consumer.consumer_group_metadata()

    def _forget(self, keys: list[PartitionKey]) -> None:
        self._assigned = self._assigned - frozenset(keys)
        self._held = self._held - frozenset(keys)
        for key in keys:
            self._paused.discard(key)
            self._last_read.pop(key, None)
            self._next.pop(key, None)

    def _on_lost(self, consumer: Any, partitions: list[Any]) -> None:
        keys = [(p.topic, p.partition) for p in partitions]
        self._fatal = KafkaFatalError(
            f"kafka {self.name}: partitions {_fmt(keys)} were lost (the group moved on, e.g. "
            "after a session timeout); stopping without committing them. A restart resumes "
            "from the last commit."
        )
        if self._cooperative:
            consumer.incremental_unassign(partitions)
        else:
            consumer.unassign()
        self._forget(keys)

    def _on_error(self, err: Any) -> None:
        if err.fatal():
            self._fatal = KafkaFatalError(f"kafka consumer: {err.str()}")
        else:
            log.warning("kafka consumer: %s", err.str())


class KafkaProducer:
    """One producer per worker, shared by every Kafka sink (and, in exactly-once mode,
    owning the transaction). Never closed before the pipeline ends."""

    def __init__(self, settings: Mapping[str, Any], *, transactional_id: str | None = None):
        self.settings: Settings = {**_PRODUCER_DEFAULTS, **settings}
        if transactional_id is not None:
            self.settings["transactional.id"] = transactional_id
        self.transactional = transactional_id is not None
        self.producer: Any = None
        self.errors: list[str] = []
        self._users = 0
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="headrace-kafka-produce")

    async def open(self) -> None:
        self._users += 1
        if self.producer is not None:
            return
        from confluent_kafka import Producer

        config = {**self.settings, "error_cb": self._on_error, "logger": log}
        self.producer = Producer(config)
        if self.transactional:
            await self.run(self.producer.init_transactions, 30)
            self.producer.begin_transaction()

    async def run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    def on_delivery(self, err: Any, msg: Any) -> None:
        if err is not None:
            self.errors.append(f"{msg.topic()}: {err.str()}")

    def produce(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None,
        headers: Any = None,
        partition: int | None = None,
    ) -> None:
        producer = self.producer
        # librdkafka's "no partition given" (let the partitioner choose) is -1.
        where = -1 if partition is None else partition
        while True:
            try:
                producer.produce(
                    topic,
                    value,
                    key,
                    partition=where,
                    headers=headers,
                    on_delivery=self.on_delivery,
                )
                return
            except BufferError:
                # The local queue is full: serve delivery reports until there is room.
                producer.poll(0.05)

    async def flush(self) -> None:
        """Wait until every message produced so far is acknowledged; raise if any failed."""
        producer = self.producer
        if producer is None:
            return
        while await self.run(producer.flush, 1.0):
            pass
        if self.errors:
            first, n = self.errors[0], len(self.errors)
            self.errors.clear()
            raise KafkaFatalError(f"{n} Kafka deliveries failed, the first: {first}")

    async def commit_transaction(self, positions: Mapping[PartitionKey, int], source: Any) -> None:
        """Commit outputs and consumed offsets atomically, then open the next transaction."""
        from confluent_kafka import KafkaException

        producer = self.producer
        await self.flush()
        try:
            if positions:
                await self.run(
                    producer.send_offsets_to_transaction,
                    _topic_partitions(positions),
                    source.group_metadata(),
                    30,
                )
            await self.run(producer.commit_transaction, 30)
        except KafkaException as exc:
            err = exc.args[0]
            if err.txn_requires_abort():
                await self.run(producer.abort_transaction, 30)
                raise KafkaFatalError(
                    f"the transaction was aborted ({err.str()}); its records were not "
                    "committed and are read again after a restart"
                ) from exc
            raise KafkaFatalError(f"kafka transaction: {err.str()}") from exc
        producer.begin_transaction()

    async def close(self) -> None:
        self._users -= 1
        if self._users > 0 or self.producer is None:
            return
        producer, self.producer = self.producer, None
        if self.transactional:
            # Whatever was not committed is aborted: its input was not committed either.
            await self.run(producer.abort_transaction, 30)
        else:
            await self.run(producer.flush, 30)
        self._thread.shutdown(wait=True)

    def _on_error(self, err: Any) -> None:
        if err.fatal():
            self.errors.append(f"fatal: {err.str()}")
        log.warning("kafka producer: %s", err.str())


class KafkaSink(Sink):
    """Produces each output as JSON to ``topic``, keyed by the record's key, with the model
    version and source position also in headers. ``write`` queues; ``flush`` waits for the
    broker's acknowledgements, and only then does the engine commit."""

    def __init__(self, topic: str, *, producer: KafkaProducer, name: str = "kafka") -> None:
        self.topic = topic
        self.producer = producer
        self.name = name
        self._encode = msgspec.json.Encoder().encode

    async def open(self) -> None:
        await self.producer.open()

    async def write(self, batch: ScoredBatch) -> None:
        encode, produce, topic = self._encode, self.producer.produce, self.topic
        headers = [("headrace-model", f"{batch.model.name}@{batch.model.version}".encode())]
        for out, r in zip(batch.to_dicts(), batch.records, strict=True):
            key = r.key
            produce(topic, encode(out), None if key is None else str(key).encode(), headers)
        self.producer.producer.poll(0)

    async def write_failures(self, failures: Sequence[FailedRecord]) -> None:
        """Dead letters keep the original bytes, so they can be replayed; the error and
        the source position travel in headers."""
        produce, topic = self.producer.produce, self.topic
        for f in failures:
            r = f.record
            raw = r.raw if r.raw is not None else self._encode(r.value)
            headers = [
                ("headrace-stage", f.stage.encode()),
                ("headrace-error-type", f.error_type.encode()),
                ("headrace-error", f.error.encode("utf-8", "replace")),
                ("headrace-source-topic", r.topic.encode()),
                ("headrace-source-partition", str(r.partition).encode()),
                ("headrace-source-offset", str(r.offset).encode()),
                ("headrace-attempts", str(f.attempts).encode()),
            ]
            if f.model is not None:
                headers.append(("headrace-model", f"{f.model.name}@{f.model.version}".encode()))
            key = r.key
            produce(topic, raw, None if key is None else str(key).encode(), headers)
        self.producer.producer.poll(0)

    async def flush(self) -> None:
        await self.producer.flush()

    async def close(self) -> None:
        await self.producer.close()


_NOTHING_TO_COMMIT: set[int] = set()


def _init_codes() -> None:
    try:
        from confluent_kafka import KafkaError
    except ImportError:  # the kafka extra is not installed; the source cannot be used
        return
    _NOTHING_TO_COMMIT.add(KafkaError._NO_OFFSET)


_init_codes()


def _topic_partitions(positions: Mapping[PartitionKey, int]) -> list[Any]:
    from confluent_kafka import TopicPartition

    return [TopicPartition(t, p, o) for (t, p), o in sorted(positions.items())]


def _keys(partitions: Sequence[Any]) -> set[PartitionKey]:
    return {(tp.topic, tp.partition) for tp in partitions}


def _fmt(keys: Sequence[PartitionKey]) -> str:
    return ", ".join(f"{t}[{p}]" for t, p in keys) or "nothing"
