"""YAML shared by the benchmarks' Headrace pipelines."""

from __future__ import annotations


def kafka_source(bootstrap: str, topic: str, group: str) -> str:
    """The ``kafka`` and ``source`` sections every Kafka benchmark uses: the settings that
    suit the local Tansu broker (short idle fetches, a fast group join, batching
    producers), the reference events keyed by entity with their own event time. Ends
    without a newline, so that more ``source`` keys can follow."""
    return f"""\
kafka:
  bootstrap_servers: {bootstrap}
  consumer:
    session.timeout.ms: 6000
    fetch.wait.max.ms: 10
  producer:
    linger.ms: 5
source:
  type: kafka
  topics: [{topic}]
  group_id: {group}
  key_field: entity_id
  time_field: ts"""
