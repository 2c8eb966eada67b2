"""The schema of a pipeline's components: its source, its model, its sinks and its lookups
(``enrich``). Each is a
union whose ``type:`` key picks the class; adding a type is a class here and an entry in
its union (and a builder in :mod:`headrace.build`)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec

from headrace.config.base import (
    REF,
    SQLITE_TABLE,
    TABLE,
    Fraction,
    NonNegative,
    Port,
    Positive,
    Section,
    Sha256,
)

if TYPE_CHECKING:
    from headrace.connectors.mqtt_tls import MqttTls

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


class MqttTlsConfig(Section, kw_only=True):
    """TLS for an ``mqtt`` source: ``tls: {}`` trusts the system's CAs. The files are
    checked when the configuration loads: that they exist, are PEM, and that the key fits
    the certificate."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure_skip_verify: bool = False

    def __post_init__(self) -> None:
        from headrace.connectors.mqtt_tls import tls_context

        # Raises with the key first ("cert_file: ..."): the message names source.tls.KEY.
        tls_context(self.settings())

    def settings(self) -> MqttTls:
        from headrace.connectors.mqtt_tls import MqttTls

        return MqttTls(
            ca_file=self.ca_file,
            cert_file=self.cert_file,
            key_file=self.key_file,
            insecure_skip_verify=self.insecure_skip_verify,
        )


class MqttSourceConfig(Section, kw_only=True, tag="mqtt", tag_field="type"):
    """MQTT topic filters read in a persistent session (``client_id`` names it); a message
    is acknowledged only once it reached a terminal state. ``port`` defaults to 8883 with
    ``tls`` and 1883 without. ``username`` and ``password`` come from the environment
    (``${VAR}``, checked before interpolation) and are never shown. See docs/mqtt.md."""

    topics: Annotated[list[str], msgspec.Meta(min_length=1)]
    client_id: Annotated[str, msgspec.Meta(min_length=1)]
    host: str = "127.0.0.1"
    # Once loaded: never None (8883 with tls, else 1883).
    port: Port | None = None
    tls: MqttTlsConfig | None = None
    transport: Literal["tcp", "websockets"] = "tcp"
    ws_path: str | None = None
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
        from headrace.connectors.mqtt_tls import PLAIN_PORT, TLS_PORT
        from headrace.connectors.mqtt_topics import topic_filter_problem

        for i, t in enumerate(self.topics):
            problem = topic_filter_problem(t)
            if problem is not None:  # "key: ..." names the key (config/messages.py)
                raise ValueError(f"topics: topic filter {t!r} (entry {i}): {problem}")
        if self.qos == 2:
            raise ValueError(
                "qos: qos 2 is refused: the client confirms a QoS 2 message on receipt and "
                "keeps it only in memory, so a crash loses it; use 1 (at-least-once) or 0"
            )
        if self.ws_path is not None:
            if self.transport != "websockets":
                raise ValueError("ws_path: goes with `transport: websockets`; leave it out")
            if not self.ws_path.startswith("/"):
                raise ValueError("ws_path: must start with / (e.g. /mqtt)")
        if self.port is None:
            self.port = TLS_PORT if self.tls is not None else PLAIN_PORT

    def __repr__(self) -> str:
        fields = msgspec.structs.asdict(self)
        for key in ("username", "password"):
            if fields[key] is not None:
                fields[key] = "***"
        return f"MqttSourceConfig({', '.join(f'{k}={v!r}' for k, v in fields.items())})"


SourceConfig = GeneratorSourceConfig | JsonLinesSourceConfig | KafkaSourceConfig | MqttSourceConfig

# -- models ----------------------------------------------------------------------------


class FeaturesConfig(Section, kw_only=True):
    """Which fields of each event make the model's input row."""

    fields: list[str] = msgspec.field(default_factory=list)
    vector: str | None = None
    allow_nan: bool = False


#: Where a model runs: ``cuda`` is refused at load when the runtime or the GPU is missing.
Device = Literal["cpu", "cuda"]
#: What a boosted-tree model gives: the objective's output (a probability, a value), or
#: the raw margin before the objective's transformation.
TreeOutput = Literal["value", "raw_margin"]


class OnnxModelConfig(Section, kw_only=True, tag="onnx", tag_field="type"):
    name: str
    version: str
    path: str
    sha256: Sha256
    output: str | None = None
    threads: Positive | None = None
    device: Device = "cpu"
    features: FeaturesConfig | None = None


class XGBoostModelConfig(Section, kw_only=True, tag="xgboost", tag_field="type"):
    """An XGBoost ``Booster.save_model`` file (``.ubj`` or ``.json``; never a pickle).
    ``pip install 'headrace[xgboost]'``."""

    name: str
    version: str
    path: str
    sha256: Sha256
    output: TreeOutput = "value"
    threads: Positive | None = None
    device: Device = "cpu"
    features: FeaturesConfig | None = None


class LightGBMModelConfig(Section, kw_only=True, tag="lightgbm", tag_field="type"):
    """A LightGBM ``Booster.save_model`` text file (never a pickle).
    ``pip install 'headrace[lightgbm]'``. LightGBM predicts on the CPU only."""

    name: str
    version: str
    path: str
    sha256: Sha256
    output: TreeOutput = "value"
    threads: Positive | None = None
    device: Device = "cpu"
    features: FeaturesConfig | None = None

    def __post_init__(self) -> None:
        if self.device != "cpu":
            raise ValueError(
                "device: cuda is not supported for lightgbm: LightGBM predicts on the CPU only "
                "(its GPU builds speed up training, not prediction); use device: cpu"
            )


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
    local registry's directory. ``device`` applies to the onnx, xgboost and torch formats
    (``cuda`` is refused for the others when a version loads)."""

    ref: Annotated[str, msgspec.Meta(pattern=REF)]
    root: str = "model-registry"
    tracking_uri: str | None = None
    allow_pickle: bool = False
    latency_budget_ms: Annotated[float, msgspec.Meta(gt=0)] | None = None
    device: Device = "cpu"
    features: FeaturesConfig | None = None

    @property
    def name(self) -> str:
        return self.ref.split(":", 1)[1].replace("/", "@").split("@", 1)[0]

    @property
    def version(self) -> str:
        return self.ref.replace("/", "@").rsplit("@", 1)[1]


ModelConfig = (
    OnnxModelConfig
    | XGBoostModelConfig
    | LightGBMModelConfig
    | SkopsModelConfig
    | CallableModelConfig
    | RegistryModelConfig
)

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
    table: Annotated[str, msgspec.Meta(pattern=SQLITE_TABLE)] = "predictions"
    failures_table: Annotated[str, msgspec.Meta(pattern=SQLITE_TABLE)] = "dead_letters"
    # windowed pipelines
    windows_table: Annotated[str, msgspec.Meta(pattern=SQLITE_TABLE)] = "window_scores"
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


# -- lookups (enrich) ------------------------------------------------------------------

# A name the featurizer reads as `INTO.FIELD`, a column or a hash field: no dot in it.
FIELD_NAME = r"^[^.\s]+$"
COLUMN = r"^[A-Za-z_][A-Za-z0-9_]{0,62}$"


class LookupCacheConfig(Section, kw_only=True):
    """The TTL cache in front of a lookup's store: found values and absent keys alike."""

    ttl_s: Annotated[float, msgspec.Meta(gt=0)] = 60.0
    max_entries: Positive = 100_000


class _LookupSection(Section, kw_only=True):
    name: Annotated[str, msgspec.Meta(min_length=1)]
    key_field: str
    into: Annotated[str, msgspec.Meta(pattern=FIELD_NAME)] | None = None
    fields: (
        Annotated[
            list[Annotated[str, msgspec.Meta(pattern=FIELD_NAME)]], msgspec.Meta(min_length=1)
        ]
        | None
    ) = None
    default: dict[str, Any] | None = None
    cache: LookupCacheConfig | None = msgspec.field(default_factory=LookupCacheConfig)
    timeout_ms: Annotated[float, msgspec.Meta(gt=0)] = 5000.0


class RedisLookupConfig(_LookupSection, kw_only=True, tag="redis", tag_field="type"):
    """Values in Redis at ``key_prefix`` + the event's key: JSON objects in string keys
    (``kind: json``, one MGET per batch) or hashes (``kind: hash``, HMGET of ``fields`` or
    HGETALL, pipelined). ``url`` comes from the environment and is never printed."""

    url: str
    key_prefix: str = ""
    kind: Literal["json", "hash"] = "json"

    def __post_init__(self) -> None:
        # Never the URL itself in the message: it may hold a password.
        if not self.url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("url: expected a redis://, rediss:// or unix:// URL")

    def __repr__(self) -> str:
        fields = msgspec.structs.asdict(self)
        fields["url"] = "***"
        return f"RedisLookupConfig({', '.join(f'{k}={v!r}' for k, v in fields.items())})"


class PostgresLookupConfig(_LookupSection, kw_only=True, tag="postgres", tag_field="type"):
    """Rows of ``table`` whose ``key_column`` equals the event's key (one SELECT ... WHERE
    key = ANY(...) per batch); ``fields`` are the columns (default: all). ``dsn`` comes
    from the environment and is never printed."""

    dsn: str
    table: Annotated[str, msgspec.Meta(pattern=TABLE)]
    key_column: Annotated[str, msgspec.Meta(pattern=COLUMN)]

    def __post_init__(self) -> None:
        for f in self.fields or ():
            if not re.fullmatch(COLUMN, f):
                raise ValueError(f"fields: {f!r} is not a column name (letters, digits, _)")

    def __repr__(self) -> str:
        fields = msgspec.structs.asdict(self)
        fields["dsn"] = "***"
        return f"PostgresLookupConfig({', '.join(f'{k}={v!r}' for k, v in fields.items())})"


LookupConfig = RedisLookupConfig | PostgresLookupConfig
