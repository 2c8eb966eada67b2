"""Sources and sinks."""

from headrace.connectors.base import Sink, Source
from headrace.connectors.files import JsonLinesSink, JsonLinesSource, NullSink, StdoutSink
from headrace.connectors.generator import GeneratorSource, SensorEvents
from headrace.connectors.sqlite import SqliteSink

__all__ = [
    "GeneratorSource",
    "JsonLinesSink",
    "JsonLinesSource",
    "NullSink",
    "SensorEvents",
    "Sink",
    "Source",
    "SqliteSink",
    "StdoutSink",
]
