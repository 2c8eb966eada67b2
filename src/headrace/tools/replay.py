"""``headrace dead-letters replay``: dead letters back onto a topic, as they first came.

A Kafka dead letter holds the record's original value (the bytes as read, when the source
delivered bytes) and its key, with why and where it failed in headers
(``headrace-stage``, ``headrace-error-type``, ``headrace-source-topic/-partition/-offset``:
see the Kafka sink). :func:`replay` reads a dead-letter topic from the beginning to its
end, keeps the dead letters whose stage and error type were asked for, and produces each
one's key and value, unchanged, to another topic with headers that record the replay:

- ``headrace-replayed-from``: ``topic/partition/offset`` of the dead letter replayed;
- ``headrace-replayed-source``: ``topic/partition/offset`` of the record that failed
  (the dead letter's source position), which the audit follows back (``--replay-topic``);
- ``headrace-replayed-stage``, ``headrace-replayed-error-type``: why it failed.

The topic is read by assignment with a consumer that joins no group and commits nothing,
so a replay never moves anyone's offsets and can be run again (it then replays again).
Its end is each partition's high watermark as fetch responses report it (a broker's
``ListOffsets`` may under-report it: Tansu does), reached by the consumer's position.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from headrace.errors import HeadraceError
from headrace.tools.settings import RedactingLogger, redact

STAGE = "headrace-stage"
ERROR_TYPE = "headrace-error-type"
SOURCE_TOPIC = "headrace-source-topic"
SOURCE_PARTITION = "headrace-source-partition"
SOURCE_OFFSET = "headrace-source-offset"

REPLAYED_FROM = "headrace-replayed-from"
REPLAYED_SOURCE = "headrace-replayed-source"
REPLAYED_STAGE = "headrace-replayed-stage"
REPLAYED_ERROR_TYPE = "headrace-replayed-error-type"

CONSUMER_DEFAULTS: dict[str, Any] = {
    "group.id": "headrace-replay",  # required by librdkafka; never joined or committed
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
    "enable.partition.eof": False,
    "fetch.wait.max.ms": 10,
}
PRODUCER_DEFAULTS: dict[str, Any] = {
    "enable.idempotence": True,
    "acks": "all",
    "linger.ms": 5,
}


class ReplayError(HeadraceError, RuntimeError):
    """The replay could not read its topic or write the records it selected."""


@dataclass
class ReplaySummary:
    """What a replay read, selected and produced. ``selected`` counts by ``(stage, error
    type)``; ``skipped`` counts dead letters the filters left out, ``not_dead_letters``
    records without a ``headrace-stage`` header."""

    from_topic: str
    to_topic: str
    read: int = 0
    not_dead_letters: int = 0
    skipped: int = 0
    produced: int = 0
    failed: int = 0
    dry_run: bool = False
    selected: Counter[tuple[str, str]] = field(default_factory=Counter)
    incomplete: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    elapsed: float = 0.0

    @property
    def selected_count(self) -> int:
        return sum(self.selected.values())


def position_text(topic: str, partition: int, offset: int) -> str:
    """A position as the replay headers write it: ``topic/partition/offset`` (a topic name
    holds no ``/``)."""
    return f"{topic}/{partition}/{offset}"


def parse_position(text: str) -> tuple[str, int, int]:
    """``topic/partition/offset`` back to its parts; ``ValueError`` for anything else.

    >>> parse_position("dead-letters/0/12")
    ('dead-letters', 0, 12)
    """
    topic, partition, offset = text.rsplit("/", 2)
    if not topic:
        raise ValueError(f"no topic in {text!r}")
    return topic, int(partition), int(offset)


def _text(headers: Mapping[str, str | bytes | None], name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        return None
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def replay(
    bootstrap: str,
    from_topic: str,
    to_topic: str,
    *,
    stages: Collection[str] = (),
    error_types: Collection[str] = (),
    dry_run: bool = False,
    config: Mapping[str, Any] | None = None,
    end_timeout: float = 30.0,
    metadata_timeout: float = 10.0,
) -> ReplaySummary:
    """Replay the dead letters of ``from_topic`` whose stage is one of ``stages`` and
    whose error type is one of ``error_types`` (empty: any) to ``to_topic``; with
    ``dry_run``, count them without producing. ``config``: librdkafka settings for both
    clients. Raises :class:`ReplayError` when a topic cannot be read or a record was not
    delivered (the summary then says how many were)."""
    if from_topic == to_topic:
        raise ValueError("--from and --to must differ")
    started = time.monotonic()
    summary = ReplaySummary(from_topic, to_topic, dry_run=dry_run)
    settings: dict[str, Any] = {**(config or {}), "bootstrap.servers": bootstrap}
    consumer_settings = {**CONSUMER_DEFAULTS, **settings}
    try:
        consumer = Consumer({**consumer_settings, "logger": RedactingLogger(settings)})
    except (KafkaException, ValueError, TypeError) as exc:
        raise ValueError(f"cannot create a consumer: {redact(str(exc), settings)}") from None
    producer: Producer | None = None
    try:
        if not dry_run:
            _check_topic(consumer, to_topic, metadata_timeout)
            try:
                producer = Producer(
                    {**PRODUCER_DEFAULTS, **settings, "logger": RedactingLogger(settings)}
                )
            except (KafkaException, ValueError, TypeError) as exc:
                raise ValueError(
                    f"cannot create a producer: {redact(str(exc), settings)}"
                ) from None

        def take(m: Message) -> None:
            summary.read += 1
            headers = dict(m.headers() or ())
            stage = _text(headers, STAGE)
            if stage is None:
                summary.not_dead_letters += 1
                return
            error_type = _text(headers, ERROR_TYPE) or ""
            if (stages and stage not in stages) or (error_types and error_type not in error_types):
                summary.skipped += 1
                return
            summary.selected[(stage, error_type)] += 1
            if producer is None:
                return
            topic, partition, offset = m.topic(), m.partition(), m.offset()
            assert topic is not None and partition is not None and offset is not None
            replay_headers: list[tuple[str, str | bytes | None]] = [
                (REPLAYED_FROM, position_text(topic, partition, offset).encode()),
                (REPLAYED_STAGE, stage.encode()),
                (REPLAYED_ERROR_TYPE, error_type.encode()),
            ]
            src = [_text(headers, h) for h in (SOURCE_TOPIC, SOURCE_PARTITION, SOURCE_OFFSET)]
            if all(s is not None for s in src):
                replay_headers.append((REPLAYED_SOURCE, "/".join(map(str, src)).encode()))
            _produce(producer, to_topic, m.key(), m.value(), replay_headers, summary)

        summary.incomplete = read_to_end(
            consumer, from_topic, take, end_timeout=end_timeout, metadata_timeout=metadata_timeout
        )
        if producer is not None:
            left = producer.flush(metadata_timeout + 20)
            if left:
                summary.failed += left
                summary.errors.append(f"{left} records not delivered in time")
    except ReplayError as exc:
        raise ReplayError(redact(str(exc), settings)) from None
    finally:
        consumer.close()
    summary.elapsed = time.monotonic() - started
    return summary


def _produce(
    producer: Producer,
    topic: str,
    key: bytes | None,
    value: bytes | None,
    headers: list[tuple[str, str | bytes | None]],
    summary: ReplaySummary,
) -> None:
    def delivered(err: Any, _msg: Any) -> None:
        if err is None:
            summary.produced += 1
        else:
            summary.failed += 1
            if len(summary.errors) < 5:
                summary.errors.append(str(err))

    while True:
        try:
            producer.produce(topic, value, key, headers=headers, on_delivery=delivered)
            break
        except BufferError:  # the producer's queue is full: let it drain
            producer.poll(0.1)
    producer.poll(0)


def _check_topic(consumer: Consumer, topic: str, timeout: float) -> list[int]:
    try:
        md = consumer.list_topics(topic, timeout=timeout)
    except KafkaException as exc:
        raise ReplayError(f"cannot read metadata of topic {topic!r}: {exc}") from None
    meta = md.topics.get(topic)
    if meta is None or meta.error is not None or not meta.partitions:
        why = meta.error if meta is not None and meta.error is not None else "no partitions"
        raise ReplayError(f"topic {topic!r} cannot be used: {why}")
    return sorted(meta.partitions)


def read_to_end(
    consumer: Consumer,
    topic: str,
    take: Any,
    *,
    end_timeout: float,
    metadata_timeout: float,
) -> list[str]:
    """Hand every record of ``topic`` to ``take``, from the beginning to the end it has
    when each partition is reached; returns the partitions not read to their end within
    ``end_timeout`` seconds of no progress."""
    partitions = _check_topic(consumer, topic, metadata_timeout)
    tps = [TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions]
    consumer.assign(tps)
    last = time.monotonic()
    while True:
        messages = consumer.consume(10_000, 0.05)
        for m in messages:
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF or err.retriable():
                    continue
                raise ReplayError(f"reading {m.topic()}[{m.partition()}]: {err}")
            take(m)
        now = time.monotonic()
        if messages:
            last = now
            continue
        behind = _behind(consumer, tps)
        if not behind:
            return []
        if now - last >= end_timeout:
            return behind


def _behind(consumer: Consumer, tps: list[TopicPartition]) -> list[str]:
    """Partitions whose position is short of the high watermark of the last fetch (or
    that no fetch answered yet). The position, not the last offset seen, so trailing
    transaction markers do not count."""
    behind = []
    for tp in consumer.position(tps):
        low, high = consumer.get_watermark_offsets(TopicPartition(tp.topic, tp.partition))
        if high < 0:
            behind.append(f"{tp.topic}[{tp.partition}] not fetched yet")
            continue
        pos = tp.offset if tp.offset >= 0 else max(low, 0)
        if pos < high:
            behind.append(f"{tp.topic}[{tp.partition}] at {pos} of {high}")
    return behind
