"""Priority lanes and load shedding: which records are scored first, and which may be set
aside, under an explicit policy, when the pipeline cannot keep up."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from headrace.errors import ErrorType, Stage, failure
from headrace.record import FailedRecord, Record


class Priorities:
    """Maps a record's priority field to a lane: 0 for the first (highest) level.

    Records without the field, or with a value that is not a level, go to the ``default``
    level.

    >>> p = Priorities("priority", ["high", "normal", "low"])
    >>> [p.lane_of({"priority": v}) for v in ("low", "high", "urgent")], p.lane_of(7)
    ([2, 0, 1], 1)
    """

    def __init__(
        self, field: str, levels: Sequence[str] = ("high", "normal", "low"), default: str = ""
    ) -> None:
        if len(levels) < 2:
            raise ValueError(f"priority levels need at least two names, got {list(levels)}")
        if len(set(levels)) != len(levels):
            raise ValueError(f"priority levels repeat a name: {list(levels)}")
        default = default or levels[len(levels) // 2]
        if default not in levels:
            raise ValueError(f"default priority {default!r} is not one of {list(levels)}")
        self.field = field
        self.levels = list(levels)
        self.default = self.levels.index(default)
        self._lanes = {name: i for i, name in enumerate(self.levels)}

    def lane_of(self, value: Any) -> int:
        if type(value) is dict:
            level = value.get(self.field)
            if level is not None:
                try:
                    return self._lanes.get(level, self.default)
                except TypeError:  # unhashable (a list, an object): not a level either
                    return self.default
        return self.default

    def split(self, records: Sequence[Record]) -> list[list[Record]]:
        """The records, by lane, each lane in input order."""
        lanes: list[list[Record]] = [[] for _ in self.levels]
        lane_of = self.lane_of
        for r in records:
            lanes[lane_of(r.value)].append(r)
        return lanes


@dataclass(frozen=True)
class ShedPolicy:
    """When records may be shed instead of scored. Each rule is off when ``None``.

    * ``in_flight_above``: a record of a sheddable lane that arrives while in-flight work
      is above this fraction of the flow bound is shed on arrival;
    * ``max_event_age``: a record of a sheddable lane whose event time is older than this
      many seconds when its batch is formed is shed instead of scored.

    The first lane (highest priority) is never sheddable.
    """

    lanes: frozenset[int]
    in_flight_above: float | None = None
    max_event_age: float | None = None

    def __post_init__(self) -> None:
        if 0 in self.lanes:
            raise ValueError("the highest priority level can never be shed")
        if self.in_flight_above is None and self.max_event_age is None:
            raise ValueError("a shedding policy needs in_flight_above or max_event_age")

    def on_arrival(self, lane: int, in_flight_fraction: float) -> str | None:
        """The reason to shed a record arriving now, or ``None`` to keep it."""
        limit = self.in_flight_above
        if limit is not None and lane in self.lanes and in_flight_fraction > limit:
            return f"in-flight work at {in_flight_fraction:.0%} of the bound, above {limit:.0%}"
        return None

    def too_old(
        self, records: Sequence[Record], lane_of: Any, now: float | None = None
    ) -> list[int]:
        """Indexes of the records past the event-age deadline (sheddable lanes only)."""
        deadline = self.max_event_age
        if deadline is None:
            return []
        cutoff = (time.time() if now is None else now) - deadline
        lanes = self.lanes
        return [
            i for i, r in enumerate(records) if r.event_time < cutoff and lane_of(r.value) in lanes
        ]


def shed(record: Record, reason: ErrorType, detail: str) -> FailedRecord:
    """A shed record, as the shed destination receives it: ``error_type`` is the reason
    (``shed-in-flight`` or ``shed-deadline``), ``error`` says by how much."""
    return failure(record, Stage.SHED, detail, reason)
