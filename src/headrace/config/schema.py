"""The schema of the pipeline file: :class:`PipelineConfig` and its sections other than
the components (see :mod:`headrace.config.components`). Defaults come from
:mod:`headrace.defaults`, which the Python builder and the engine read too."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from headrace import defaults
from headrace.config.base import REF, TABLE, Fraction, NonNegative, Port, Positive, Seconds, Section
from headrace.config.components import LookupConfig, ModelConfig, SinkConfig, SourceConfig


class BatchingConfig(Section, kw_only=True):
    max_size: Positive = defaults.MAX_BATCH_SIZE
    max_wait_ms: NonNegative = defaults.MAX_WAIT * 1000
    max_concurrency: Positive = defaults.MAX_CONCURRENCY
    model_calls: Literal["thread", "loop", "process"] = defaults.MODEL_CALLS


class FlowConfig(Section, kw_only=True):
    """Bounds on work between source and sinks; reading pauses at either bound."""

    max_in_flight: Positive = defaults.MAX_IN_FLIGHT
    max_in_flight_bytes: Positive | None = defaults.MAX_IN_FLIGHT_BYTES
    resume_at: Annotated[float, msgspec.Meta(ge=0, lt=1)] = defaults.RESUME_AT


class PriorityConfig(Section, kw_only=True):
    """A field that orders batch assembly: records of the first level are scored first."""

    field: str = "priority"
    levels: Annotated[list[str], msgspec.Meta(min_length=2)] = msgspec.field(
        default_factory=lambda: ["high", "normal", "low"]
    )
    default: str | None = None


class SheddingConfig(Section, kw_only=True):
    """When records may be set aside unscored. Every shed record goes to ``destination``."""

    destination: SinkConfig
    in_flight_above: Annotated[float, msgspec.Meta(gt=0, lt=1)] | None = None
    max_event_age_s: Annotated[float, msgspec.Meta(gt=0)] | None = None
    priorities: list[str] | None = None


class FailuresConfig(Section, kw_only=True):
    """Retries of records the model fails on, the model call timeout, and the backoff of
    the circuit breaker that holds the stream while the model is down."""

    retries: Annotated[int, msgspec.Meta(ge=0, le=100)] = defaults.RETRIES
    backoff_ms: Annotated[float, msgspec.Meta(gt=0)] = defaults.BACKOFF * 1000
    max_backoff_ms: Annotated[float, msgspec.Meta(gt=0)] = defaults.MAX_BACKOFF * 1000
    model_timeout_ms: Annotated[float, msgspec.Meta(gt=0)] | None = None
    max_hung_calls: Annotated[int, msgspec.Meta(ge=0, le=10_000)] = defaults.MAX_HUNG_CALLS


class ProbationConfig(Section, kw_only=True):
    """How long a new version is watched after a swap, and what rolls it back."""

    seconds: NonNegative = defaults.PROBATION_SECONDS
    max_error_rate: Fraction = defaults.PROBATION_MAX_ERROR_RATE
    max_latency_ratio: Annotated[float, msgspec.Meta(gt=0)] = defaults.PROBATION_MAX_LATENCY_RATIO
    min_records: Positive = defaults.PROBATION_MIN_RECORDS


class ShadowConfig(Section, kw_only=True):
    """A candidate that scores the same batches off the critical path."""

    ref: Annotated[str, msgspec.Meta(pattern=REF)]
    destination: SinkConfig
    tolerance: NonNegative = defaults.SHADOW_TOLERANCE
    max_batches_in_flight: Positive = defaults.SHADOW_MAX_BATCHES_IN_FLIGHT
    timeout_ms: Annotated[float, msgspec.Meta(gt=0)] = defaults.SHADOW_TIMEOUT * 1000


class CanaryConfig(Section, kw_only=True):
    """A candidate that scores a stable share of keys."""

    ref: Annotated[str, msgspec.Meta(pattern=REF)]
    fraction: Annotated[float, msgspec.Meta(gt=0, lt=1)]


class UpdatesConfig(Section, kw_only=True):
    """Live model updates for a ``registry`` model."""

    poll_interval_s: Annotated[float, msgspec.Meta(gt=0)] = defaults.POLL_INTERVAL
    probation: ProbationConfig = msgspec.field(default_factory=ProbationConfig)
    shadow: ShadowConfig | None = None
    canary: CanaryConfig | None = None


class AdminConfig(Section, kw_only=True):
    """Admin calls on the metrics server; the token is read from the environment."""

    token_env: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]


class RuntimeConfig(Section, kw_only=True):
    # None: the source's own (1000 ms; MQTT 100 ms, see MqttSource.commit_interval).
    commit_interval_ms: NonNegative | None = None
    commit_as_acknowledged: bool = defaults.COMMIT_AS_ACKNOWLEDGED
    max_uncommitted: Annotated[int, msgspec.Meta(ge=1)] | None = defaults.MAX_UNCOMMITTED
    read_back: Annotated[int, msgspec.Meta(ge=0)] = defaults.READ_BACK
    shutdown_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = defaults.SHUTDOWN_TIMEOUT


class MetricsConfig(Section, kw_only=True):
    port: Port = defaults.METRICS_PORT
    host: str = defaults.METRICS_HOST


KafkaValue = str | int | float | bool


class KafkaConfig(Section, kw_only=True):
    """The Kafka connection every Kafka source and sink of the pipeline uses."""

    bootstrap_servers: str | None = None
    preset: Literal["eventhubs"] | None = None
    connection_string_env: str | None = None
    settings: dict[str, KafkaValue] = msgspec.field(default_factory=dict)
    consumer: dict[str, KafkaValue] = msgspec.field(default_factory=dict)
    producer: dict[str, KafkaValue] = msgspec.field(default_factory=dict)
    transactional_id: str | None = None


Aggregation = Literal[
    "count",
    "sum",
    "mean",
    "min",
    "max",
    "std",
    "first",
    "last",
    "last_n",
    "distinct_count",
    "counts_by_type",
]


class WindowFeatureConfig(Section, kw_only=True):
    """One feature of a window: an aggregation of a field (``count`` may leave the field
    out: it then counts records)."""

    agg: Aggregation
    field: str | None = None
    n: Annotated[int, msgspec.Meta(ge=1, le=10_000)] | None = None  # last_n
    types: list[str] | None = None  # counts_by_type: a fixed set of types, the rest "other"
    max_types: Annotated[int, msgspec.Meta(ge=0)] = 32  # counts_by_type without types


class ChangelogConfig(Section, kw_only=True):
    """Where window state is written (Kafka sources only): a compacted topic, or with
    exactly-once into PostgreSQL, a table in the sink's database."""

    topic: str | None = None  # default: headrace-state-<group_id>-<input topic>
    create: bool = True
    restore_settle_ms: NonNegative = 200.0
    table: Annotated[str, msgspec.Meta(pattern=TABLE)] = "headrace_window_state"


class WindowsConfig(Section, kw_only=True):
    """Score windows of events per key instead of single events."""

    type: Literal["tumbling", "hopping", "sliding", "session"]
    size_s: Seconds | None = None  # tumbling, hopping, sliding
    hop_s: Seconds | None = None  # hopping
    gap_s: Seconds | None = None  # session
    key_field: str | None = None  # default: the record key
    time_field: str | None = None  # default: the record's event time
    allowed_lateness_s: NonNegative = 0.0
    grace_s: NonNegative = 0.0
    idle_timeout_s: Seconds | None = 30.0
    features: Annotated[dict[str, WindowFeatureConfig], msgspec.Meta(min_length=1)]
    late_destination: SinkConfig | None = None  # default: the dead_letter sink
    changelog: ChangelogConfig = msgspec.field(default_factory=ChangelogConfig)


class PipelineConfig(Section, kw_only=True):
    source: SourceConfig
    model: ModelConfig
    sinks: Annotated[list[SinkConfig], msgspec.Meta(min_length=1)]
    name: str = defaults.NAME
    dead_letter: SinkConfig | None = None
    batching: BatchingConfig = msgspec.field(default_factory=BatchingConfig)
    flow: FlowConfig = msgspec.field(default_factory=FlowConfig)
    priority: PriorityConfig | None = None
    shedding: SheddingConfig | None = None
    failures: FailuresConfig = msgspec.field(default_factory=FailuresConfig)
    updates: UpdatesConfig | None = None
    admin: AdminConfig | None = None
    windows: WindowsConfig | None = None
    runtime: RuntimeConfig = msgspec.field(default_factory=RuntimeConfig)
    metrics: MetricsConfig | None = None
    kafka: KafkaConfig | None = None
    delivery: Literal["at-least-once", "exactly-once"] = "at-least-once"
    enrich: list[LookupConfig] = msgspec.field(default_factory=list)
