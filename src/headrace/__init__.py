"""Headrace: streaming inference for Python.

The public API is what this module exports, and :mod:`headrace.testing` for tests of your
own pipelines; everything else may change. The connectors that need an optional extra
(Kafka, MQTT, PostgreSQL) are imported when first used, so that ``import headrace`` works,
and stays fast, without them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from headrace.batch import RecordBatch
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
from headrace.errors import ErrorType, HeadraceError, Stage
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
from headrace.record import FailedRecord, Record, ScoredBatch
from headrace.registry import LocalRegistry, RegistryError, parse_reference
from headrace.registry.source import RegistrySource
from headrace.runtime.batcher import OutputCountError
from headrace.runtime.decode import JsonDecoder
from headrace.runtime.delivery import KafkaTransactions, PostgresTransactions
from headrace.runtime.engine import EngineSettings, PipelineError, RunSummary
from headrace.runtime.manager import ModelSource, Probation
from headrace.runtime.microbatcher import MicroBatcher
from headrace.runtime.priority import Priorities, ShedPolicy
from headrace.runtime.scoring import FailurePolicy
from headrace.windows import (
    Aggregator,
    Count,
    CountsByType,
    DistinctCount,
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
)
from headrace.windows.changelog import KafkaChangelog

if TYPE_CHECKING:
    from headrace.connectors.kafka import KafkaProducer, KafkaSink, KafkaSource
    from headrace.connectors.mqtt import MqttSource
    from headrace.connectors.postgres import PostgresSink
    from headrace.connectors.webhook import WebhookSink

__version__ = "0.1.0"

# Imported on first use (see __getattr__): each needs an optional extra at run time.
_LAZY = {
    "KafkaProducer": "headrace.connectors.kafka",
    "KafkaSink": "headrace.connectors.kafka",
    "KafkaSource": "headrace.connectors.kafka",
    "MqttSource": "headrace.connectors.mqtt",
    "PostgresSink": "headrace.connectors.postgres",
    "WebhookSink": "headrace.connectors.webhook",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'headrace' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups find it without coming here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "Aggregator",
    "CallableModel",
    "ConfigError",
    "Count",
    "CountsByType",
    "DistinctCount",
    "EngineSettings",
    "ErrorType",
    "FailedRecord",
    "FailurePolicy",
    "Featurizer",
    "First",
    "GeneratorSource",
    "HeadraceError",
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
    "MicroBatcher",
    "Min",
    "Model",
    "ModelLoadError",
    "ModelSource",
    "MqttSource",
    "NullSink",
    "OnnxModel",
    "OutputCountError",
    "Pipeline",
    "PipelineConfig",
    "PipelineError",
    "PostgresSink",
    "PostgresTransactions",
    "Priorities",
    "Probation",
    "Record",
    "RecordBatch",
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
    "Stage",
    "Std",
    "StdoutSink",
    "Sum",
    "Tumbling",
    "WebhookSink",
    "WindowOperator",
    "__version__",
    "load_config",
    "load_skops",
    "parse_reference",
    "sha256_of",
]
