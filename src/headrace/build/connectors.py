"""Sources and sinks from their configuration, and the delivery guarantee that ties them.

Each connector type is one entry in :data:`SOURCES` or :data:`SINKS`, keyed by the
``type:`` the configuration names: adding a connector is a schema class in
:mod:`headrace.config.components` and a builder here. Connectors whose client library is
an optional dependency (Kafka, MQTT, PostgreSQL) are imported only when used.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from headrace import config as cfg
from headrace.connectors.base import Sink, Source
from headrace.connectors.files import JsonLinesSink, JsonLinesSource, NullSink, StdoutSink
from headrace.connectors.generator import GeneratorSource
from headrace.connectors.sqlite import SqliteSink
from headrace.runtime.decode import JsonDecoder
from headrace.runtime.delivery import Delivery, KafkaTransactions, PostgresTransactions

if TYPE_CHECKING:
    from headrace.connectors.kafka import KafkaProducer


class KafkaParts:
    """The Kafka connection settings of a pipeline, and its one producer."""

    def __init__(self, config: cfg.PipelineConfig) -> None:
        self.config = config.kafka
        self.exactly_once = config.delivery == "exactly-once"
        self.pipeline = config.name
        src = config.source
        # Whose offsets a database keeps, in exactly-once mode.
        self.group = src.group_id if isinstance(src, cfg.KafkaSourceConfig) else config.name
        self.entity_path: str | None = None
        self._base: dict[str, Any] | None = None
        self._producer: KafkaProducer | None = None

    def base(self) -> dict[str, Any]:
        if self._base is None:
            k = self.config
            assert k is not None, "checked by the configuration rules"
            base: dict[str, Any] = {}
            if k.preset == "eventhubs":
                from headrace.connectors.eventhubs import ConnectionStringError, eventhubs_settings

                assert k.connection_string_env is not None
                secret = os.environ.get(k.connection_string_env)
                if not secret:
                    raise cfg.ConfigError(
                        f"at kafka.connection_string_env: environment variable "
                        f"{k.connection_string_env} is not set"
                    )
                try:
                    base, self.entity_path = eventhubs_settings(secret)
                except ConnectionStringError as exc:  # its message never repeats the secret
                    raise cfg.ConfigError(
                        f"at kafka.connection_string_env: {k.connection_string_env}: {exc}"
                    ) from None
            if k.bootstrap_servers:
                base["bootstrap.servers"] = k.bootstrap_servers
            base.update(k.settings)
            self._base = base
        return self._base

    def consumer_settings(self) -> dict[str, Any]:
        assert self.config is not None
        # librdkafka prefetches up to 64 MiB by default, outside the in-flight bound, and
        # a pause (a partition at its share of the flow bound) drops that partition's
        # prefetch, which is fetched again on resume. Measured, light model, 200k backlog,
        # 4 partitions: a quarter of the 64 MiB byte bound (16 MiB) cost the broker a third
        # more CPU than the plain loop (bench/broker_cost.py, 2026-12-06); with 1 MiB the
        # worker still fetched 2.6-2.7x the backlog's bytes, with 256 KiB 1.6-1.8x
        # (2.0-2.4x against 3.1-3.8x with scikit-learn), at the same records/s, also with
        # responses held 20 ms as across a network; 128 KiB fetched no less
        # (bench/broker_requests.py, 2026-12-07).
        prefetch: dict[str, Any] = {
            "queued.max.messages.kbytes": 256,
            # A fetch response alone can fill so small a queue, and librdkafka then waits
            # fetch.queue.backoff.ms (1 s by default) before fetching again: that capped
            # reading at about this many kilobytes a second.
            "fetch.queue.backoff.ms": 10,
        }
        return {**prefetch, **self.base(), **self.config.consumer}

    def producer(self) -> KafkaProducer:
        if self._producer is None:
            from headrace.connectors.kafka import KafkaProducer

            assert self.config is not None
            txn = None
            if self.exactly_once:
                txn = self.config.transactional_id or (
                    f"headrace-{self.pipeline}-{socket.gethostname()}-{os.getpid()}"
                )
            self._producer = KafkaProducer(
                {**self.base(), **self.config.producer}, transactional_id=txn
            )
        return self._producer


def type_name(c: cfg.SourceConfig | cfg.SinkConfig) -> str:
    """The ``type:`` a source or sink section was written with."""
    return str(type(c).__struct_config__.tag)


# -- sources ---------------------------------------------------------------------------

SourceBuilder = Callable[[Any, KafkaParts, float | None], tuple[Source, JsonDecoder | None]]


def build_source(
    c: cfg.SourceConfig, kafka: KafkaParts, max_wait: float | None = None
) -> tuple[Source, JsonDecoder | None]:
    """The source ``c`` describes, and the decoder of its bytes (``None``: it hands out
    decoded events). ``max_wait``: the batcher's, which bounds how long a poll waits."""
    return SOURCES[type_name(c)](c, kafka, max_wait)


def _decoder(
    c: cfg.JsonLinesSourceConfig | cfg.KafkaSourceConfig | cfg.MqttSourceConfig,
) -> JsonDecoder:
    return JsonDecoder(key_field=c.key_field, time_field=c.time_field, max_bytes=c.max_bytes)


def _generator_source(
    c: cfg.GeneratorSourceConfig, kafka: KafkaParts, max_wait: float | None
) -> tuple[Source, JsonDecoder | None]:
    source = GeneratorSource(
        rate=c.rate,
        count=c.count,
        seconds=c.seconds,
        entities=c.entities,
        anomaly_rate=c.anomaly_rate,
        seed=c.seed,
        topic=c.topic,
    )
    return source, None


def _jsonl_source(
    c: cfg.JsonLinesSourceConfig, kafka: KafkaParts, max_wait: float | None
) -> tuple[Source, JsonDecoder | None]:
    decoder = _decoder(c)
    return JsonLinesSource(c.path, checkpoint=c.checkpoint), decoder


def _kafka_source(
    c: cfg.KafkaSourceConfig, kafka: KafkaParts, max_wait: float | None
) -> tuple[Source, JsonDecoder | None]:
    decoder = _decoder(c)
    from headrace.connectors.kafka import KafkaSource
    from headrace.connectors.kafka.start import Start

    settings = kafka.consumer_settings()
    topics = c.topics or ([kafka.entity_path] if kafka.entity_path else [])
    if not topics:
        raise cfg.ConfigError(
            "at source.topics: name a topic (the connection string has no EntityPath)"
        )
    # A poll returns when max_records arrived or the timeout passed: past the batcher's
    # max_wait, the wait would only add latency.
    wait = max_wait if max_wait is not None else 0.1
    source = KafkaSource(
        topics,
        group_id=c.group_id,
        instance_id=c.instance_id,
        settings=settings,
        max_records=c.max_records,
        poll_timeout=min(0.1, max(0.001, wait)),
        start=None
        if c.start is None
        else Start(c.start if isinstance(c.start, str) else c.start.timestamp),
    )
    return source, decoder


def _mqtt_source(
    c: cfg.MqttSourceConfig, kafka: KafkaParts, max_wait: float | None
) -> tuple[Source, JsonDecoder | None]:
    decoder = _decoder(c)
    from headrace.connectors.mqtt import MqttSource

    source = MqttSource(
        c.topics,
        client_id=c.client_id,
        host=c.host,
        port=c.port,
        tls=c.tls.settings() if c.tls is not None else None,
        transport=c.transport,
        ws_path=c.ws_path or "/mqtt",
        qos=c.qos,
        protocol=c.protocol,
        session_expiry_s=c.session_expiry_s,
        max_inflight=c.max_inflight,
        keepalive_s=c.keepalive_s,
        username=c.username,
        password=c.password,
        max_records=c.max_records,
    )
    return source, decoder


SOURCES: dict[str, SourceBuilder] = {
    "generator": _generator_source,
    "jsonl": _jsonl_source,
    "kafka": _kafka_source,
    "mqtt": _mqtt_source,
}

# -- sinks -----------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class SinkUse:
    """How a sink is used, as far as building it depends on that."""

    name: str
    kafka: KafkaParts
    # Exactly-once into PostgreSQL: the sink holds the transaction outputs commit in.
    transactional: bool = False
    # A windowed pipeline: table sinks write window outputs to their windows table.
    windowed: bool = False
    # Exactly-once windows into PostgreSQL: the table the window state goes to.
    state_table: str | None = None


SinkBuilder = Callable[[Any, SinkUse], Sink]


def build_sink(
    c: cfg.SinkConfig,
    kafka: KafkaParts,
    *,
    dead_letter: bool = False,
    shed: bool = False,
    transactional: bool = False,
    default_name: str | None = None,
    windowed: bool = False,
    state_table: str | None = None,
) -> Sink:
    """The sink ``c`` describes, named as configured, else ``default_name``, else after
    its role (``dead_letter``, ``shed``) or its type."""
    name = c.name or default_name or cfg.sink_name(c, dead_letter=dead_letter, shed=shed)
    use = SinkUse(
        name=name,
        kafka=kafka,
        transactional=transactional,
        windowed=windowed,
        state_table=state_table,
    )
    return SINKS[type_name(c)](c, use)


def _sqlite_sink(c: cfg.SqliteSinkConfig, use: SinkUse) -> Sink:
    return SqliteSink(
        c.path,
        table=c.table,
        failures_table=c.failures_table,
        windows_table=c.windows_table if use.windowed else None,
        mode=c.mode,
        store_input=c.store_input,
        name=use.name,
    )


def _jsonl_sink(c: cfg.JsonLinesSinkConfig, use: SinkUse) -> Sink:
    return JsonLinesSink(c.path, fsync=c.fsync, name=use.name)


def _kafka_sink(c: cfg.KafkaSinkConfig, use: SinkUse) -> Sink:
    from headrace.connectors.kafka import KafkaSink

    return KafkaSink(c.topic, producer=use.kafka.producer(), name=use.name)


def _postgres_sink(c: cfg.PostgresSinkConfig, use: SinkUse) -> Sink:
    from headrace.connectors.postgres import PostgresSink

    return PostgresSink(
        c.dsn,
        table=c.table,
        failures_table=c.failures_table,
        offsets_table=c.offsets_table,
        windows_table=c.windows_table if use.windowed else None,
        state_table=use.state_table,
        mode=c.mode,
        store_input=c.store_input,
        transactional=use.transactional,
        consumer_group=use.kafka.group,
        name=use.name,
    )


def _stdout_sink(c: cfg.StdoutSinkConfig, use: SinkUse) -> Sink:
    return StdoutSink(name=use.name)


def _null_sink(c: cfg.NullSinkConfig, use: SinkUse) -> Sink:
    return NullSink(name=use.name)


def _webhook_sink(c: cfg.WebhookSinkConfig, use: SinkUse) -> Sink:
    from headrace.connectors.webhook import WebhookSink

    return WebhookSink(
        c.url,
        headers=c.headers,
        template=c.template,
        max_records=c.batch.max_records,
        max_wait=c.batch.max_wait_ms / 1000.0,
        cooldown=c.cooldown_s,
        timeout=c.timeout_ms / 1000.0,
        retries=c.retries,
        name=use.name,
    )


SINKS: dict[str, SinkBuilder] = {
    "sqlite": _sqlite_sink,
    "jsonl": _jsonl_sink,
    "kafka": _kafka_sink,
    "postgres": _postgres_sink,
    "stdout": _stdout_sink,
    "null": _null_sink,
    "webhook": _webhook_sink,
}

# -- delivery --------------------------------------------------------------------------


def pg_transactional(config: cfg.PipelineConfig) -> bool:
    """Exactly-once into PostgreSQL: the first sink's transaction commits the offsets."""
    return config.delivery == "exactly-once" and isinstance(config.sinks[0], cfg.PostgresSinkConfig)


def build_delivery(
    config: cfg.PipelineConfig, source: Source, sinks: list[Sink], kafka: KafkaParts
) -> Delivery | None:
    if config.delivery != "exactly-once":
        return None
    from headrace.connectors.kafka import KafkaSource

    assert isinstance(source, KafkaSource), "checked by the configuration rules"
    if pg_transactional(config):
        # Imported only here: exactly-once into Kafka does not need the postgres extra.
        from headrace.connectors.postgres import PostgresSink

        assert isinstance(sinks[0], PostgresSink), "built from config.sinks[0]"
        return PostgresTransactions(sinks[0])
    return KafkaTransactions(kafka.producer(), source)
