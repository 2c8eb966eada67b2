"""A validated configuration, turned into calls on the Python builder.

Building goes one way: configuration -> builder -> :class:`~headrace.runtime.spec.PipelineSpec`
-> engine. This module knows the configuration and the builder; the builder knows neither
this module nor the configuration.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TypeVar

import msgspec

from headrace import config as cfg
from headrace.build.connectors import (
    KafkaParts,
    build_delivery,
    build_sink,
    build_source,
    pg_transactional,
)
from headrace.build.enrich import build_lookups
from headrace.build.models import build_featurizer, build_model, module_search_path, registry_source
from headrace.build.windows import build_changelog, build_operator
from headrace.builder import PipelineBuilder
from headrace.connectors.base import Sink
from headrace.runtime.engine import EngineSettings
from headrace.runtime.manager import Probation
from headrace.runtime.priority import Priorities, ShedPolicy
from headrace.runtime.scoring import FailurePolicy

B = TypeVar("B", bound=PipelineBuilder)


def configure(p: B, config: cfg.PipelineConfig, *, path: str | Path | None = None) -> B:
    """Fill ``p`` with what ``config`` describes (loading the model on the way). ``path``:
    the YAML file it came from, whose directory a callable model's module is looked up in
    first."""
    kafka = KafkaParts(config)
    source, decoder = build_source(config.source, kafka, config.batching.max_wait_ms / 1000.0)
    p.source(source, decoder=decoder)
    if isinstance(config.model, cfg.RegistryModelConfig):
        _configure_registry_model(p, config, kafka)
    else:
        model, featurizer = build_model(config.model, search=module_search_path(path))
        p.model(model, featurizer=featurizer)
    if config.admin is not None:
        token = os.environ.get(config.admin.token_env)
        if not token:
            raise cfg.ConfigError(
                f"at admin.token_env: environment variable {config.admin.token_env} is not set"
            )
        p.admin(token)
    transactional = pg_transactional(config)
    dead = config.dead_letter
    # Exactly-once into PostgreSQL: dead letters share the sink's connection and
    # transaction, so they commit with the outputs.
    shared_dead = transactional and isinstance(dead, cfg.PostgresSinkConfig)
    built: list[Sink] = []
    for sink in config.sinks:
        if shared_dead and isinstance(sink, cfg.PostgresSinkConfig):
            assert isinstance(dead, cfg.PostgresSinkConfig)
            sink = msgspec.structs.replace(sink, failures_table=dead.failures_table)
        f = sink.filter
        windows = config.windows
        state = windows.changelog.table if windows is not None and transactional else None
        built.append(
            build_sink(
                sink,
                kafka,
                transactional=transactional,
                windowed=windows is not None,
                state_table=state,
            )
        )
        p.sink(built[-1], above=f.above if f else None, below=f.below if f else None)
    if dead is not None:
        p.dead_letter(built[0] if shared_dead else build_sink(dead, kafka, dead_letter=True))
    delivery = build_delivery(config, source, built, kafka)
    if delivery is not None:
        p.delivery(delivery)
    p.settings(build_settings(config))
    priorities = build_priorities(config.priority)
    if priorities is not None:
        p.priorities(priorities)
    if config.shedding is not None:
        p.shedding(
            build_shed_policy(config.shedding, priorities),
            build_sink(config.shedding.destination, kafka, shed=True),
        )
    p.failures(build_failure_policy(config.failures))
    if config.metrics is not None:
        p.metrics(port=config.metrics.port, host=config.metrics.host)
    if config.windows is not None:
        _configure_windows(p, config, kafka, built[0] if transactional else None)
    for lookup in build_lookups(config):
        p.enrich(lookup)
    return p


def _configure_windows(
    p: PipelineBuilder, config: cfg.PipelineConfig, kafka: KafkaParts, database: Sink | None
) -> None:
    """``database``: the PostgreSQL sink of exactly-once delivery, whose transaction the
    state joins; otherwise state goes to a changelog topic (Kafka sources)."""
    w = config.windows
    assert w is not None
    operator = build_operator(w)
    changelog, topic = build_changelog(config, kafka, database)
    late = None
    if w.late_destination is not None:
        late = build_sink(w.late_destination, kafka, default_name="late")
    p.windows(operator, changelog=changelog, topic=topic, late=late)


def _configure_registry_model(
    p: PipelineBuilder, config: cfg.PipelineConfig, kafka: KafkaParts
) -> None:
    c = config.model
    assert isinstance(c, cfg.RegistryModelConfig)
    u = config.updates or cfg.UpdatesConfig()
    pr = u.probation
    p.model_source(
        registry_source(c.ref, c),
        featurizer=build_featurizer(c.features),
        poll_interval=u.poll_interval_s,
        probation=Probation(pr.seconds, pr.max_error_rate, pr.max_latency_ratio, pr.min_records),
    )
    if u.canary is not None:
        p.canary(registry_source(u.canary.ref, c), u.canary.fraction)
    if u.shadow is not None:
        sh = u.shadow
        sink = build_sink(sh.destination, kafka, default_name="shadow")
        p.shadow(
            registry_source(sh.ref, c),
            sink,
            tolerance=sh.tolerance,
            max_batches_in_flight=sh.max_batches_in_flight,
            timeout=sh.timeout_ms / 1000.0,
        )


def build_settings(config: cfg.PipelineConfig) -> EngineSettings:
    """The engine settings the configuration has keys for; the rest keep their defaults."""
    b, r, flow = config.batching, config.runtime, config.flow
    return EngineSettings(
        max_batch_size=b.max_size,
        max_wait=b.max_wait_ms / 1000.0,
        max_concurrency=b.max_concurrency,
        model_calls=b.model_calls,
        max_in_flight=flow.max_in_flight,
        max_in_flight_bytes=flow.max_in_flight_bytes,
        resume_at=flow.resume_at,
        commit_interval=None if r.commit_interval_ms is None else r.commit_interval_ms / 1000.0,
        commit_as_acknowledged=r.commit_as_acknowledged,
        max_uncommitted=r.max_uncommitted,
        read_back=r.read_back,
        shutdown_timeout=r.shutdown_timeout_s,
    )


def build_failure_policy(fc: cfg.FailuresConfig) -> FailurePolicy:
    return FailurePolicy(
        retries=fc.retries,
        backoff=fc.backoff_ms / 1000.0,
        max_backoff=fc.max_backoff_ms / 1000.0,
        timeout=fc.model_timeout_ms / 1000.0 if fc.model_timeout_ms is not None else None,
        max_hung_calls=fc.max_hung_calls,
    )


def build_priorities(c: cfg.PriorityConfig | None) -> Priorities | None:
    if c is None:
        return None
    return Priorities(c.field, c.levels, c.default or "")


def build_shed_policy(c: cfg.SheddingConfig, priorities: Priorities | None) -> ShedPolicy:
    """Which lanes may be shed: the named levels, by default the lowest; without
    priorities, the one lane (numbered 1 so that it is not the never-shed first)."""
    if priorities is None:
        lanes = frozenset({1})
    elif c.priorities is None:
        lanes = frozenset({len(priorities.levels) - 1})
    else:
        lanes = frozenset(priorities.levels.index(level) for level in c.priorities)
    return ShedPolicy(lanes, in_flight_above=c.in_flight_above, max_event_age=c.max_event_age_s)
