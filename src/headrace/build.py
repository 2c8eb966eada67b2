"""From a validated configuration to the objects of a pipeline: sources, models, sinks,
and the delivery guarantee that ties them together."""

from __future__ import annotations

import importlib
import os
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from headrace import config as cfg
from headrace.connectors.base import Sink, Source
from headrace.connectors.files import JsonLinesSink, JsonLinesSource, NullSink, StdoutSink
from headrace.connectors.generator import GeneratorSource
from headrace.connectors.sqlite import SqliteSink
from headrace.models.base import CallableModel, Model
from headrace.models.featurizer import Featurizer
from headrace.models.onnx import OnnxModel
from headrace.models.sklearn import SklearnModel, load_skops
from headrace.registry.local import LocalRegistry
from headrace.registry.refs import parse_reference
from headrace.registry.source import RegistrySource
from headrace.runtime.decode import JsonDecoder
from headrace.runtime.delivery import Delivery, KafkaTransactions, PostgresTransactions
from headrace.runtime.engine import EngineSettings
from headrace.runtime.manager import ModelSource, Probation
from headrace.runtime.priority import Priorities, ShedPolicy
from headrace.runtime.scoring import FailurePolicy
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

if TYPE_CHECKING:
    from headrace.connectors.kafka import KafkaProducer
    from headrace.pipeline import Pipeline


def configure(p: Pipeline, config: cfg.PipelineConfig) -> Pipeline:
    """Fill ``p`` with what ``config`` describes (loading the model on the way)."""
    kafka = KafkaParts(config)
    source, decoder = build_source(config.source, kafka, config.batching.max_wait_ms / 1000.0)
    p.source(source, decoder=decoder)
    if isinstance(config.model, cfg.RegistryModelConfig):
        _configure_registry_model(p, config, kafka)
    else:
        model, featurizer = build_model(config.model)
        p.model(model, featurizer=featurizer)
    if config.admin is not None:
        token = os.environ.get(config.admin.token_env)
        if not token:
            raise cfg.ConfigError(
                f"at admin.token_env: environment variable {config.admin.token_env} is not set"
            )
        p.admin(token)
    transactional = _pg_transactional(config)
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
    b, r, flow = config.batching, config.runtime, config.flow
    p.settings(
        EngineSettings(
            max_batch_size=b.max_size,
            max_wait=b.max_wait_ms / 1000.0,
            max_concurrency=b.max_concurrency,
            max_in_flight=flow.max_in_flight,
            max_in_flight_bytes=flow.max_in_flight_bytes,
            resume_at=flow.resume_at,
            commit_interval=r.commit_interval_ms / 1000.0,
            shutdown_timeout=r.shutdown_timeout_s,
        )
    )
    priorities = build_priorities(config.priority)
    if priorities is not None:
        p.priorities(priorities)
    if config.shedding is not None:
        p.shedding(
            build_shed_policy(config.shedding, priorities),
            build_sink(config.shedding.destination, kafka, shed=True),
        )
    fc = config.failures
    p.failures(
        FailurePolicy(
            retries=fc.retries,
            backoff=fc.backoff_ms / 1000.0,
            max_backoff=fc.max_backoff_ms / 1000.0,
            timeout=fc.model_timeout_ms / 1000.0 if fc.model_timeout_ms is not None else None,
        )
    )
    if config.metrics is not None:
        p.metrics(port=config.metrics.port, host=config.metrics.host)
    if config.windows is not None:
        _configure_windows(p, config, kafka, built[0] if transactional else None)
    return p


def _configure_windows(
    p: Pipeline, config: cfg.PipelineConfig, kafka: KafkaParts, database: Sink | None
) -> None:
    """``database``: the PostgreSQL sink of exactly-once delivery, whose transaction the
    state joins; otherwise state goes to a changelog topic (Kafka sources)."""
    w = config.windows
    assert w is not None
    operator = WindowOperator(
        build_assigner(w),
        {name: (f.field, build_aggregator(f)) for name, f in w.features.items()},
        key_field=w.key_field,
        time_source=w.time_field,
        allowed_lateness=w.allowed_lateness_s,
        grace=w.grace_s,
        idle_timeout=w.idle_timeout_s,
    )
    changelog: Changelog | None = None
    topic: str | None = None
    src = config.source
    if isinstance(src, cfg.KafkaSourceConfig):
        topic = src.topics[0]
        c = w.changelog
        if database is not None:
            from headrace.connectors.postgres import PostgresSink

            assert isinstance(database, PostgresSink)
            changelog = PostgresChangelog(database, topic=topic)
        else:
            changelog = KafkaChangelog(
                c.topic or f"headrace-state-{src.group_id}-{topic}",
                input_topic=topic,
                producer=kafka.producer(),
                client=kafka.base(),
                create=c.create,
                settle=c.restore_settle_ms / 1000.0,
            )
    late = None
    if w.late_destination is not None:
        late = build_sink(w.late_destination, kafka, default_name="late")
    p.windows(operator, changelog=changelog, topic=topic, late=late)


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
        self.flow_bytes = config.flow.max_in_flight_bytes
        self._base: dict[str, Any] | None = None
        self._producer: KafkaProducer | None = None

    def base(self) -> dict[str, Any]:
        if self._base is None:
            k = self.config
            assert k is not None, "checked by the configuration rules"
            base: dict[str, Any] = {}
            if k.preset == "eventhubs":
                from headrace.connectors.eventhubs import eventhubs_settings

                assert k.connection_string_env is not None
                secret = os.environ.get(k.connection_string_env)
                if not secret:
                    raise cfg.ConfigError(
                        f"at kafka.connection_string_env: environment variable "
                        f"{k.connection_string_env} is not set"
                    )
                base, self.entity_path = eventhubs_settings(secret)
            if k.bootstrap_servers:
                base["bootstrap.servers"] = k.bootstrap_servers
            base.update(k.settings)
            self._base = base
        return self._base

    def consumer_settings(self) -> dict[str, Any]:
        assert self.config is not None
        prefetch: dict[str, Any] = {}
        if self.flow_bytes is not None:
            # librdkafka prefetches up to 64 MiB by default, outside the in-flight bound:
            # keep it to a quarter of the byte bound (1 to 64 MiB) unless told otherwise.
            kbytes = min(65536, max(1024, self.flow_bytes // 4 // 1024))
            prefetch["queued.max.messages.kbytes"] = kbytes
            # A fetch response alone can fill so small a queue, and librdkafka then waits
            # fetch.queue.backoff.ms (1 s by default) before fetching again: that capped
            # reading at about this many kilobytes a second.
            prefetch["fetch.queue.backoff.ms"] = 10
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


def build_source(
    c: cfg.SourceConfig, kafka: KafkaParts, max_wait: float | None = None
) -> tuple[Source, JsonDecoder | None]:
    if isinstance(c, cfg.GeneratorSourceConfig):
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
    decoder = JsonDecoder(key_field=c.key_field, time_field=c.time_field, max_bytes=c.max_bytes)
    if isinstance(c, cfg.MqttSourceConfig):
        from headrace.connectors.mqtt import MqttSource

        mqtt = MqttSource(
            c.topics,
            client_id=c.client_id,
            host=c.host,
            port=c.port,
            qos=c.qos,
            protocol=c.protocol,
            session_expiry_s=c.session_expiry_s,
            max_inflight=c.max_inflight,
            keepalive_s=c.keepalive_s,
            username=c.username,
            password=c.password,
            max_records=c.max_records,
        )
        return mqtt, decoder
    if isinstance(c, cfg.KafkaSourceConfig):
        from headrace.connectors.kafka import KafkaSource

        settings = kafka.consumer_settings()
        topics = c.topics or ([kafka.entity_path] if kafka.entity_path else [])
        if not topics:
            raise cfg.ConfigError(
                "at source.topics: name a topic (the connection string has no EntityPath)"
            )
        # A poll returns when max_records arrived or the timeout passed: past the batcher's
        # max_wait, the wait would only add latency.
        wait = max_wait if max_wait is not None else 0.1
        kafka_source = KafkaSource(
            topics,
            group_id=c.group_id,
            settings=settings,
            max_records=c.max_records,
            poll_timeout=min(0.1, max(0.001, wait)),
        )
        return kafka_source, decoder
    return JsonLinesSource(c.path, checkpoint=c.checkpoint), decoder


def registry_source(ref: str, c: cfg.RegistryModelConfig) -> ModelSource:
    """The versions behind ``ref``, loaded as ``c`` says: in the local registry at
    ``c.root``, or (``mlflow:``) in the MLflow Model Registry at ``c.tracking_uri``."""
    parsed = parse_reference(ref)
    budget = c.latency_budget_ms / 1000.0 if c.latency_budget_ms is not None else None
    if parsed.scheme == "mlflow":
        from headrace.registry.mlflow import MlflowSource

        try:
            return MlflowSource(
                parsed,
                tracking_uri=c.tracking_uri,
                allow_pickle=c.allow_pickle,
                latency_budget=budget,
            )
        except ImportError as exc:
            raise cfg.ConfigError(
                f"model reference {ref} needs MLflow, which is not installed "
                f"({exc.__cause__}): pip install 'headrace[mlflow]'"
            ) from None
    return RegistrySource(
        LocalRegistry(c.root), parsed, allow_pickle=c.allow_pickle, latency_budget=budget
    )


def _configure_registry_model(p: Pipeline, config: cfg.PipelineConfig, kafka: KafkaParts) -> None:
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


def build_featurizer(f: cfg.FeaturesConfig | None) -> Featurizer | None:
    return Featurizer(f.fields, f.vector, allow_nan=f.allow_nan) if f is not None else None


def build_model(
    c: cfg.OnnxModelConfig | cfg.SkopsModelConfig | cfg.CallableModelConfig,
) -> tuple[Model, Featurizer | None]:
    featurizer = build_featurizer(c.features)
    model: Model
    if isinstance(c, cfg.OnnxModelConfig):
        model = OnnxModel.from_file(
            c.path,
            sha256=c.sha256,
            name=c.name,
            version=c.version,
            output=c.output,
            threads=c.threads,
        )
    elif isinstance(c, cfg.SkopsModelConfig):
        estimator = load_skops(c.path, sha256=c.sha256, trusted=c.trusted_types)
        model = SklearnModel(
            estimator,
            method=c.method,
            name=c.name,
            version=c.version,
            negate=c.negate,
            sha256=c.sha256,
        )
    else:
        model = _import_model(c)
    return model, featurizer


def _import_model(c: cfg.CallableModelConfig) -> Model:
    module_name, _, attr = c.function.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise cfg.ConfigError(f"at model.function: cannot import {c.function!r}: {exc}") from exc
    if hasattr(obj, "predict_batch"):
        return CallableModel(obj.predict_batch, name=c.name, version=c.version)
    if not callable(obj):
        raise cfg.ConfigError(f"at model.function: {c.function!r} is not callable")
    return CallableModel(obj, name=c.name, version=c.version)


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
    name = c.name or default_name or cfg.sink_name(c, dead_letter=dead_letter, shed=shed)
    if isinstance(c, cfg.SqliteSinkConfig):
        return SqliteSink(
            c.path,
            table=c.table,
            failures_table=c.failures_table,
            windows_table=c.windows_table if windowed else None,
            mode=c.mode,
            store_input=c.store_input,
            name=name,
        )
    if isinstance(c, cfg.JsonLinesSinkConfig):
        return JsonLinesSink(c.path, fsync=c.fsync, name=name)
    if isinstance(c, cfg.KafkaSinkConfig):
        from headrace.connectors.kafka import KafkaSink

        return KafkaSink(c.topic, producer=kafka.producer(), name=name)
    if isinstance(c, cfg.PostgresSinkConfig):
        from headrace.connectors.postgres import PostgresSink

        return PostgresSink(
            c.dsn,
            table=c.table,
            failures_table=c.failures_table,
            offsets_table=c.offsets_table,
            windows_table=c.windows_table if windowed else None,
            state_table=state_table,
            mode=c.mode,
            store_input=c.store_input,
            transactional=transactional,
            consumer_group=kafka.group,
            name=name,
        )
    if isinstance(c, cfg.StdoutSinkConfig):
        return StdoutSink(name=name)
    return NullSink(name=name)


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


def build_delivery(
    config: cfg.PipelineConfig, source: Source, sinks: list[Sink], kafka: KafkaParts
) -> Delivery | None:
    if config.delivery != "exactly-once":
        return None
    from headrace.connectors.kafka import KafkaSource
    from headrace.connectors.postgres import PostgresSink

    assert isinstance(source, KafkaSource), "checked by the configuration rules"
    if isinstance(sinks[0], PostgresSink):
        return PostgresTransactions(sinks[0])
    return KafkaTransactions(kafka.producer(), source)


def _pg_transactional(config: cfg.PipelineConfig) -> bool:
    return config.delivery == "exactly-once" and isinstance(config.sinks[0], cfg.PostgresSinkConfig)
