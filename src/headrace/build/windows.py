"""Window operators and their state's changelog from the ``windows`` section."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from headrace import config as cfg
from headrace.build.connectors import KafkaParts
from headrace.connectors.base import Sink
from headrace.windows.aggregators import (
    Aggregator,
    Count,
    CountsByType,
    DistinctCount,
    First,
    Last,
    LastN,
    Max,
    Mean,
    Min,
    Std,
    Sum,
)
from headrace.windows.assigners import Assigner, Hopping, Session, Sliding, Tumbling
from headrace.windows.changelog import Changelog, KafkaChangelog, PostgresChangelog
from headrace.windows.operator import WindowOperator


def build_assigner(w: cfg.WindowsConfig) -> Assigner:
    if w.type == "session":
        assert w.gap_s is not None
        return Session(w.gap_s)
    assert w.size_s is not None
    if w.type == "hopping":
        assert w.hop_s is not None
        return Hopping(w.size_s, w.hop_s)
    return Sliding(w.size_s) if w.type == "sliding" else Tumbling(w.size_s)


_AGGREGATORS: dict[str, Callable[[], Aggregator[Any]]] = {
    "count": Count,
    "sum": Sum,
    "mean": Mean,
    "min": Min,
    "max": Max,
    "std": Std,
    "first": First,
    "last": Last,
    "distinct_count": DistinctCount,
}


def build_aggregator(f: cfg.WindowFeatureConfig) -> Aggregator[Any]:
    if f.agg == "last_n":
        assert f.n is not None
        return LastN(f.n)
    if f.agg == "counts_by_type":
        return CountsByType(types=f.types, max_types=f.max_types)
    return _AGGREGATORS[f.agg]()


def build_operator(w: cfg.WindowsConfig) -> WindowOperator:
    return WindowOperator(
        build_assigner(w),
        {name: (f.field, build_aggregator(f)) for name, f in w.features.items()},
        key_field=w.key_field,
        time_source=w.time_field,
        allowed_lateness=w.allowed_lateness_s,
        grace=w.grace_s,
        idle_timeout=w.idle_timeout_s,
    )


def build_changelog(
    config: cfg.PipelineConfig, kafka: KafkaParts, database: Sink | None
) -> tuple[Changelog | None, str | None]:
    """Where window state goes, and the one input topic it is partitioned like: with
    ``database`` (the PostgreSQL sink of exactly-once delivery), a table joining its
    transaction; otherwise a changelog topic. Only Kafka sources have either; the others
    keep state in memory (``None, None``)."""
    w = config.windows
    src = config.source
    assert w is not None
    if not isinstance(src, cfg.KafkaSourceConfig):
        return None, None
    topic = src.topics[0]
    if database is not None:
        from headrace.connectors.postgres import PostgresSink

        assert isinstance(database, PostgresSink)
        return PostgresChangelog(database, topic=topic), topic
    c = w.changelog
    changelog = KafkaChangelog(
        c.topic or f"headrace-state-{src.group_id}-{topic}",
        input_topic=topic,
        producer=kafka.producer(),
        client=kafka.base(),
        create=c.create,
        settle=c.restore_settle_ms / 1000.0,
    )
    return changelog, topic
