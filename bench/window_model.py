"""The windowed reference workload's feature spec and model, shared by ``bench/windows.py``
(its baseline loop and its restore measurement) and the Headrace pipelines it starts (as
``bench.window_model:score``).

Eight aggregates per (entity, 10 s window): the record count, and of ``value`` the sum,
mean, min, max, sample standard deviation and last value (by event time), plus the counts
by ``type`` (three known types and ``other``). The model is cheap on purpose: a few
arithmetic operations per window, so that what is measured is the windowing around it.
"""

from __future__ import annotations

from typing import Any

from headrace.windows import Count, CountsByType, Last, Max, Mean, Min, Std, Sum
from headrace.windows.aggregators import Aggregator

TYPES = ("reading", "heartbeat", "alarm")


def features() -> dict[str, tuple[str | None, Aggregator[Any]]]:
    """The eight aggregates, as :class:`~headrace.windows.WindowOperator` takes them."""
    return {
        "events": (None, Count()),
        "total": ("value", Sum()),
        "mean": ("value", Mean()),
        "min": ("value", Min()),
        "max": ("value", Max()),
        "std": ("value", Std()),
        "last": ("value", Last()),
        "types": ("type", CountsByType(types=list(TYPES))),
    }


FEATURES_YAML = """\
    events: {agg: count}
    total: {agg: sum, field: value}
    mean: {agg: mean, field: value}
    min: {agg: min, field: value}
    max: {agg: max, field: value}
    std: {agg: std, field: value}
    last: {agg: last, field: value}
    types: {agg: counts_by_type, field: type, types: [reading, heartbeat, alarm]}"""


def score(windows: list[dict[str, Any]]) -> list[float]:
    """How far each window's last value strays from its mean, in standard deviations
    (damped), plus ten times its share of alarms.

    >>> score([{"events": 4, "mean": 10.0, "std": 1.0, "last": 12.0,
    ...         "types": {"reading": 3, "heartbeat": 0, "alarm": 1, "other": 0}}])
    [3.5]
    """
    out = []
    for w in windows:
        std = w["std"] or 0.0
        z = abs(w["last"] - w["mean"]) / (std + 1.0)
        alarms = w["types"]["alarm"] / w["events"]
        out.append(round(z + 10.0 * alarms, 6))
    return out
