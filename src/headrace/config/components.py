"""The schema of a pipeline's components: its source, its model and its sinks. Each is a
union whose ``type:`` key picks the class; adding a type is a class here and an entry in
its union (and a builder in :mod:`headrace.build`)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

import msgspec

from headrace.config.base import REF, TABLE, Fraction, NonNegative, Port, Positive, Section, Sha256

# -- sources ---------------------------------------------------------------------------


class GeneratorSourceConfig(Section, kw_only=True, tag="generator", tag_field="type"):
    """Synthetic IoT sensor events (the reference event shape)."""

    rate: NonNegative = 1000.0
    count: Positive | None = None
    seconds: Annotated[float, msgspec.Meta(gt=0)] | None = None
    entities: Positive = 100
    anomaly_rate: Fraction = 0.01
    seed: int = 0
    topic: str = "generator"


class JsonLinesSourceConfig(Section, kw_only=True, tag="jsonl", tag_field="type"):
    """One JSON document per line, from a file or standard input (``-``)."""

    path: str
    checkpoint: str | None = None
    key_field: str | None = None
    time_field: str | None = None
    max_bytes: Positive = 1 << 20


def start_timestamp_problem(when: datetime) -> str | None:
    """Why ``when`` cannot be a start timestamp (``None``: it can)."""
    if when.tzinfo is None or when.utcoffset() is None:
        return f"{when.isoformat()} has no time zone; write it as e.g. 2026-12-01T00:00:00Z"
    if when < datetime(1970, 1, 1, tzinfo=UTC):
        return f"{when.isoformat()} is before 1970-01-01T00:00:00Z, where Kafka's time starts"
    return None


def parse_start_timestamp(text: str) -> datetime:
    """An RFC 3339 time with a zone, as ``source.start.timestamp`` and ``headrace run
    --from-timestamp`` take it; ``ValueError`` says what is wrong with anything else.

    >>> parse_start_timestamp("2026-12-01T00:00:00Z").isoformat()
    '2026-12-01T00:00:00+00:00'
    """
    try:
        when = msgspec.convert(text, datetime)
    except msgspec.ValidationError:
        raise ValueError(
            f"{text!r} is not an RFC 3339 time; write it as e.g. 2026-12-01T00:00:00Z"
        ) from None
    problem = start_timestamp_problem(when)
    if problem is not None:
        raise ValueError(problem)
    return when


class StartConfig(Section, kw_only=True):
    """``source.start: {timestamp: ...}``: partitions with no committed offset start at the
    first record at or after ``timestamp`` (see :mod:`headrace.connectors.kafka.start`)."""

    timestamp: datetime

    def __post_init__(self) -> None:
        problem = start_timestamp_problem(self.timestamp)
        if problem is not None:
            raise ValueError(f"timestamp: {problem}")


class KafkaSourceConfig(Section, kw_only=True, tag="kafka", tag_field="type"):
    """A Kafka topic (or several) read as a member of a consumer group. The connection is
    the top-level ``kafka`` section. ``instance_id`` makes the worker a static member
    (librdkafka's ``group.instance.id``); see :mod:`headrace.config.instance` for where it
    comes from when the key is left out."""

    group_id: str
    # Once loaded: the id in effect (this key, else HEADRACE_INSTANCE_ID, `hostname`
    # replaced by the machine's name), or None for dynamic membership.
    instance_id: str | None = None
    topics: list[str] = msgspec.field(default_factory=list)
    key_field: str | None = None
    time_field: str | None = None
    max_bytes: Positive = 1 << 20
    max_records: Positive = 1000
    # Where partitions without a committed offset start (auto.offset.reset otherwise).
    start: Literal["earliest", "latest"] | StartConfig | None = None


class MqttSourceConfig(Section, kw_only=True, tag="mqtt", tag_field="type"):
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
        from headrace.connectors.mqtt_topics import topic_filter_problem

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


class FeaturesConfig(Section, kw_only=True):
    """Which fields of each event make the model's input row."""

    fields: list[str] = msgspec.field(default_factory=list)
    vector: str | None = None
    allow_nan: bool = False


class OnnxModelConfig(Section, kw_only=True, tag="onnx", tag_field="type"):
    name: str
    version: str
    path: str
    sha256: Sha256
    output: str | None = None
    threads: Positive | None = None
    features: FeaturesConfig | None = None


class SkopsModelConfig(Section, kw_only=True, tag="skops", tag_field="type"):
    name: str
    version: str
    path: str
    sha256: Sha256
    method: Literal["predict", "predict_proba", "decision_function", "score_samples"] = "predict"
    negate: bool = False
    trusted_types: list[str] = msgspec.field(default_factory=list)
    features: FeaturesConfig | None = None


class CallableModelConfig(Section, kw_only=True, tag="callable", tag_field="type"):
    """A Python function ``module:name`` that scores a batch, or an object with
    ``predict_batch``."""

    name: str
    version: str
    function: Annotated[str, msgspec.Meta(pattern=r"^[\w.]+:[\w.]+$")]
    features: FeaturesConfig | None = None


class RegistryModelConfig(Section, kw_only=True, tag="registry", tag_field="type"):
    """A version from the model registry: ``registry:NAME@ALIAS`` follows the alias (and
    swaps live when it moves); ``registry:NAME/VERSION`` pins one version. ``mlflow:``
    references name an MLflow Model Registry instead (``pip install 'headrace[mlflow]'``),
    at ``tracking_uri`` (default: MLflow's own, ``MLFLOW_TRACKING_URI``); ``root`` is the
    local registry's directory."""

    ref: Annotated[str, msgspec.Meta(pattern=REF)]
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


class FilterConfig(Section, kw_only=True):
    """Keep only outputs whose (scalar) prediction is above and/or below a threshold."""

    above: float | None = None
    below: float | None = None


class _SinkSection(Section, kw_only=True):
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
    table: Annotated[str, msgspec.Meta(pattern=TABLE)] = "predictions"
    failures_table: Annotated[str, msgspec.Meta(pattern=TABLE)] = "dead_letters"
    offsets_table: Annotated[str, msgspec.Meta(pattern=TABLE)] = "headrace_offsets"
    windows_table: Annotated[str, msgspec.Meta(pattern=TABLE)] = "window_scores"
    mode: Literal["upsert", "insert"] = "upsert"
    store_input: bool = True


class StdoutSinkConfig(_SinkSection, kw_only=True, tag="stdout", tag_field="type"):
    pass


class NullSinkConfig(_SinkSection, kw_only=True, tag="null", tag_field="type"):
    pass


class WebhookBatchConfig(Section, kw_only=True):
    """How many alerts one POST carries at most, and how long the first waits for more."""

    max_records: Positive = 50
    max_wait_ms: NonNegative = 1000.0


class WebhookSinkConfig(_SinkSection, kw_only=True, tag="webhook", tag_field="type"):
    """Alerts POSTed to an HTTP endpoint (Slack, Teams, Discord incoming webhooks, or your
    own). ``url`` and ``headers`` come from the environment (``${VAR}``) and are never
    printed."""

    url: str
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    batch: WebhookBatchConfig = msgspec.field(default_factory=WebhookBatchConfig)
    template: str = "json"
    cooldown_s: NonNegative = 0.0
    timeout_ms: Annotated[float, msgspec.Meta(gt=0)] = 5000.0
    retries: Annotated[int, msgspec.Meta(ge=0)] = 5

    def __post_init__(self) -> None:
        from headrace.connectors.webhook_templates import template_problem

        # Never the URL itself in the message: it may hold a secret (Slack's does).
        if not self.url.startswith(("http://", "https://")):
            raise ValueError("url: expected an http:// or https:// URL")
        problem = template_problem(self.template)
        if problem is not None:
            raise ValueError(f"template: {problem} (sink {self.name or 'webhook'!r})")

    def __repr__(self) -> str:
        fields = msgspec.structs.asdict(self)
        fields["url"] = "***"
        fields["headers"] = {k: "***" for k in self.headers}
        return f"WebhookSinkConfig({', '.join(f'{k}={v!r}' for k, v in fields.items())})"


SinkConfig = (
    SqliteSinkConfig
    | JsonLinesSinkConfig
    | KafkaSinkConfig
    | PostgresSinkConfig
    | StdoutSinkConfig
    | NullSinkConfig
    | WebhookSinkConfig
)


def sink_name(sink: SinkConfig, *, dead_letter: bool = False, shed: bool = False) -> str:
    """A sink's name: its own, else ``dead_letter``, ``shed`` or its type."""
    if sink.name:
        return sink.name
    if dead_letter:
        return "dead_letter"
    return "shed" if shed else str(type(sink).__struct_config__.tag)
