"""Sources and sinks."""

from headrace.connectors.base import DecodedSource, PartitionedSource, Sink, Source
from headrace.connectors.files import JsonLinesSink, JsonLinesSource, NullSink, StdoutSink
from headrace.connectors.generator import GeneratorSource, SensorEvents
from headrace.connectors.sqlite import SqliteSink

__all__ = [
    "DecodedSource",
    "GeneratorSource",
    "JsonLinesSink",
    "JsonLinesSource",
    "NullSink",
    "PartitionedSource",
    "SensorEvents",
    "Sink",
    "Source",
    "SqliteSink",
    "StdoutSink",
]
