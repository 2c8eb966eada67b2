"""Priority lanes and the shedding policy."""

from __future__ import annotations

import time
from typing import Any

import pytest

from headrace.errors import ErrorType
from headrace.record import Record
from headrace.runtime.priority import Priorities, ShedPolicy, shed


def rec(value: Any, *, offset: int = 0, event_time: float | None = None) -> Record:
    return Record(
        key=None,
        value=value,
        event_time=time.time() if event_time is None else event_time,
        topic="t",
        partition=0,
        offset=offset,
    )


# -- Priorities ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("levels", "default", "message"),
    [
        (["only"], "", "at least two names"),
        ([], "", "at least two names"),
        (["a", "b", "a"], "", "repeat a name"),
        (["a", "b"], "c", "default priority 'c' is not one of"),
    ],
)
def test_invalid_priorities_are_rejected(levels: list[str], default: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Priorities("priority", levels, default)


def test_levels_map_to_lanes_in_order() -> None:
    p = Priorities("prio", ["urgent", "high", "normal", "low"], default="low")
    assert [p.lane_of({"prio": v}) for v in ("urgent", "high", "normal", "low")] == [0, 1, 2, 3]
    assert p.default == 3


@pytest.mark.parametrize(
    ("levels", "default_lane"), [(["a", "b"], 1), (["a", "b", "c"], 1), (list("abcd"), 2)]
)
def test_the_default_level_is_the_middle_one_unless_named(
    levels: list[str], default_lane: int
) -> None:
    assert Priorities("p", levels).default == default_lane


@pytest.mark.parametrize(
    "value",
    [
        {},  # no field
        {"priority": None},
        {"priority": "urgent"},  # not a level
        {"priority": "HIGH"},  # levels are case-sensitive
        {"priority": 0},
        {"priority": ["high"]},  # unhashable: still just "not a level"
        {"priority": {"level": "high"}},
        {"other": "high"},
        "high",  # a value that is not an object
        ["high"],
        None,
        7,
    ],
)
def test_anything_that_is_not_a_level_goes_to_the_default(value: Any) -> None:
    p = Priorities("priority", ["high", "normal", "low"], default="low")
    assert p.lane_of(value) == 2


def test_split_sorts_records_into_lanes_keeping_input_order() -> None:
    p = Priorities("priority", ["high", "normal", "low"])
    values = ["low", "high", None, "low", "high", "normal", "bogus"]
    rs = [rec({"priority": v} if v else {}, offset=i) for i, v in enumerate(values)]
    lanes = p.split(rs)
    assert [[r.offset for r in lane] for lane in lanes] == [[1, 4], [2, 5, 6], [0, 3]]
    assert [len(lane) for lane in p.split([])] == [0, 0, 0]


# -- ShedPolicy ----------------------------------------------------------------------------


def test_the_first_lane_can_never_be_shed() -> None:
    with pytest.raises(ValueError, match="highest priority level can never be shed"):
        ShedPolicy(frozenset({0, 2}), in_flight_above=0.5)


def test_a_policy_needs_a_rule() -> None:
    with pytest.raises(ValueError, match="in_flight_above or max_event_age"):
        ShedPolicy(frozenset({1}))


def test_on_arrival_sheds_only_sheddable_lanes_strictly_above_the_fraction() -> None:
    policy = ShedPolicy(frozenset({2}), in_flight_above=0.5)
    assert policy.on_arrival(2, 0.5) is None  # at the limit: kept
    reason = policy.on_arrival(2, 0.75)
    assert reason is not None and "75%" in reason and "50%" in reason
    assert policy.on_arrival(1, 0.99) is None  # not a sheddable lane
    assert policy.on_arrival(0, 5.0) is None  # the first lane, never
    assert policy.on_arrival(2, 0.1) is None


def test_on_arrival_is_off_without_in_flight_above() -> None:
    policy = ShedPolicy(frozenset({1, 2}), max_event_age=1.0)
    assert policy.on_arrival(2, 10.0) is None


def test_too_old_picks_records_past_the_deadline_in_sheddable_lanes() -> None:
    p = Priorities("priority", ["high", "normal", "low"])
    policy = ShedPolicy(frozenset({1, 2}), max_event_age=10.0)
    now = 1_000.0
    rs = [
        rec({"priority": "low"}, event_time=now - 11),  # old, sheddable
        rec({"priority": "high"}, event_time=now - 100),  # old, but never shed
        rec({"priority": "normal"}, event_time=now - 5),  # fresh
        rec({}, event_time=now - 10),  # exactly at the deadline: kept
        rec({}, event_time=now - 10.5),  # default lane (normal), old
    ]
    assert policy.too_old(rs, p.lane_of, now=now) == [0, 4]


def test_too_old_uses_the_clock_and_is_off_without_a_deadline() -> None:
    policy = ShedPolicy(frozenset({1}), max_event_age=30.0)
    rs = [rec({}, event_time=time.time() - 60), rec({}, event_time=time.time())]
    assert policy.too_old(rs, lambda _v: 1) == [0]
    assert ShedPolicy(frozenset({1}), in_flight_above=0.5).too_old(rs, lambda _v: 1) == []


def test_shed_makes_a_failed_record_with_the_reason_as_error_type() -> None:
    r = rec({"x": 1}, offset=9)
    f = shed(r, ErrorType.SHED_DEADLINE, "event age 12s beyond the deadline of 10s")
    assert f.record is r
    assert (f.stage, f.error_type, f.error) == (
        "shed",
        "shed-deadline",
        "event age 12s beyond the deadline of 10s",
    )
    assert f.to_dict()["stage"] == "shed"
