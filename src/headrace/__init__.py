"""Headrace: streaming inference for Python.

The public API is what this module exports; everything else may change.
"""

from headrace.config import ConfigError, PipelineConfig, load_config
from headrace.connectors import (
    GeneratorSource,
    JsonLinesSink,
    JsonLinesSource,
    NullSink,
    SensorEvents,
    Sink,
    Source,
    SqliteSink,
    StdoutSink,
)
from headrace.connectors.kafka import KafkaProducer, KafkaSink, KafkaSource
from headrace.connectors.mqtt import MqttSource
from headrace.connectors.postgres import PostgresSink
from headrace.models import (
    CallableModel,
    Featurizer,
    Model,
    ModelLoadError,
    OnnxModel,
    SklearnModel,
    load_skops,
    sha256_of,
)
from headrace.pipeline import Pipeline
from headrace.record import FailedRecord, ModelRef, Position, Record, ScoredBatch, WindowRecord
from headrace.registry import (
    LocalRegistry,
    ModelValidationError,
    RegistryError,
    load_version,
    parse_reference,
    validate_model,
)
from headrace.registry.source import RegistrySource
from headrace.runtime.batcher import Batcher, MicroBatcher, OutputCountError
from headrace.runtime.decode import JsonDecoder
from headrace.runtime.delivery import (
    AtLeastOnce,
    Delivery,
    KafkaTransactions,
    PostgresTransactions,
)
from headrace.runtime.engine import Engine, EngineSettings, PipelineError, RunSummary
from headrace.runtime.flow import FlowControl
from headrace.runtime.manager import ModelManager, ModelSource, Probation
from headrace.runtime.offsets import OffsetTracker
from headrace.runtime.priority import Priorities, ShedPolicy
from headrace.runtime.scoring import (
    FailurePolicy,
    ModelTimeoutError,
    ModelUnavailableError,
)
from headrace.windows import (
    Aggregator,
    Count,
    CountsByType,
    DistinctCount,
    Features,
    First,
    Hopping,
    Last,
    LastN,
    Max,
    Mean,
    Min,
    Session,
    Sliding,
    Std,
    Sum,
    Tumbling,
    WindowOperator,
    WindowResult,
)
from headrace.windows.changelog import Changelog, KafkaChangelog, MemoryChangelog
from headrace.windows.stage import WindowStage

__version__ = "0.1.0"

__all__ = [
    "Aggregator",
    "AtLeastOnce",
    "Batcher",
    "CallableModel",
    "Changelog",
    "ConfigError",
    "Count",
    "CountsByType",
    "Delivery",
    "DistinctCount",
    "Engine",
    "EngineSettings",
    "FailedRecord",
    "FailurePolicy",
    "Features",
    "Featurizer",
    "First",
    "FlowControl",
    "GeneratorSource",
    "Hopping",
    "JsonDecoder",
    "JsonLinesSink",
    "JsonLinesSource",
    "KafkaChangelog",
    "KafkaProducer",
    "KafkaSink",
    "KafkaSource",
    "KafkaTransactions",
    "Last",
    "LastN",
    "LocalRegistry",
    "Max",
    "Mean",
    "MemoryChangelog",
    "MicroBatcher",
    "Min",
    "Model",
    "ModelLoadError",
    "ModelManager",
    "ModelRef",
    "ModelSource",
    "ModelTimeoutError",
    "ModelUnavailableError",
    "ModelValidationError",
    "MqttSource",
    "NullSink",
    "OffsetTracker",
    "OnnxModel",
    "OutputCountError",
    "Pipeline",
    "PipelineConfig",
    "PipelineError",
    "Position",
    "PostgresSink",
    "PostgresTransactions",
    "Priorities",
    "Probation",
    "Record",
    "RegistryError",
    "RegistrySource",
    "RunSummary",
    "ScoredBatch",
    "SensorEvents",
    "Session",
    "ShedPolicy",
    "Sink",
    "SklearnModel",
    "Sliding",
    "Source",
    "SqliteSink",
    "Std",
    "StdoutSink",
    "Sum",
    "Tumbling",
    "WindowOperator",
    "WindowRecord",
    "WindowResult",
    "WindowStage",
    "__version__",
    "load_config",
    "load_skops",
    "load_version",
    "parse_reference",
    "sha256_of",
    "validate_model",
]
