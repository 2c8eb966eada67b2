"""What users import from Headrace: the names at the top level, one exception base, and
an ``import headrace`` that does not need the optional extras."""

from __future__ import annotations

import importlib
import inspect
import os
import pkgutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

import headrace
from headrace.errors import HeadraceError

PUBLIC = [
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

# Extras a user may not have installed: `import headrace` must load none of them.
OPTIONAL = ["confluent_kafka", "paho", "psycopg", "mlflow", "onnxruntime", "sklearn", "skops"]
# Core dependencies that only some runs need: the HTTP stack (a pipeline serving its
# dashboard, a webhook sink) and templates. Importing aiohttp adds ~15,000 objects that
# the garbage collector walks in every run (observe/api.py).
ON_USE = ["aiohttp", "jinja2"]


def modules() -> list[ModuleType]:
    """Every module of the package, but those whose optional dependency is missing."""
    found = [headrace]
    for info in pkgutil.walk_packages(headrace.__path__, "headrace."):
        try:
            found.append(importlib.import_module(info.name))
        except ModuleNotFoundError as exc:
            if (exc.name or "").startswith("headrace"):
                raise
    return found


def test_every_exception_headrace_defines_is_a_headrace_error() -> None:
    defined = {
        f"{module.__name__}.{name}": cls
        for module in modules()
        for name, cls in vars(module).items()
        if inspect.isclass(cls)
        and issubclass(cls, BaseException)
        and cls.__module__ == module.__name__
        and not name.startswith("_")
    }
    assert len(defined) > 20  # the walk found the package's modules
    outside = sorted(name for name, cls in defined.items() if not issubclass(cls, HeadraceError))
    assert outside == []


def test_headrace_errors_keep_their_builtin_base() -> None:
    """``except ValueError`` and the like still catch them."""
    from headrace.runtime.scoring import ModelTimeoutError

    assert issubclass(headrace.RegistryError, ValueError)
    assert issubclass(ModelTimeoutError, TimeoutError)
    assert issubclass(headrace.ModelLoadError, RuntimeError)


def test_the_public_names_are_these() -> None:
    """A name added here is a promise; a name removed breaks users' imports."""
    assert headrace.__all__ == PUBLIC
    assert sorted(PUBLIC) == PUBLIC


def test_every_public_name_is_there() -> None:
    for name in headrace.__all__:
        assert getattr(headrace, name) is not None, name
    assert set(headrace.__all__) <= set(dir(headrace))
    with pytest.raises(AttributeError, match="no attribute 'Engine'"):
        _ = headrace.Engine  # in headrace.runtime.engine, no longer at the top level


def test_import_headrace_loads_no_optional_extra() -> None:
    """The connectors that need one are imported when first used; so is the HTTP stack."""
    code = (
        "import sys, headrace, headrace.builder, headrace.cli\n"
        f"print(sorted(m for m in {OPTIONAL + ON_USE!r} if m in sys.modules))\n"
    )
    src = str(Path(headrace.__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": path},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.strip() == "[]"
