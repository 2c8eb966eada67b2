"""What the Kafka source and producer share: the log, settings safe to show, the fatal
error, and partition lists as confluent-kafka takes them."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from confluent_kafka import TopicPartition

from headrace.connectors.base import PartitionKey
from headrace.errors import HeadraceError
from headrace.observe.throttle import RepeatFilter

log = logging.getLogger("headrace.kafka")
# librdkafka reports an unreachable broker every ~50 ms, as a pair of lines: once per
# 30 s is enough to say so.
log.addFilter(RepeatFilter(30.0))

Settings = dict[str, Any]

SECRET_KEYS = ("password", "secret", "sasl.jaas", "ssl.key", "token")


def redacted(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Settings safe to log: values of secret-looking keys are masked."""
    return {
        k: ("***" if any(s in k.lower() for s in SECRET_KEYS) else v) for k, v in settings.items()
    }


class KafkaFatalError(HeadraceError, RuntimeError):
    """An error the Kafka client cannot recover from (fenced, authorisation, config)."""


def topic_partitions(positions: Mapping[PartitionKey, int]) -> list[TopicPartition]:
    """``(topic, partition) -> offset`` as confluent-kafka takes offsets to commit."""
    return [TopicPartition(t, p, o) for (t, p), o in sorted(positions.items())]


def fmt(keys: Sequence[PartitionKey]) -> str:
    """Partitions for a log line: ``events[0], events[3]``."""
    return ", ".join(f"{t}[{p}]" for t, p in keys) or "nothing"
