"""The YAML configuration: its schema, how it is read, and the errors a mistake gets.

Every section is a strict schema: an unknown key is an error, a wrong type names the key
and what was expected. Strings may name environment variables as ``${NAME}`` (or
``${NAME:-default}``), which is how secrets and per-run values come in without being
written into the file. Relative paths are relative to the current directory.

One concern per module: :mod:`~headrace.config.components` and
:mod:`~headrace.config.schema` are the schema, :mod:`~headrace.config.load` reads a file,
:mod:`~headrace.config.instance` settles a Kafka source's instance id (from the file, the
environment or the hostname), :mod:`~headrace.config.rules` checks what spans keys,
:mod:`~headrace.config.messages` rewrites msgspec's messages. Import from here: the split
is not part of the API.
"""

from headrace.config.base import (
    ConfigError,
    Fraction,
    NonNegative,
    Port,
    Positive,
    Seconds,
    Sha256,
)
from headrace.config.components import (
    CallableModelConfig,
    FeaturesConfig,
    FilterConfig,
    GeneratorSourceConfig,
    JsonLinesSinkConfig,
    JsonLinesSourceConfig,
    KafkaSinkConfig,
    KafkaSourceConfig,
    ModelConfig,
    MqttSourceConfig,
    NullSinkConfig,
    OnnxModelConfig,
    PostgresSinkConfig,
    RegistryModelConfig,
    SinkConfig,
    SkopsModelConfig,
    SourceConfig,
    SqliteSinkConfig,
    StdoutSinkConfig,
    WebhookBatchConfig,
    WebhookSinkConfig,
    sink_name,
)
from headrace.config.load import interpolate, load_config, parse_config
from headrace.config.messages import explain
from headrace.config.rules import check
from headrace.config.schema import (
    AdminConfig,
    Aggregation,
    BatchingConfig,
    CanaryConfig,
    ChangelogConfig,
    FailuresConfig,
    FlowConfig,
    KafkaConfig,
    KafkaValue,
    MetricsConfig,
    PipelineConfig,
    PriorityConfig,
    ProbationConfig,
    RuntimeConfig,
    ShadowConfig,
    SheddingConfig,
    UpdatesConfig,
    WindowFeatureConfig,
    WindowsConfig,
)

__all__ = [
    "AdminConfig",
    "Aggregation",
    "BatchingConfig",
    "CallableModelConfig",
    "CanaryConfig",
    "ChangelogConfig",
    "ConfigError",
    "FailuresConfig",
    "FeaturesConfig",
    "FilterConfig",
    "FlowConfig",
    "Fraction",
    "GeneratorSourceConfig",
    "JsonLinesSinkConfig",
    "JsonLinesSourceConfig",
    "KafkaConfig",
    "KafkaSinkConfig",
    "KafkaSourceConfig",
    "KafkaValue",
    "MetricsConfig",
    "ModelConfig",
    "MqttSourceConfig",
    "NonNegative",
    "NullSinkConfig",
    "OnnxModelConfig",
    "PipelineConfig",
    "Port",
    "Positive",
    "PostgresSinkConfig",
    "PriorityConfig",
    "ProbationConfig",
    "RegistryModelConfig",
    "RuntimeConfig",
    "Seconds",
    "Sha256",
    "ShadowConfig",
    "SheddingConfig",
    "SinkConfig",
    "SkopsModelConfig",
    "SourceConfig",
    "SqliteSinkConfig",
    "StdoutSinkConfig",
    "UpdatesConfig",
    "WebhookBatchConfig",
    "WebhookSinkConfig",
    "WindowFeatureConfig",
    "WindowsConfig",
    "check",
    "explain",
    "interpolate",
    "load_config",
    "parse_config",
    "sink_name",
]
