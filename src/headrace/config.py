"""The YAML configuration: its schema, how it is read, and the errors a mistake gets.

Every section is a strict schema: an unknown key is an error, a wrong type names the key
and what was expected. Strings may name environment variables as ``${NAME}`` (or
``${NAME:-default}``), which is how secrets and per-run values come in without being
written into the file. Relative paths are relative to the current directory.
"""

from __future__ import annotations

import os
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import yaml

Positive = Annotated[int, msgspec.Meta(ge=1)]
NonNegative = Annotated[float, msgspec.Meta(ge=0)]
Fraction = Annotated[float, msgspec.Meta(ge=0, le=1)]
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
Sha256 = Annotated[str, msgspec.Meta(pattern="^[0-9a-fA-F]{64}$")]


class ConfigError(ValueError):
    """A configuration mistake, with the key it concerns and what was expected."""


class _Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


# -- sources ---------------------------------------------------------------------------


class GeneratorSourceConfig(_Section, kw_only=True, tag="generator", tag_field="type"):
    """Synthetic IoT sensor events (the reference event shape)."""

    rate: NonNegative = 1000.0
    count: Positive | None = None
    seconds: Annotated[float, msgspec.Meta(gt=0)] | None = None
    entities: Positive = 100
    anomaly_rate: Fraction = 0.01
    seed: int = 0
    topic: str = "generator"


class JsonLinesSourceConfig(_Section, kw_only=True, tag="jsonl", tag_field="type"):
    """One JSON document per line, from a file or standard input (``-``)."""

    path: str
    checkpoint: str | None = None
    key_field: str | None = None
    time_field: str | None = None
    max_bytes: Positive = 1 << 20


class KafkaSourceConfig(_Section, kw_only=True, tag="kafka", tag_field="type"):
    """A Kafka topic (or several) read as a member of a consumer group. The connection is
    the top-level ``kafka`` section."""

    group_id: str
    topics: list[str] = msgspec.field(default_factory=list)
    key_field: str | None = None
    time_field: str | None = None
    max_bytes: Positive = 1 << 20
    max_records: Positive = 1000


class MqttSourceConfig(_Section, kw_only=True, tag="mqtt", tag_field="type"):
    """MQTT topic filters read in a persistent session (``client_id`` names it); a message
    is acknowledged only once it reached a terminal state. See docs/mqtt.md."""

    topics: Annotated[list[str], msgspec.Meta(min_length=1)]
    client_id: Annotated[str, msgspec.Meta(min_length=1)]
    host: str = "127.0.0.1"
    port: Port = 1883
    qos: Literal[0, 1, 2] = 1
    protocol: Literal[5, "3.1.1"] = 5
    session_expiry_s: Annotated[int, msgspec.Meta(ge=0, le=0xFFFF_FFFF)] = 86_400
    max_inflight: Annotated[int, msgspec.Meta(ge=1, le=65_535)] = 1000
    keepalive_s: Annotated[int, msgspec.Meta(ge=1, le=65_535)] = 30
    username: str | None = None
    password: str | None = None
    key_field: str | None = None
    time_field: str | None = None
    max_bytes: Positive = 1 << 20
    max_records: Positive = 500

    def __post_init__(self) -> None:
        from headrace.connectors.mqtt import topic_filter_problem

        for t in self.topics:
            problem = topic_filter_problem(t)
            if problem is not None:
                raise ValueError(f"topic filter {t!r}: {problem}")
        if self.qos == 2:
            raise ValueError(
                "qos 2 is refused: the client confirms a QoS 2 message on receipt and keeps it "
                "only in memory, so a crash loses it; use 1 (at-least-once) or 0"
            )

    def __repr__(self) -> str:
        fields = msgspec.structs.asdict(self)
        if fields["password"] is not None:
            fields["password"] = "***"
        return f"MqttSourceConfig({', '.join(f'{k}={v!r}' for k, v in fields.items())})"


SourceConfig = GeneratorSourceConfig | JsonLinesSourceConfig | KafkaSourceConfig | MqttSourceConfig

# -- models ----------------------------------------------------------------------------


class FeaturesConfig(_Section, kw_only=True):
    """Which fields of each event make the model's input row."""

    fields: list[str] = msgspec.field(default_factory=list)
    vector: str | None = None
    allow_nan: bool = False


class OnnxModelConfig(_Section, kw_only=True, tag="onnx", tag_field="type"):
    name: str
    version: str
    path: str
    sha256: Sha256
    output: str | None = None
    threads: Positive | None = None
    features: FeaturesConfig | None = None


class SkopsModelConfig(_Section, kw_only=True, tag="skops", tag_field="type"):
    name: str
    version: str
    path: str
    sha256: Sha256
    method: Literal["predict", "predict_proba", "decision_function", "score_samples"] = "predict"
    negate: bool = False
    trusted_types: list[str] = msgspec.field(default_factory=list)
    features: FeaturesConfig | None = None


class CallableModelConfig(_Section, kw_only=True, tag="callable", tag_field="type"):
    """A Python function ``module:name`` that scores a batch, or an object with
    ``predict_batch``."""

    name: str
    version: str
    function: Annotated[str, msgspec.Meta(pattern=r"^[\w.]+:[\w.]+$")]
    features: FeaturesConfig | None = None


_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
# registry:NAME@ALIAS, registry:NAME/VERSION, mlflow:NAME@ALIAS, mlflow:NAME/VERSION (an
# MLflow name may hold more, spaces for one; an MLflow version is a positive integer).
_REF = (
    rf"^(registry:{_NAME}[@/]{_NAME}"
    rf"|mlflow:[^@/:\s](?:[^@/:]*[^@/:\s])?(?:@{_NAME}|/[1-9][0-9]*))$"
)


class RegistryModelConfig(_Section, kw_only=True, tag="registry", tag_field="type"):
    """A version from the model registry: ``registry:NAME@ALIAS`` follows the alias (and
    swaps live when it moves); ``registry:NAME/VERSION`` pins one version. ``mlflow:``
    references name an MLflow Model Registry instead (``pip install 'headrace[mlflow]'``),
    at ``tracking_uri`` (default: MLflow's own, ``MLFLOW_TRACKING_URI``); ``root`` is the
    local registry's directory."""

    ref: Annotated[str, msgspec.Meta(pattern=_REF)]
    root: str = "model-registry"
    tracking_uri: str | None = None
    allow_pickle: bool = False
    latency_budget_ms: Annotated[float, msgspec.Meta(gt=0)] | None = None
    features: FeaturesConfig | None = None

    @property
    def name(self) -> str:
        return self.ref.split(":", 1)[1].replace("/", "@").split("@", 1)[0]

    @property
    def version(self) -> str:
        return self.ref.replace("/", "@").rsplit("@", 1)[1]


ModelConfig = OnnxModelConfig | SkopsModelConfig | CallableModelConfig | RegistryModelConfig

# -- sinks -----------------------------------------------------------------------------


class FilterConfig(_Section, kw_only=True):
    """Keep only outputs whose (scalar) prediction is above and/or below a threshold."""

    above: float | None = None
    below: float | None = None


_TABLE = r"^[A-Za-z_][A-Za-z0-9_]{0,62}(\.[A-Za-z_][A-Za-z0-9_]{0,62})?$"


class _SinkSection(_Section, kw_only=True):
    name: str | None = None
    filter: FilterConfig | None = None


class SqliteSinkConfig(_SinkSection, kw_only=True, tag="sqlite", tag_field="type"):
    path: str
    table: str = "predictions"
    failures_table: str = "dead_letters"
    windows_table: str = "window_scores"  # windowed pipelines
    mode: Literal["upsert", "insert"] = "upsert"
    store_input: bool = True


class JsonLinesSinkConfig(_SinkSection, kw_only=True, tag="jsonl", tag_field="type"):
    path: str
    fsync: bool = False


class KafkaSinkConfig(_SinkSection, kw_only=True, tag="kafka", tag_field="type"):
    topic: str


class PostgresSinkConfig(_SinkSection, kw_only=True, tag="postgres", tag_field="type"):
    dsn: str
    table: Annotated[str, msgspec.Meta(pattern=_TABLE)] = "predictions"
    failures_table: Annotated[str, msgspec.Meta(pattern=_TABLE)] = "dead_letters"
    offsets_table: Annotated[str, msgspec.Meta(pattern=_TABLE)] = "headrace_offsets"
    windows_table: Annotated[str, msgspec.Meta(pattern=_TABLE)] = "window_scores"
    mode: Literal["upsert", "insert"] = "upsert"
    store_input: bool = True


class StdoutSinkConfig(_SinkSection, kw_only=True, tag="stdout", tag_field="type"):
    pass


class NullSinkConfig(_SinkSection, kw_only=True, tag="null", tag_field="type"):
    pass


SinkConfig = (
    SqliteSinkConfig
    | JsonLinesSinkConfig
    | KafkaSinkConfig
    | PostgresSinkConfig
    | StdoutSinkConfig
    | NullSinkConfig
)

# -- the rest --------------------------------------------------------------------------


class BatchingConfig(_Section, kw_only=True):
    max_size: Positive = 256
    max_wait_ms: NonNegative = 10.0
    max_concurrency: Positive = 2


class FlowConfig(_Section, kw_only=True):
    """Bounds on work between source and sinks; reading pauses at either bound."""

    max_in_flight: Positive = 10_000
    max_in_flight_bytes: Positive | None = 64 << 20
    resume_at: Annotated[float, msgspec.Meta(ge=0, lt=1)] = 0.5


class PriorityConfig(_Section, kw_only=True):
    """A field that orders batch assembly: records of the first level are scored first."""

    field: str = "priority"
    levels: Annotated[list[str], msgspec.Meta(min_length=2)] = msgspec.field(
        default_factory=lambda: ["high", "normal", "low"]
    )
    default: str | None = None


class SheddingConfig(_Section, kw_only=True):
    """When records may be set aside unscored. Every shed record goes to ``destination``."""

    destination: SinkConfig
    in_flight_above: Annotated[float, msgspec.Meta(gt=0, lt=1)] | None = None
    max_event_age_s: Annotated[float, msgspec.Meta(gt=0)] | None = None
    priorities: list[str] | None = None


class FailuresConfig(_Section, kw_only=True):
    """Retries of records the model fails on, the model call timeout, and the backoff of
    the circuit breaker that holds the stream while the model is down."""

    retries: Annotated[int, msgspec.Meta(ge=0, le=100)] = 2
    backoff_ms: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    max_backoff_ms: Annotated[float, msgspec.Meta(gt=0)] = 5000.0
    model_timeout_ms: Annotated[float, msgspec.Meta(gt=0)] | None = None


class ProbationConfig(_Section, kw_only=True):
    """How long a new version is watched after a swap, and what rolls it back."""

    seconds: NonNegative = 60.0
    max_error_rate: Fraction = 0.05
    max_latency_ratio: Annotated[float, msgspec.Meta(gt=0)] = 3.0
    min_records: Positive = 100


class ShadowConfig(_Section, kw_only=True):
    """A candidate that scores the same batches off the critical path."""

    ref: Annotated[str, msgspec.Meta(pattern=_REF)]
    destination: SinkConfig
    tolerance: NonNegative = 1e-6
    max_batches_in_flight: Positive = 1
    timeout_ms: Annotated[float, msgspec.Meta(gt=0)] = 30_000.0


class CanaryConfig(_Section, kw_only=True):
    """A candidate that scores a stable share of keys."""

    ref: Annotated[str, msgspec.Meta(pattern=_REF)]
    fraction: Annotated[float, msgspec.Meta(gt=0, lt=1)]


class UpdatesConfig(_Section, kw_only=True):
    """Live model updates for a ``registry`` model."""

    poll_interval_s: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    probation: ProbationConfig = msgspec.field(default_factory=ProbationConfig)
    shadow: ShadowConfig | None = None
    canary: CanaryConfig | None = None


class AdminConfig(_Section, kw_only=True):
    """Admin calls on the metrics server; the token is read from the environment."""

    token_env: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]


class RuntimeConfig(_Section, kw_only=True):
    commit_interval_ms: NonNegative = 1000.0
    shutdown_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 30.0


class MetricsConfig(_Section, kw_only=True):
    port: Port = 9108
    host: str = "127.0.0.1"


KafkaValue = str | int | float | bool


class KafkaConfig(_Section, kw_only=True):
    """The Kafka connection every Kafka source and sink of the pipeline uses."""

    bootstrap_servers: str | None = None
    preset: Literal["eventhubs"] | None = None
    connection_string_env: str | None = None
    settings: dict[str, KafkaValue] = msgspec.field(default_factory=dict)
    consumer: dict[str, KafkaValue] = msgspec.field(default_factory=dict)
    producer: dict[str, KafkaValue] = msgspec.field(default_factory=dict)
    transactional_id: str | None = None


Seconds = Annotated[float, msgspec.Meta(gt=0)]
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


class WindowFeatureConfig(_Section, kw_only=True):
    """One feature of a window: an aggregation of a field (``count`` may leave the field
    out: it then counts records)."""

    agg: Aggregation
    field: str | None = None
    n: Annotated[int, msgspec.Meta(ge=1, le=10_000)] | None = None  # last_n
    types: list[str] | None = None  # counts_by_type: a fixed set of types, the rest "other"
    max_types: Annotated[int, msgspec.Meta(ge=0)] = 32  # counts_by_type without types


class ChangelogConfig(_Section, kw_only=True):
    """Where window state is written (Kafka sources only): a compacted topic, or with
    exactly-once into PostgreSQL, a table in the sink's database."""

    topic: str | None = None  # default: headrace-state-<group_id>-<input topic>
    create: bool = True
    restore_settle_ms: NonNegative = 200.0
    table: Annotated[str, msgspec.Meta(pattern=_TABLE)] = "headrace_window_state"


class WindowsConfig(_Section, kw_only=True):
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


class PipelineConfig(_Section, kw_only=True):
    source: SourceConfig
    model: ModelConfig
    sinks: Annotated[list[SinkConfig], msgspec.Meta(min_length=1)]
    name: str = "pipeline"
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


# -- loading ---------------------------------------------------------------------------

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def interpolate(data: Any, env: Mapping[str, str], where: str = "") -> Any:
    """Replace ``${NAME}`` and ``${NAME:-default}`` in every string of a parsed document."""
    if isinstance(data, dict):
        return {
            k: interpolate(v, env, f"{where}.{k}" if where else str(k)) for k, v in data.items()
        }
    if isinstance(data, list):
        return [interpolate(v, env, f"{where}[{i}]") for i, v in enumerate(data)]
    if isinstance(data, str) and "${" in data:

        def value(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            raise ConfigError(f"at {where}: environment variable {name} is not set")

        return _VAR.sub(value, data)
    return data


def parse_config(
    data: Any, *, env: Mapping[str, str] | None = None, origin: str = "config"
) -> PipelineConfig:
    """Validate an already-parsed document (a dict) into a :class:`PipelineConfig`."""
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: expected a mapping of sections, got {type(data).__name__}")
    try:
        data = interpolate(data, os.environ if env is None else env)
        # Lax conversion: a number that came in through ${VAR} arrives as a string.
        config = msgspec.convert(data, PipelineConfig, strict=False)
    except ConfigError as exc:
        raise ConfigError(f"{origin}: {exc}") from None
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{origin}: {explain(str(exc), data)}") from None
    check(config, origin)
    return config


def load_config(path: str | Path, *, env: Mapping[str, str] | None = None) -> PipelineConfig:
    """Read and validate a pipeline YAML file."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_config(data, env=env, origin=str(path))


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
    _check_priorities(config, origin)
    _check_updates(config, origin)
    _check_windows(config, origin)
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


def sink_name(sink: SinkConfig, *, dead_letter: bool = False, shed: bool = False) -> str:
    """A sink's name: its own, else ``dead_letter``, ``shed`` or its type."""
    if sink.name:
        return sink.name
    if dead_letter:
        return "dead_letter"
    return "shed" if shed else str(type(sink).__struct_config__.tag)


# -- error messages --------------------------------------------------------------------

_AT = re.compile(r"^(?P<msg>.*?) - at `\$(?P<path>[^`]*)`$")
_UNKNOWN = re.compile(r"^Object contains unknown field `(?P<key>[^`]*)`$")
_MISSING = re.compile(r"^Object missing required field `(?P<key>[^`]*)`$")


def explain(message: str, data: Any) -> str:
    """Turn msgspec's message into one that names the key and what it expected."""
    m = _AT.match(message)
    msg, path = (m.group("msg"), m.group("path")) if m else (message, "")
    where = path.lstrip(".") or "top level"
    if (u := _UNKNOWN.match(msg)) is not None:
        tp, node = _type_at(path, data)
        struct = _resolve(tp, node)
        allowed = sorted(f.encode_name for f in msgspec.structs.fields(struct)) if struct else []
        hint = f"; expected one of: {', '.join(allowed)}" if allowed else ""
        return f"at {where}: unknown key {u.group('key')!r}{hint}"
    if (u := _MISSING.match(msg)) is not None:
        key = u.group("key")
        if key == "type":
            tp, _ = _type_at(path, data)
            tags = [str(a.__struct_config__.tag) for a in _members(tp) if _is_struct(a)]
            return f"at {where}: missing required key 'type'; expected one of: {', '.join(tags)}"
        return f"at {where}: missing required key {key!r}"
    if path.endswith(".type") and msg.startswith("Invalid value"):
        tp, _ = _type_at(path[: -len(".type")], data)
        tags = [str(a.__struct_config__.tag) for a in _members(tp) if _is_struct(a)]
        return f"at {where}: {msg}; expected one of: {', '.join(tags)}"
    if msg.startswith("Invalid enum value"):
        tp, _ = _type_at(path, data)
        allowed = [repr(a) for m in _members(tp) for a in typing.get_args(m)]
        if allowed:
            return f"at {where}: {msg}; expected one of: {', '.join(allowed)}"
    if path.endswith(".type") and msg.endswith("got `NoneType`"):
        return f'at {where}: {msg}; YAML reads a bare null as nothing: write type: "null"'
    return f"at {where}: {msg}"


def _segments(path: str) -> list[str | int]:
    return [int(i) if i else k for k, i in re.findall(r"\.([^.\[]+)|\[(\d+)\]", path)]


def _type_at(path: str, data: Any) -> tuple[Any, Any]:
    """The declared type at ``path`` in the schema, and the data found there."""
    tp: Any = PipelineConfig
    node = data
    for seg in _segments(path):
        if isinstance(seg, int):
            args = typing.get_args(_unwrap(tp))
            tp = args[0] if args else None
            node = node[seg] if isinstance(node, list) and seg < len(node) else None
        else:
            struct = _resolve(tp, node)
            if struct is None:
                return None, None
            tp = typing.get_type_hints(struct, include_extras=True).get(seg)
            node = node.get(seg) if isinstance(node, dict) else None
    return tp, node


def _resolve(tp: Any, node: Any) -> type[msgspec.Struct] | None:
    """The schema class a value of declared type ``tp`` is checked against."""
    structs: list[type[msgspec.Struct]] = [a for a in _members(tp) if _is_struct(a)]
    if len(structs) == 1:
        return structs[0]
    tag = node.get("type") if isinstance(node, dict) else None
    return next((s for s in structs if s.__struct_config__.tag == tag), None)


def _unwrap(tp: Any) -> Any:
    while typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
    return tp


def _members(tp: Any) -> list[Any]:
    tp = _unwrap(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return [_unwrap(a) for a in typing.get_args(tp) if a is not type(None)]
    return [tp]


def _is_struct(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, msgspec.Struct)
