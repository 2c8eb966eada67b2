"""An end-to-end audit: did every input record reach an output (or a dead letter), once?

A pipeline's delivery guarantee is a claim about source positions: each record of the
input topic, identified by ``(topic, partition, offset)``, should end in exactly one
output (exactly-once) or at least one (at-least-once), unless it was dead-lettered. Every
Headrace output and dead letter carries its record's position (``"source"`` in JSON, the
``topic, partition, "offset"`` columns in a table), so the audit compares position sets:

- **missing**: input positions with neither an output nor a dead letter;
- **duplicated**: input positions with more than one outcome (outputs and dead letters
  together — each record should have one fate); reported as extra copies and positions;
- **unexpected**: outputs or dead letters whose position is not in the input (including
  outputs whose position cannot be read at all: ``unreadable``).

Topics are read by assigning every partition from the beginning (no consumer group: the
audit must not disturb, or be disturbed by, the pipeline's group). The end of a topic is
found by counting, not by trusting the reported high watermark, which some brokers
(Tansu) under-report: reading stops once no new record has arrived for ``idle_timeout``
seconds *and* every partition's position has reached the high watermark reported when the
audit began — or, should a partition never get there, once nothing has arrived for
``end_timeout`` seconds (the report then lists it in ``incomplete``).
"""

from __future__ import annotations

import re
import time
from array import array
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal, NamedTuple

import msgspec
import numpy as np
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)
from rich.markup import escape
from rich.table import Table

from headrace.tools.settings import RedactingLogger, redact

Mode = Literal["exactly-once", "at-least-once"]
MODES: tuple[Mode, ...] = ("exactly-once", "at-least-once")

CONSUMER_DEFAULTS: dict[str, Any] = {
    "group.id": "headrace-audit",  # required by librdkafka; never joined or committed
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
    # An idle fetch may wait all of fetch.wait.max.ms before answering (Tansu always
    # does); short waits keep the end-of-topic check, which waits for idleness, quick.
    "fetch.wait.max.ms": 10,
}

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]{0,62}$")


class AuditError(RuntimeError):
    """The audit could not read what it was asked to (no such topic, table, broker)."""


class Position(NamedTuple):
    """A record's source position."""

    topic: str
    partition: int
    offset: int

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


@dataclass(frozen=True)
class AuditReport:
    """Counts by source position, and up to ``examples`` positions of each problem.

    ``output_count`` and ``dead_letter_count`` count records read; ``dead_lettered``
    counts input positions with at least one dead letter. ``duplicated`` counts extra
    copies (an input position with three outcomes adds 2), ``duplicated_positions`` the
    positions affected. ``unexpected`` counts outputs and dead letters (copies, not
    positions) that match no input position, ``unreadable`` of which had no readable
    position at all. ``incomplete`` names partitions whose reading stopped short of the
    high watermark reported at the start.
    """

    input_topic: str
    input_count: int
    output_count: int
    dead_letter_count: int
    dead_lettered: int
    missing: int
    duplicated: int
    duplicated_positions: int
    unexpected: int
    unreadable: int = 0
    missing_examples: tuple[Position, ...] = ()
    duplicated_examples: tuple[Position, ...] = ()
    unexpected_examples: tuple[Position, ...] = ()
    incomplete: tuple[str, ...] = ()
    elapsed: float = 0.0
    sources: Mapping[str, str] = field(default_factory=dict)

    def holds(self, mode: str) -> bool:
        """Whether the guarantee ``mode`` held: ``"exactly-once"`` needs no missing, no
        duplicated and no unexpected position; ``"at-least-once"`` allows duplicates.

        >>> AuditReport("t", 3, 4, 0, 0, 0, 1, 1, 0).holds("at-least-once")
        True
        >>> AuditReport("t", 3, 4, 0, 0, 0, 1, 1, 0).holds("exactly-once")
        False
        """
        if mode == "exactly-once":
            return self.missing == self.duplicated == self.unexpected == 0
        if mode == "at-least-once":
            return self.missing == self.unexpected == 0
        raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")

    @property
    def accounted(self) -> int:
        """Input positions with an output or a dead letter."""
        return self.input_count - self.missing

    def to_table(self) -> Table:
        """The report as a rich table: one row per count, examples beside problems."""

        def ex(positions: tuple[Position, ...], total: int) -> str:
            shown = ", ".join(str(p) for p in positions)
            more = total - len(positions)
            return escape(shown + (f", … {more:,} more" if more > 0 and shown else ""))

        title = f"audit of {self.input_topic}"
        if self.sources:
            title += " → " + ", ".join(f"{k}: {v}" for k, v in self.sources.items())
        title = escape(title)
        t = Table(title=title, title_justify="left")
        t.add_column("")
        t.add_column("count", justify="right")
        t.add_column(escape("examples (topic[partition]@offset)"), overflow="fold")
        t.add_row("input records", f"{self.input_count:,}", "")
        t.add_row("outputs read", f"{self.output_count:,}", "")
        t.add_row(
            "dead letters read",
            f"{self.dead_letter_count:,}",
            f"{self.dead_lettered:,} input positions dead-lettered",
        )
        t.add_row("accounted for", f"{self.accounted:,}", "")
        style = "red" if self.missing else "green"
        t.add_row(
            f"[{style}]missing[/{style}]",
            f"{self.missing:,}",
            ex(self.missing_examples, self.missing),
        )
        style = "yellow" if self.duplicated else "green"
        t.add_row(
            f"[{style}]duplicated[/{style}]",
            f"{self.duplicated:,}",
            f"{self.duplicated_positions:,} positions: "
            + ex(self.duplicated_examples, self.duplicated_positions)
            if self.duplicated
            else "",
        )
        style = "red" if self.unexpected else "green"
        note = f" ({self.unreadable:,} without a readable position)" if self.unreadable else ""
        t.add_row(
            f"[{style}]unexpected[/{style}]",
            f"{self.unexpected:,}",
            ex(self.unexpected_examples, self.unexpected) + note,
        )
        if self.incomplete:
            t.add_row(
                "[red]incomplete[/red]", str(len(self.incomplete)), ", ".join(self.incomplete)
            )
        return t

    def __rich__(self) -> Table:
        return self.to_table()


# --- comparing position sets --------------------------------------------------------

_EMPTY = np.zeros(0, dtype=np.int64)


def _as_array(offsets: Iterable[int] | None) -> np.ndarray:
    if offsets is None:
        return _EMPTY
    if isinstance(offsets, array):
        return np.frombuffer(offsets, dtype=np.int64) if len(offsets) else _EMPTY
    return np.fromiter(offsets, dtype=np.int64)


def compare(
    input_topic: str,
    inputs: Mapping[int, Iterable[int]],
    outputs: Mapping[tuple[str, int], Iterable[int]],
    dead_letters: Mapping[tuple[str, int], Iterable[int]] | None = None,
    *,
    unreadable: int = 0,
    examples: int = 10,
) -> AuditReport:
    """The report for input offsets by partition, and output and dead-letter offsets by
    ``(topic, partition)``. Works on arrays: millions of positions take well under a
    second. ``unreadable`` outputs (no position) count as unexpected.

    >>> r = compare("t", {0: [0, 1, 2]}, {("t", 0): [0, 2, 2, 9]})
    >>> r.missing, r.duplicated, r.unexpected, [str(p) for p in r.missing_examples]
    (1, 1, 1, ['t[0]@1'])
    """
    dead_letters = dead_letters or {}
    input_count = output_count = dead_count = dead_lettered = 0
    missing = duplicated = dup_positions = unexpected = 0
    missing_ex: list[Position] = []
    dup_ex: list[Position] = []
    unexpected_ex: list[Position] = []

    def take(into: list[Position], topic: str, partition: int, offsets: np.ndarray) -> None:
        room = examples - len(into)
        if room > 0:
            into.extend(Position(topic, partition, int(o)) for o in offsets[:room])

    keys = {(input_topic, p) for p in inputs} | set(outputs) | set(dead_letters)
    for topic, partition in sorted(keys):
        inp = _as_array(inputs.get(partition)) if topic == input_topic else _EMPTY
        out = _as_array(outputs.get((topic, partition)))
        dl = _as_array(dead_letters.get((topic, partition)))
        input_count += len(inp)
        output_count += len(out)
        dead_count += len(dl)
        inp = np.unique(inp)
        seen, copies = np.unique(np.concatenate([out, dl]), return_counts=True)
        known = np.isin(seen, inp, assume_unique=True)
        unexpected += int(copies[~known].sum())
        take(unexpected_ex, topic, partition, seen[~known])
        dup = known & (copies > 1)
        duplicated += int((copies[dup] - 1).sum())
        dup_positions += int(dup.sum())
        take(dup_ex, topic, partition, seen[dup])
        lost = inp[~np.isin(inp, seen, assume_unique=True)]
        missing += len(lost)
        take(missing_ex, topic, partition, lost)
        dead_lettered += int(np.isin(inp, np.unique(dl), assume_unique=True).sum())
    return AuditReport(
        input_topic=input_topic,
        input_count=input_count,
        output_count=output_count + unreadable,
        dead_letter_count=dead_count,
        dead_lettered=dead_lettered,
        missing=missing,
        duplicated=duplicated,
        duplicated_positions=dup_positions,
        unexpected=unexpected + unreadable,
        unreadable=unreadable,
        missing_examples=tuple(missing_ex),
        duplicated_examples=tuple(dup_ex),
        unexpected_examples=tuple(unexpected_ex),
    )


# --- reading Kafka ----------------------------------------------------------------


class _Source(msgspec.Struct):
    topic: str
    partition: int
    offset: int


class _Outcome(msgspec.Struct):
    """Only the part of an output (or dead letter) the audit needs; the rest is skipped
    by the decoder without building Python objects for it."""

    source: _Source


class _Positions:
    """Offsets by ``(topic, partition)``, in compact arrays."""

    def __init__(self) -> None:
        self.offsets: dict[tuple[str, int], array[int]] = {}
        self.unreadable = 0

    def add(self, topic: str, partition: int, offset: int) -> None:
        arr = self.offsets.get((topic, partition))
        if arr is None:
            arr = self.offsets[(topic, partition)] = array("q")
        arr.append(offset)


def _read_topics(
    consumer: Consumer,
    topics: Mapping[str, _Positions],
    by_source: set[str],
    *,
    idle_timeout: float,
    end_timeout: float,
    metadata_timeout: float,
) -> list[str]:
    """Read ``topics`` to their end (see the module docstring); returns the partitions
    that stopped short of the high watermark reported at the start."""
    assignment: list[TopicPartition] = []
    ends: dict[tuple[str, int], int] = {}
    for topic in topics:
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
    topics: Mapping[str, _Positions],
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
            into.add(
                _header_text(headers, _DLQ_TOPIC),
                int(_header_text(headers, _DLQ_PARTITION)),
                int(_header_text(headers, _DLQ_OFFSET)),
            )
        except (KeyError, ValueError, UnicodeDecodeError):
            into.unreadable += 1
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


# --- reading PostgreSQL -----------------------------------------------------------


def _table_identifier(name: str) -> Any:
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


def _read_table(dsn: str, table: str, into: _Positions, batch: int = 50_000) -> None:
    """``topic, partition, "offset"`` of every row, through a server-side cursor so a big
    table streams instead of loading at once."""
    import psycopg
    from psycopg import sql

    ident = _table_identifier(table)
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


# --- the audit --------------------------------------------------------------------


def audit(
    bootstrap: str,
    input_topic: str,
    *,
    output_topic: str | None = None,
    output_table: str | None = None,
    dsn: str | None = None,
    dead_letter_topic: str | None = None,
    dead_letter_table: str | None = None,
    idle_timeout: float = 2.0,
    end_timeout: float = 30.0,
    metadata_timeout: float = 10.0,
    config: Mapping[str, Any] | None = None,
    examples: int = 10,
) -> AuditReport:
    """Audit ``input_topic`` against one output (a topic of Headrace outputs, or a table
    with ``topic, partition, "offset"`` columns read through ``dsn``) and optionally a
    dead-letter topic or table. All topics are read together, by one consumer, so the
    idle wait at the end is paid once; tables are read after the topics.

    ``config`` is passed to librdkafka over :data:`CONSUMER_DEFAULTS` (e.g.
    ``isolation.level``: librdkafka's default, ``read_committed``, is what an
    exactly-once audit of a transactional output wants). Raises ``ValueError`` for
    arguments that do not fit together and :class:`AuditError` when something cannot be
    read; neither message contains a secret setting.
    """
    if (output_topic is None) == (output_table is None):
        raise ValueError("give exactly one output: an output topic or an output table")
    if dead_letter_topic is not None and dead_letter_table is not None:
        raise ValueError("give at most one dead-letter source: a topic or a table")
    if (output_table is not None or dead_letter_table is not None) and not dsn:
        raise ValueError("reading a table needs a PostgreSQL DSN")
    named = [t for t in (output_topic, dead_letter_topic) if t is not None]
    if input_topic in named or len(set(named)) < len(named):
        raise ValueError("the input, output and dead-letter topics must all differ")
    for table in (output_table, dead_letter_table):
        if table is not None:
            _table_identifier(table)
    if idle_timeout <= 0 or end_timeout < idle_timeout:
        raise ValueError("idle_timeout must be positive and end_timeout at least idle_timeout")

    started = time.monotonic()
    inputs, outputs, dead = _Positions(), _Positions(), _Positions()
    topics: dict[str, _Positions] = {input_topic: inputs}
    if output_topic is not None:
        topics[output_topic] = outputs
    if dead_letter_topic is not None:
        topics[dead_letter_topic] = dead
    by_source = set(topics) - {input_topic}

    settings: dict[str, Any] = {**CONSUMER_DEFAULTS, **(config or {})}
    settings["bootstrap.servers"] = bootstrap
    try:
        consumer = Consumer({**settings, "logger": RedactingLogger(settings)})
    except (KafkaException, ValueError, TypeError) as exc:
        raise ValueError(f"cannot create a consumer: {redact(str(exc), settings)}") from None
    try:
        incomplete = _read_topics(
            consumer,
            topics,
            by_source,
            idle_timeout=idle_timeout,
            end_timeout=end_timeout,
            metadata_timeout=metadata_timeout,
        )
    except AuditError as exc:
        raise AuditError(redact(str(exc), settings)) from None
    finally:
        consumer.close()
    if output_table is not None:
        assert dsn is not None
        _read_table(dsn, output_table, outputs)
    if dead_letter_table is not None:
        assert dsn is not None
        _read_table(dsn, dead_letter_table, dead)

    report = compare(
        input_topic,
        {p: offs for (_t, p), offs in inputs.offsets.items()},
        outputs.offsets,
        dead.offsets,
        unreadable=outputs.unreadable + dead.unreadable,
        examples=examples,
    )
    sources = {"output": output_topic or f"table {output_table}"}
    if dead_letter_topic or dead_letter_table:
        sources["dead letters"] = dead_letter_topic or f"table {dead_letter_table}"
    return replace(
        report,
        incomplete=tuple(incomplete),
        elapsed=time.monotonic() - started,
        sources=sources,
    )
