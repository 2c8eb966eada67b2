"""Rules that span keys, which a schema alone cannot say. Each names the key at fault
and what to do about it."""

from __future__ import annotations

import re
from typing import Any

from headrace.config.base import ConfigError
from headrace.config.components import (
    FIELD_NAME,
    JsonLinesSourceConfig,
    KafkaSinkConfig,
    KafkaSourceConfig,
    MqttSourceConfig,
    PostgresSinkConfig,
    RegistryModelConfig,
    WebhookSinkConfig,
    sink_name,
)
from headrace.config.schema import PipelineConfig


def check(config: PipelineConfig, origin: str) -> None:
    """Rules that span keys, which a schema alone cannot say."""
    names: set[str] = set()
    sinks = list(config.sinks) + ([config.dead_letter] if config.dead_letter else [])
    wheres = [f"sinks[{i}]" for i in range(len(config.sinks))]
    wheres += ["dead_letter"] if config.dead_letter else []
    if config.shedding is not None:
        sinks.append(config.shedding.destination)
        wheres.append("shedding.destination")
    if config.updates is not None and config.updates.shadow is not None:
        sinks.append(config.updates.shadow.destination)
        wheres.append("updates.shadow.destination")
    if config.windows is not None and config.windows.late_destination is not None:
        sinks.append(config.windows.late_destination)
        wheres.append("windows.late_destination")
    for sink, where in zip(sinks, wheres, strict=True):
        name = sink_name(sink, dead_letter=where == "dead_letter", shed=where.startswith("shed"))
        if where.startswith("updates.shadow") and not sink.name:
            name = "shadow"
        if where.startswith("windows.") and not sink.name:
            name = "late"
        if name in names:
            raise ConfigError(
                f"{origin}: at {where}: sink name {name!r} is used twice; give each sink a "
                "distinct name"
            )
        names.add(name)
        if sink.filter is not None and sink.filter.above is None and sink.filter.below is None:
            raise ConfigError(f"{origin}: at {where}.filter: give `above`, `below` or both")
    if config.dead_letter is not None and config.dead_letter.filter is not None:
        raise ConfigError(
            f"{origin}: at dead_letter.filter: a dead-letter sink takes every failure"
        )
    if config.batching.model_calls == "loop" and config.failures.model_timeout_ms is not None:
        raise ConfigError(
            f"{origin}: at batching.model_calls: a model called on the event loop cannot be "
            "timed out; remove failures.model_timeout_ms, or use model_calls: thread"
        )
    _check_webhooks(config, origin, list(zip(sinks, wheres, strict=True)))
    _check_priorities(config, origin)
    _check_updates(config, origin)
    _check_windows(config, origin)
    _check_enrich(config, origin)
    f = config.failures
    if f.max_backoff_ms < f.backoff_ms:
        raise ConfigError(
            f"{origin}: at failures.max_backoff_ms: {f.max_backoff_ms} is below "
            f"backoff_ms={f.backoff_ms}"
        )
    _check_kafka(config, origin)
    features = config.model.features
    if features is not None and not features.fields and features.vector is None:
        raise ConfigError(f"{origin}: at model.features: give `fields`, `vector` or both")


def _check_webhooks(config: PipelineConfig, origin: str, sinks: list[tuple[object, str]]) -> None:
    from headrace.connectors.webhook_templates import (
        EVENT_FIELDS,
        WINDOW_FIELDS,
        is_template,
        template_fields,
    )

    for sink, where in sinks:
        if not isinstance(sink, WebhookSinkConfig):
            continue
        if not where.startswith("sinks["):
            raise ConfigError(
                f"{origin}: at {where}: a webhook sink takes outputs (alerts) only, not "
                "records set aside; use a sink that stores them, e.g. jsonl or postgres"
            )
        if is_template(sink.template):
            windowed = config.windows is not None
            other = (EVENT_FIELDS - WINDOW_FIELDS) if windowed else (WINDOW_FIELDS - EVENT_FIELDS)
            wrong = sorted(template_fields(sink.template) & other)
            if wrong:
                kind = "a windowed pipeline's outputs (windows)" if windowed else "event outputs"
                raise ConfigError(
                    f"{origin}: at {where}.template: {wrong[0]!r} is not a field of {kind} "
                    f"(sink {sink.name or 'webhook'!r})"
                )


_WINDOW_SIZES = {
    "tumbling": ("size_s",),
    "hopping": ("size_s", "hop_s"),
    "sliding": ("size_s",),
    "session": ("gap_s",),
}


def _check_windows(config: PipelineConfig, origin: str) -> None:
    w = config.windows
    if w is None:
        return
    at = f"{origin}: at windows"
    needed = _WINDOW_SIZES[w.type]
    for key in needed:
        if getattr(w, key) is None:
            raise ConfigError(f"{at}.{key}: {w.type} windows need `{key}`")
    for key in ("size_s", "hop_s", "gap_s"):
        if key not in needed and getattr(w, key) is not None:
            raise ConfigError(f"{at}.{key}: {w.type} windows take no `{key}`")
    if w.hop_s is not None and w.size_s is not None and w.hop_s > w.size_s:
        raise ConfigError(f"{at}.hop_s: {w.hop_s} is more than size_s={w.size_s}")
    for name, f in w.features.items():
        where = f"{at}.features.{name}"
        if f.field is None and f.agg != "count":
            raise ConfigError(f"{where}: `{f.agg}` needs a `field`")
        if (f.n is not None) != (f.agg == "last_n"):
            raise ConfigError(f"{where}.n: `n` goes with last_n, which needs it")
        if f.types is not None and f.agg != "counts_by_type":
            raise ConfigError(f"{where}.types: `types` goes with counts_by_type only")
    for key in ("priority", "shedding"):
        if getattr(config, key) is not None:
            raise ConfigError(
                f"{origin}: at {key}: applies to events, not windows; a windowed pipeline "
                f"takes no `{key}`"
            )
    if config.updates is not None and (
        config.updates.shadow is not None or config.updates.canary is not None
    ):
        raise ConfigError(
            f"{origin}: at updates: shadow and canary are for event pipelines; a windowed "
            "pipeline takes neither (yet)"
        )
    src = config.source
    if isinstance(src, KafkaSourceConfig):
        if len(src.topics) != 1:
            raise ConfigError(
                f"{origin}: at source.topics: a windowed pipeline reads exactly one topic "
                "(its state is partitioned like it)"
            )
    elif isinstance(src, MqttSourceConfig):
        raise ConfigError(
            f"{origin}: at windows: MQTT sources have no partitions to keep window state "
            "by, and acknowledge messages the state alone would hold; use Kafka"
        )
    elif isinstance(src, JsonLinesSourceConfig) and src.checkpoint is not None:
        raise ConfigError(
            f"{origin}: at source.checkpoint: window state of a file source lives in memory, "
            "so a checkpoint would skip records a restart needs; leave it out"
        )


def _check_enrich(config: PipelineConfig, origin: str) -> None:
    lookups = config.enrich
    if not lookups:
        return
    if config.windows is not None:
        raise ConfigError(
            f"{origin}: at enrich: lookups apply to events, not windows; a windowed "
            "pipeline takes no `enrich` (yet)"
        )
    names: set[str] = set()
    intos: dict[str, str] = {}
    for i, lookup in enumerate(lookups):
        at = f"{origin}: at enrich[{i}]"
        name = lookup.name
        if name in names:
            raise ConfigError(f"{at}.name: {name!r} names another lookup too")
        names.add(name)
        into = lookup.into or name
        if lookup.into is None and not re.fullmatch(FIELD_NAME, name):
            raise ConfigError(
                f"{at}.name: merged fields are named INTO.FIELD, and `into` defaults to the "
                f"name, so {name!r} would need no dot or space; rename it or give `into`"
            )
        if into in intos:
            raise ConfigError(
                f"{at}.into: {into!r} is where lookup {intos[into]!r} merges too; give each "
                "lookup its own `into`"
            )
        intos[into] = name
        if lookup.fields is not None and len(set(lookup.fields)) != len(lookup.fields):
            raise ConfigError(f"{at}.fields: a field is named twice")
        if lookup.default is not None and lookup.fields is not None:
            extra = sorted(set(lookup.default) - set(lookup.fields))
            if extra:
                raise ConfigError(
                    f"{at}.default: {extra[0]!r} is not one of fields {lookup.fields}"
                )


def _check_updates(config: PipelineConfig, origin: str) -> None:
    u = config.updates
    if u is not None and not isinstance(config.model, RegistryModelConfig):
        raise ConfigError(
            f"{origin}: at updates: live updates need a model of type registry "
            "(model: {type: registry, ref: registry:NAME@ALIAS})"
        )
    if u is not None and u.shadow is not None and u.shadow.destination.filter is not None:
        raise ConfigError(
            f"{origin}: at updates.shadow.destination.filter: the shadow destination takes "
            "every shadow output"
        )
    if (
        u is not None
        and u.shadow is not None
        and isinstance(u.shadow.destination, KafkaSinkConfig)
        and config.delivery == "exactly-once"
    ):
        # The shadow writes best-effort, outside the write order: into the transactional
        # producer it would land in whichever transaction is open, or fail between two.
        raise ConfigError(
            f"{origin}: at updates.shadow.destination: with exactly-once delivery the "
            "shadow cannot write to Kafka (it is outside the transactions); use another "
            "sink type, e.g. jsonl or postgres"
        )
    if config.admin is not None and config.metrics is None:
        raise ConfigError(
            f"{origin}: at admin: admin calls are served by the metrics server; add a "
            "`metrics` section"
        )


def _check_priorities(config: PipelineConfig, origin: str) -> None:
    p, shedding = config.priority, config.shedding
    if p is not None:
        if len(set(p.levels)) != len(p.levels):
            raise ConfigError(f"{origin}: at priority.levels: a level is named twice")
        if p.default is not None and p.default not in p.levels:
            raise ConfigError(
                f"{origin}: at priority.default: {p.default!r} is not one of the levels {p.levels}"
            )
    if shedding is None:
        return
    if shedding.in_flight_above is None and shedding.max_event_age_s is None:
        raise ConfigError(
            f"{origin}: at shedding: give in_flight_above, max_event_age_s or both (when to shed)"
        )
    if shedding.destination.filter is not None:
        raise ConfigError(
            f"{origin}: at shedding.destination.filter: the shed destination takes every "
            "shed record"
        )
    if shedding.priorities is None:
        return
    if p is None:
        raise ConfigError(
            f"{origin}: at shedding.priorities: there are no priority levels; add a "
            "`priority` section, or leave this out to let every record be shed"
        )
    for level in shedding.priorities:
        if level not in p.levels:
            raise ConfigError(
                f"{origin}: at shedding.priorities: {level!r} is not one of the levels {p.levels}"
            )
    if p.levels[0] in shedding.priorities:
        raise ConfigError(
            f"{origin}: at shedding.priorities: {p.levels[0]!r} is the highest priority, "
            "which is never shed"
        )


def _check_kafka(config: PipelineConfig, origin: str) -> None:
    sinks = list(config.sinks) + ([config.dead_letter] if config.dead_letter else [])
    if config.shedding is not None:
        sinks.append(config.shedding.destination)
    late = config.windows.late_destination if config.windows is not None else None
    if late is not None:
        sinks.append(late)
    # The shadow destination needs the connection too, though no commit waits for it.
    shadow = config.updates.shadow if config.updates is not None else None
    uses_kafka = isinstance(config.source, KafkaSourceConfig) or any(
        isinstance(s, KafkaSinkConfig) for s in [*sinks, *([shadow.destination] if shadow else [])]
    )
    k = config.kafka
    if uses_kafka:
        if k is None:
            raise ConfigError(
                f"{origin}: at kafka: a Kafka source or sink needs the `kafka` section "
                "(bootstrap_servers, or preset: eventhubs with connection_string_env)"
            )
        if k.preset == "eventhubs":
            if not k.connection_string_env:
                raise ConfigError(
                    f"{origin}: at kafka.connection_string_env: preset eventhubs reads the "
                    "connection string from this environment variable; name it"
                )
        elif not k.bootstrap_servers:
            raise ConfigError(f"{origin}: at kafka.bootstrap_servers: missing")
    src = config.source
    if isinstance(src, KafkaSourceConfig) and not src.topics and (k is None or k.preset is None):
        raise ConfigError(f"{origin}: at source.topics: name at least one topic")
    if config.delivery != "exactly-once":
        return
    if not isinstance(src, KafkaSourceConfig):
        raise ConfigError(
            f"{origin}: at delivery: exactly-once needs a Kafka source (its offsets are "
            "committed in the sink's transaction)"
        )
    kafka_sinks = [s for s in sinks if isinstance(s, KafkaSinkConfig)]
    pg_sinks = [s for s in config.sinks if isinstance(s, PostgresSinkConfig)]
    all_kafka = len(kafka_sinks) == len(sinks)
    one_pg = (
        len(config.sinks) == 1
        and len(pg_sinks) == 1
        and config.shedding is None
        and late is None
        and (
            config.dead_letter is None
            or (
                isinstance(config.dead_letter, PostgresSinkConfig)
                and config.dead_letter.dsn == pg_sinks[0].dsn
            )
        )
    )
    if not (all_kafka or one_pg):
        raise ConfigError(
            f"{origin}: at delivery: exactly-once needs every sink (and the dead_letter, "
            "shed and late destinations) to be Kafka, committed in one Kafka transaction, or "
            "one postgres sink (with, if any, a postgres dead_letter on the same dsn, and no "
            "shedding or late destination: late events go to that dead_letter), committed in "
            "one database transaction"
        )


# The whole value one environment variable, no default: ``${NAME}``.
_ENV_ONLY = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*\}$")


def check_credentials(data: Any, origin: str) -> None:
    """An ``mqtt`` source's ``username`` and ``password`` come from the environment: checked
    on the document as written, before ``${NAME}`` is replaced. The message never shows
    the value."""
    source = data.get("source") if isinstance(data, dict) else None
    if not isinstance(source, dict) or source.get("type") != "mqtt":
        return
    for key in ("username", "password"):
        if key in source and source[key] is not None:
            value = source[key]
            if not isinstance(value, str) or _ENV_ONLY.match(value) is None:
                raise ConfigError(
                    f"{origin}: at source.{key}: write it as ${{ENV_VAR}} (the whole value, "
                    "no default): MQTT credentials come from the environment, never from "
                    "the file"
                )
