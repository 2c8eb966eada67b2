"""The feature spec: extracting fields, absent and invalid values, results, serialisation."""

from __future__ import annotations

from typing import Any

import pytest

from headrace.windows.aggregators import Count, CountsByType, First, LastN, Max, Mean, Sum
from headrace.windows.features import Features, Invalid


def spec() -> Features:
    return Features(
        {
            "n": (None, Count()),
            "n_amount": ("amount", Count()),
            "total": ("amount", Sum()),
            "avg": ("amount", Mean()),
            "top": ("amount", Max()),
            "kinds": ("kind", CountsByType()),
            "first_kind": ("kind", First()),
            "recent": ("kind", LastN(2)),
        }
    )


def fill(f: Features, values: list[Any], start: int = 0) -> list[Any]:
    states = f.init()
    for at, v in enumerate(values, start):
        extracted = f.extract(v)
        assert isinstance(extracted, list), extracted
        f.add(states, extracted, at)
    return states


def run(f: Features, values: list[Any]) -> dict[str, Any]:
    return f.result(fill(f, values))


def test_results_come_in_declaration_order() -> None:
    out = run(spec(), [{"amount": 3, "kind": "a"}, {"amount": 5.5, "kind": "b"}])
    assert list(out) == ["n", "n_amount", "total", "avg", "top", "kinds", "first_kind", "recent"]
    assert out == {
        "n": 2,
        "n_amount": 2,
        "total": 8.5,
        "avg": 4.25,
        "top": 5.5,
        "kinds": {"a": 1, "b": 1, "other": 0},
        "first_kind": "a",
        "recent": ["a", "b"],
    }


def test_missing_and_null_fields_are_absent_not_zero() -> None:
    out = run(spec(), [{"amount": 4}, {"amount": None, "kind": "x"}, {}])
    assert out["n"] == 3  # records
    assert out["n_amount"] == 1  # records with the field
    assert out["avg"] == 4.0  # of the values present
    assert out["first_kind"] == "x"


@pytest.mark.parametrize(
    ("value", "message", "error_type"),
    [
        (
            {"amount": "12"},
            "feature 'total': field 'amount' holds '12', not a number",
            "wrong-type",
        ),
        ({"amount": [1]}, "not a number", "wrong-type"),
        ({"amount": float("nan")}, "holds nan, not a number", "wrong-type"),
        ("a string", "the record value is a string, not an object", "not-an-object"),
        (None, "the record value is null, not an object", "not-an-object"),
    ],
)
def test_values_a_numeric_feature_cannot_take_make_the_record_invalid(
    value: Any, message: str, error_type: str
) -> None:
    problem = spec().extract(value)
    assert isinstance(problem, Invalid) and message in problem.detail
    assert problem.error_type == error_type


def test_booleans_and_infinities_are_numbers() -> None:
    assert run(Features({"s": ("on", Sum())}), [{"on": True}, {"on": True}, {"on": False}]) == {
        "s": 2.0
    }
    assert run(Features({"m": ("x", Max())}), [{"x": float("inf")}]) == {"m": float("inf")}


def test_a_spec_of_whole_records_takes_any_value() -> None:
    f = Features({"n": (None, Count()), "last": (None, LastN(1))})
    assert run(f, ["a", 1, None]) == {"n": 2, "last": [1]}  # None is absent here too


def test_non_numeric_aggregators_take_anything() -> None:
    f = Features({"first": ("v", First())})
    assert run(f, [{"v": {"nested": [1, 2]}}]) == {"first": {"nested": [1, 2]}}


def test_merge_and_serialisation() -> None:
    f = spec()
    a = fill(f, [{"amount": 1, "kind": "a"}, {"amount": 2}])
    b = fill(f, [{"amount": 10, "kind": "c"}], start=5)
    merged = f.merge(f.load(f.dump(a)), f.load(f.dump(b)))
    assert f.result(merged)["total"] == 13.0
    assert f.result(merged)["recent"] == ["a", "c"]
    with pytest.raises(ValueError, match="the stored state has 1 features, this spec 8"):
        f.load([0])


def test_an_empty_spec_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one feature"):
        Features({})


def test_repr_lists_the_spec() -> None:
    assert repr(Features({"n": (None, Count())})) == "Features({'n': (None, Count())})"
