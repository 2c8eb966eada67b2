"""Where the audit's positions come from: Kafka topics, read by assignment to their end
(how the end is found: see :mod:`headrace.tools.audit`), and PostgreSQL tables with
``topic, partition, "offset"`` columns. Outputs give their record's position in JSON
(``"source"``), Kafka dead letters in headers, table rows in columns.
"""

from __future__ import annotations

import re
import time
from array import array
from collections.abc import Iterator, Mapping
from typing import Any

import msgspec
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from headrace.errors import HeadraceError
from headrace.tools.replay import REPLAYED_FROM, REPLAYED_SOURCE, parse_position

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]{0,62}$")


class AuditError(HeadraceError, RuntimeError):
    """The audit could not read what it was asked to (no such topic, table, broker)."""


class _Source(msgspec.Struct):
    topic: str
    partition: int
    offset: int


class _Outcome(msgspec.Struct):
    """Only the part of an output (or dead letter) the audit needs; the rest is skipped
    by the decoder without building Python objects for it."""

    source: _Source


Triple = tuple[str, int, int]


class Positions:
    """Offsets by ``(topic, partition)``, in compact arrays. Dead letters read while
    replays are followed (``by_dead_letter`` not ``None``) are kept by their own position
    instead, mapped to their record's, so that replayed ones can be told apart."""

    def __init__(self, *, by_dead_letter: bool = False) -> None:
        self.offsets: dict[tuple[str, int], array[int]] = {}
        self.unreadable = 0
        self.by_dead_letter: dict[Triple, Triple] | None = {} if by_dead_letter else None

    def add(self, topic: str, partition: int, offset: int) -> None:
        arr = self.offsets.get((topic, partition))
        if arr is None:
            arr = self.offsets[(topic, partition)] = array("q")
        arr.append(offset)


class Replays:
    """What replay topics say (``headrace dead-letters replay`` headers): each replayed
    record's position maps to the position of the record that failed, and the dead
    letters replayed are noted."""

    def __init__(self) -> None:
        self.sources: dict[Triple, Triple] = {}
        self.dead_letters: set[Triple] = set()
        self.count = 0
        self.unreadable = 0

    def take(self, m: Message) -> None:
        self.count += 1
        headers = dict(m.headers() or ())
        topic, partition, offset = m.topic(), m.partition(), m.offset()
        assert topic is not None and partition is not None and offset is not None
        try:
            source = parse_position(_header_text(headers, REPLAYED_SOURCE))
            dead_letter = parse_position(_header_text(headers, REPLAYED_FROM))
        except (KeyError, ValueError, UnicodeDecodeError):
            self.unreadable += 1
            return
        self.sources[(topic, partition, offset)] = source
        self.dead_letters.add(dead_letter)

    def resolve(self, position: Triple) -> Triple:
        """The first record ``position`` is a replay of (through replays of replays)."""
        seen = {position}
        while position in self.sources:
            position = self.sources[position]
            if position in seen:  # a loop: no header should make one, but stop
                break
            seen.add(position)
        return position


def read_topics(
    consumer: Consumer,
    topics: Mapping[str, Positions],
    by_source: set[str],
    *,
    idle_timeout: float,
    end_timeout: float,
    metadata_timeout: float,
    replays: Mapping[str, Replays] | None = None,
) -> list[str]:
    """Read ``topics`` (and the replay topics of ``replays``) to their end (see
    :mod:`headrace.tools.audit`); returns the partitions that stopped short of the high
    watermark reported at the start."""
    replays = replays or {}
    assignment: list[TopicPartition] = []
    ends: dict[tuple[str, int], int] = {}
    for topic in [*topics, *replays]:
        try:
            md = consumer.list_topics(topic, timeout=metadata_timeout)
        except KafkaException as exc:
            raise AuditError(f"cannot read metadata of topic {topic!r}: {exc}") from None
        meta = md.topics.get(topic)
        if meta is None or meta.error is not None or not meta.partitions:
            why = meta.error if meta is not None and meta.error is not None else "no partitions"
            raise AuditError(f"topic {topic!r} cannot be read: {why}")
        for p in sorted(meta.partitions):
            try:
                _low, high = consumer.get_watermark_offsets(
                    TopicPartition(topic, p), timeout=metadata_timeout
                )
            except KafkaException as exc:
                raise AuditError(f"cannot read the end of {topic}[{p}]: {exc}") from None
            ends[(topic, p)] = high
            assignment.append(TopicPartition(topic, p, OFFSET_BEGINNING))
    consumer.assign(assignment)

    decode = msgspec.json.Decoder(_Outcome).decode
    last = time.monotonic()
    while True:
        messages = consumer.consume(10_000, 0.05)
        for m in messages:
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF or err.retriable():
                    continue
                raise AuditError(f"reading {m.topic()}[{m.partition()}]: {err}")
            replay = replays.get(m.topic() or "")
            if replay is not None:
                replay.take(m)
            else:
                _take(m, topics, by_source, decode)
        now = time.monotonic()
        if messages:
            last = now
            continue
        idle = now - last
        if idle < idle_timeout:
            continue
        behind = _behind(consumer, assignment, ends)
        if not behind:
            return []
        if idle >= end_timeout:
            return behind


def _take(
    m: Message,
    topics: Mapping[str, Positions],
    by_source: set[str],
    decode: Any,
) -> None:
    topic = m.topic()
    assert topic is not None
    into = topics[topic]
    if topic not in by_source:
        partition, offset = m.partition(), m.offset()
        assert partition is not None and offset is not None
        into.add(topic, partition, offset)
        return
    headers = dict(m.headers() or ())
    if _DLQ_TOPIC in headers:
        # A Kafka dead letter: the value is the original message, so it can be replayed;
        # its position travels in headers.
        try:
            source = (
                _header_text(headers, _DLQ_TOPIC),
                int(_header_text(headers, _DLQ_PARTITION)),
                int(_header_text(headers, _DLQ_OFFSET)),
            )
        except (KeyError, ValueError, UnicodeDecodeError):
            into.unreadable += 1
            return
        if into.by_dead_letter is not None:
            partition, offset = m.partition(), m.offset()
            assert partition is not None and offset is not None
            into.by_dead_letter[(topic, partition, offset)] = source
        else:
            into.add(*source)
        return
    try:
        s = decode(m.value() or b"").source
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        into.unreadable += 1
        return
    into.add(s.topic, s.partition, s.offset)


def _header_text(headers: Mapping[str, str | bytes | None], name: str) -> str:
    value = headers[name]
    if value is None:
        raise KeyError(name)
    return value.decode() if isinstance(value, bytes) else value


_DLQ_TOPIC = "headrace-source-topic"
_DLQ_PARTITION = "headrace-source-partition"
_DLQ_OFFSET = "headrace-source-offset"


def _behind(
    consumer: Consumer, assignment: list[TopicPartition], ends: Mapping[tuple[str, int], int]
) -> list[str]:
    """Partitions whose position is below the high watermark noted at the start. The
    position, not the last offset seen, so trailing transaction markers do not count."""
    positions = consumer.position(assignment)
    behind = []
    for tp in positions:
        end = ends[(tp.topic, tp.partition)]
        pos = tp.offset if tp.offset >= 0 else 0
        if pos < end:
            behind.append(f"{tp.topic}[{tp.partition}] at {pos} of {end}")
    return behind


def table_identifier(name: str) -> Any:
    from psycopg import sql

    parts = name.split(".")
    if not 1 <= len(parts) <= 2 or not all(_IDENT.match(p) for p in parts):
        raise ValueError(f"table name {name!r} is not a plain (optionally schema.) identifier")
    return sql.Identifier(*parts)


def _redact_dsn(text: str, dsn: str) -> str:
    from psycopg.conninfo import conninfo_to_dict

    try:
        password = conninfo_to_dict(dsn).get("password")
    except Exception:  # an unparsable DSN has nothing we can find in it
        return text
    return text.replace(str(password), "***") if password else text


def read_table(dsn: str, table: str, into: Positions, batch: int = 50_000) -> None:
    """``topic, partition, "offset"`` of every row, through a server-side cursor so a big
    table streams instead of loading at once."""
    import psycopg
    from psycopg import sql

    ident = table_identifier(table)
    query = sql.SQL('SELECT topic, partition, "offset" FROM {}').format(ident)
    try:
        with (
            psycopg.connect(dsn, connect_timeout=10) as conn,
            conn.cursor(name="headrace_audit") as cur,
        ):
            cur.itersize = batch
            cur.execute(query)
            rows: Iterator[tuple[Any, ...]] = iter(cur)
            for topic, partition, offset in rows:
                if topic is None or partition is None or offset is None:
                    into.unreadable += 1
                else:
                    into.add(str(topic), int(partition), int(offset))
    except psycopg.Error as exc:
        msg = _redact_dsn(str(exc).strip(), dsn)
        raise AuditError(f"cannot read table {table!r}: {msg}") from None
