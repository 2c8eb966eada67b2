"""Event-time windows: per-entity features over time, correct for late and out-of-order
events, with state that can be snapshotted per input partition.

The pure core, independent of the engine:

* :mod:`~headrace.windows.window`: :class:`Window` and the time unit (integer µs);
* :mod:`~headrace.windows.assigners`: tumbling, hopping, sliding and session windows;
* :mod:`~headrace.windows.aggregators`: the :class:`Aggregator` protocol and incremental,
  constant-memory aggregations;
* :mod:`~headrace.windows.features`: :class:`Features`, named aggregations of fields;
* :mod:`~headrace.windows.watermark`: per-partition and worker watermarks, idleness;
* :mod:`~headrace.windows.store`: one partition's open windows and when they close;
* :mod:`~headrace.windows.operator`: :class:`WindowOperator`, which puts them together.
"""

from headrace.windows.aggregators import (
    Aggregator,
    Count,
    CountsByType,
    DistinctCount,
    First,
    Last,
    LastN,
    Max,
    Mean,
    Min,
    Std,
    Sum,
)
from headrace.windows.assigners import Assigner, Hopping, Session, Sliding, Tumbling
from headrace.windows.features import Features
from headrace.windows.operator import Rejected, WindowOperator, WindowResult
from headrace.windows.watermark import Watermarks
from headrace.windows.window import Window, to_seconds, to_us

__all__ = [
    "Aggregator",
    "Assigner",
    "Count",
    "CountsByType",
    "DistinctCount",
    "Features",
    "First",
    "Hopping",
    "Last",
    "LastN",
    "Max",
    "Mean",
    "Min",
    "Rejected",
    "Session",
    "Sliding",
    "Std",
    "Sum",
    "Tumbling",
    "Watermarks",
    "Window",
    "WindowOperator",
    "WindowResult",
    "to_seconds",
    "to_us",
]
