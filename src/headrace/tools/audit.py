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

**Replayed dead letters** (``headrace dead-letters replay``, ``replay_topics``). A dead
letter replayed to a replay topic and scored from there by a pipeline reading that topic
has an output whose position is in the replay topic, not the input. The audit reads the
replay topics too: each replayed record's ``headrace-replayed-source`` header names the
position of the record that failed (followed through replays of replays), and its
``headrace-replayed-from`` the dead letter it copies. Outputs and dead letters of replayed
records then count for that first position, and a dead letter that was replayed is no
outcome of its own (``replayed`` counts them): a record dead-lettered, replayed and scored
has one fate, its output; replayed and not yet scored, it is missing; replayed twice and
scored twice, duplicated.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from confluent_kafka import Consumer, KafkaException

from headrace.tools.audit_read import (
    AuditError,
    Positions,
    Replays,
    read_table,
    read_topics,
    table_identifier,
)
from headrace.tools.audit_report import MODES, AuditReport, Mode, Position, compare
from headrace.tools.settings import RedactingLogger, redact

__all__ = [
    "CONSUMER_DEFAULTS",
    "MODES",
    "AuditError",
    "AuditReport",
    "Mode",
    "Position",
    "audit",
    "compare",
]


CONSUMER_DEFAULTS: dict[str, Any] = {
    "group.id": "headrace-audit",  # required by librdkafka; never joined or committed
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
    # An idle fetch may wait all of fetch.wait.max.ms before answering (Tansu always
    # does); short waits keep the end-of-topic check, which waits for idleness, quick.
    "fetch.wait.max.ms": 10,
}


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
    replay_topics: Sequence[str] = (),
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
    named = [t for t in (output_topic, dead_letter_topic, *replay_topics) if t is not None]
    if input_topic in named or len(set(named)) < len(named):
        raise ValueError("the input, output and dead-letter topics must all differ")
    for table in (output_table, dead_letter_table):
        if table is not None:
            table_identifier(table)
    if idle_timeout <= 0 or end_timeout < idle_timeout:
        raise ValueError("idle_timeout must be positive and end_timeout at least idle_timeout")

    started = time.monotonic()
    inputs, outputs = Positions(), Positions()
    dead = Positions(by_dead_letter=bool(replay_topics))
    replays = {t: Replays() for t in replay_topics}
    topics: dict[str, Positions] = {input_topic: inputs}
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
        incomplete = read_topics(
            consumer,
            topics,
            by_source,
            idle_timeout=idle_timeout,
            end_timeout=end_timeout,
            metadata_timeout=metadata_timeout,
            replays=replays,
        )
    except AuditError as exc:
        raise AuditError(redact(str(exc), settings)) from None
    finally:
        consumer.close()
    if output_table is not None:
        assert dsn is not None
        read_table(dsn, output_table, outputs)
    if dead_letter_table is not None:
        assert dsn is not None
        read_table(dsn, dead_letter_table, dead)

    superseded = 0
    if replay_topics:
        outputs, dead, superseded = _follow_replays(outputs, dead, replays)
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
    if replay_topics:
        sources["replays"] = ", ".join(replay_topics)
    return replace(
        report,
        dead_letter_count=report.dead_letter_count + superseded,
        replayed=superseded,
        replay_records=sum(r.count for r in replays.values()),
        incomplete=tuple(incomplete),
        elapsed=time.monotonic() - started,
        sources=sources,
    )


def _follow_replays(
    outputs: Positions, dead: Positions, replays: Mapping[str, Replays]
) -> tuple[Positions, Positions, int]:
    """Outputs and dead letters with replayed records' positions replaced by the position
    of the record that first failed, and without the dead letters that were replayed
    (their record's fate is now its replay's); returns how many were left out."""
    merged = Replays()
    for r in replays.values():
        merged.sources.update(r.sources)
        merged.dead_letters |= r.dead_letters
    followed = Positions()
    followed.unreadable = outputs.unreadable
    for (topic, partition), offsets in outputs.offsets.items():
        if topic not in replays:
            followed.offsets[(topic, partition)] = offsets
            continue
        for offset in offsets:
            followed.add(*merged.resolve((topic, partition, offset)))
    kept = Positions()
    kept.unreadable = dead.unreadable
    superseded = 0
    for own, source in (dead.by_dead_letter or {}).items():
        if own in merged.dead_letters:
            superseded += 1
        else:
            kept.add(*merged.resolve(source))
    for (topic, partition), offsets in dead.offsets.items():  # from a table
        for offset in offsets:
            kept.add(*merged.resolve((topic, partition, offset)))
    return followed, kept, superseded
