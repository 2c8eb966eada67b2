"""Rules across keys for Kafka pipelines and delivery guarantees."""

from __future__ import annotations

from typing import Any

import pytest

from headrace.config import ConfigError, parse_config

KAFKA = {"bootstrap_servers": "127.0.0.1:9092"}
SOURCE = {"type": "kafka", "topics": ["in"], "group_id": "g"}
MODEL = {"type": "callable", "name": "m", "version": "1", "function": "a:b"}
PG = {"type": "postgres", "dsn": "postgresql://u@h/db"}


def check(**doc: Any) -> str | None:
    base: dict[str, Any] = {"source": SOURCE, "model": MODEL, "kafka": KAFKA}
    base.update(doc)
    try:
        parse_config(base, env={})
    except ConfigError as exc:
        return str(exc)
    return None


def test_kafka_needs_a_connection() -> None:
    message = check(kafka=None, sinks=[{"type": "null"}])
    assert message is not None and "at kafka:" in message
    message = check(kafka={}, sinks=[{"type": "null"}])
    assert message is not None and "kafka.bootstrap_servers" in message
    message = check(kafka={"preset": "eventhubs"}, sinks=[{"type": "null"}])
    assert message is not None and "connection_string_env" in message


def test_exactly_once_accepts_all_kafka_or_one_postgres() -> None:
    assert check(delivery="exactly-once", sinks=[{"type": "kafka", "topic": "out"}]) is None
    assert check(delivery="exactly-once", sinks=[PG]) is None
    dead = {**PG, "name": "dl", "failures_table": "dlq"}
    assert check(delivery="exactly-once", sinks=[PG], dead_letter=dead) is None


@pytest.mark.parametrize(
    "sinks",
    [
        [{"type": "kafka", "topic": "out"}, {"type": "jsonl", "path": "x"}],
        [PG, {"type": "kafka", "topic": "out"}],
        [PG, {**PG, "name": "second", "table": "t2"}],
    ],
)
def test_exactly_once_rejects_sinks_outside_one_transaction(sinks: list[Any]) -> None:
    message = check(delivery="exactly-once", sinks=sinks)
    assert message is not None and "at delivery: exactly-once needs" in message


def test_exactly_once_needs_a_kafka_source() -> None:
    message = check(
        delivery="exactly-once",
        source={"type": "generator"},
        sinks=[{"type": "kafka", "topic": "o"}],
    )
    assert message is not None and "needs a Kafka source" in message


def test_a_dead_letter_on_another_database_breaks_exactly_once() -> None:
    other = {**PG, "dsn": "postgresql://u@other/db", "name": "dl"}
    message = check(delivery="exactly-once", sinks=[PG], dead_letter=other)
    assert message is not None and "same dsn" in message
