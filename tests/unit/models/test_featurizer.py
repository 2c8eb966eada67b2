"""The featurizer: JSON values to a float matrix, rejecting bad records one by one."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headrace.models import FeatureError, Featurizer


def test_fields_make_columns_in_order() -> None:
    """Named scalar fields become the columns, in the order given, as float32."""
    f = Featurizer(fields=["b", "a"])
    x, failures = f.transform([{"a": 1, "b": 2.5, "other": "ignored"}, {"a": -3, "b": 0}])
    assert failures == []
    assert x.dtype == np.float32
    assert x.tolist() == [[2.5, 1.0], [0.0, -3.0]]


def test_vector_field_makes_the_row() -> None:
    """A vector field's numbers are the whole row when no scalar fields are named."""
    x, failures = Featurizer(vector="v").transform([{"v": [1, 2, 3]}, {"v": [4.5, 5, 6]}])
    assert failures == []
    assert x.tolist() == [[1.0, 2.0, 3.0], [4.5, 5.0, 6.0]]


def test_fields_then_vector() -> None:
    """With both, the scalar fields come first and the vector is appended."""
    f = Featurizer(fields=["a"], vector="v")
    x, failures = f.transform([{"a": 9, "v": [1, 2]}, {"v": [3, 4], "a": 8}])
    assert failures == []
    assert x.tolist() == [[9.0, 1.0, 2.0], [8.0, 3.0, 4.0]]


def test_dtype_is_configurable() -> None:
    """A float64 featurizer keeps full precision."""
    x, _ = Featurizer(fields=["a"], dtype=np.float64).transform([{"a": 0.1}])
    assert x.dtype == np.float64 and x[0, 0] == 0.1


def test_needs_fields_or_vector() -> None:
    """A featurizer with nothing to read is a construction error."""
    with pytest.raises(ValueError, match="needs fields"):
        Featurizer()


def test_booleans_count_as_zero_and_one() -> None:
    """true/false are 1/0, alone (all-boolean batch) or mixed with numbers."""
    f = Featurizer(fields=["a", "b"], vector="v")
    x, failures = f.transform([{"a": True, "b": False, "v": [True]}])
    assert failures == [] and x.tolist() == [[1.0, 0.0, 1.0]]
    x, failures = f.transform([{"a": True, "b": 2.5, "v": [False]}, {"a": 3, "b": 4, "v": [5]}])
    assert failures == [] and x.tolist() == [[1.0, 2.5, 0.0], [3.0, 4.0, 5.0]]


def why(failures: list[tuple[int, FeatureError]]) -> list[tuple[int, str, str]]:
    return [(i, exc.error_type, str(exc)) for i, exc in failures]


@pytest.mark.parametrize(
    ("bad", "reason", "error_type"),
    [
        ({"a": "1.5", "v": [1, 2]}, "field 'a' must be a number, got a string", "wrong-type"),
        ({"a": None, "v": [1, 2]}, "field 'a' must be a number, got null", "wrong-type"),
        ({"a": [1], "v": [1, 2]}, "field 'a' must be a number, got an array", "wrong-type"),
        ({"a": {"x": 1}, "v": [1, 2]}, "field 'a' must be a number, got an object", "wrong-type"),
        ({"v": [1, 2]}, "missing field 'a'", "missing-field"),
        ({"a": 1}, "missing field 'v'", "missing-field"),
        ({"a": 1, "v": [1, 2, 3]}, "expected 3 features, got 4", "wrong-shape"),
        ({"a": 1, "v": [1]}, "expected 3 features, got 2", "wrong-shape"),
        ({"a": 1, "v": "12"}, "field 'v' must be a list of numbers, got a string", "wrong-type"),
        (
            {"a": 1, "v": {"x": 1, "y": 2}},
            "field 'v' must be a list of numbers, got an object",
            "wrong-type",
        ),
        ({"a": 1, "v": 7}, "field 'v' must be a list of numbers, got a number", "wrong-type"),
        ({"a": 1, "v": None}, "field 'v' must be a list of numbers, got null", "wrong-type"),
        ({"a": 1, "v": [1, "2"]}, "field 'v[1]' must be a number, got a string", "wrong-type"),
        ({"a": 1, "v": [None, 2]}, "field 'v[0]' must be a number, got null", "wrong-type"),
        ({"a": 1, "v": [[1], 2]}, "field 'v[0]' must be a number, got an array", "wrong-type"),
        ([1, 2, 3], "expected a JSON object, got an array", "not-an-object"),
        ("text", "expected a JSON object, got a string", "not-an-object"),
        (42, "expected a JSON object, got a number", "not-an-object"),
        (None, "expected a JSON object, got null", "not-an-object"),
    ],
)
def test_bad_record_is_rejected_with_a_reason(bad: Any, reason: str, error_type: str) -> None:
    """Each kind of bad value fails only its own record, with a reason that says why; the
    valid records around it still come out, in order."""
    f = Featurizer(fields=["a"], vector="v")
    good = [{"a": 1, "v": [2, 3]}, {"a": 4, "v": [5, 6]}, {"a": 7, "v": [8, 9]}]
    x, failures = f.transform([good[0], good[1], bad, good[2]])
    assert why(failures) == [(2, error_type, reason)]
    assert x.tolist() == [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]]


def test_every_record_bad_gives_an_empty_matrix_of_the_right_width() -> None:
    """A batch with no valid record yields a (0, width) matrix, not a crash."""
    f = Featurizer(fields=["a", "b"])
    x, failures = f.transform([{"a": "x", "b": 1}, None])
    assert x.shape == (0, 2) and x.dtype == np.float32
    assert [i for i, _ in failures] == [0, 1]


def test_empty_batch() -> None:
    """No values, no rows, no failures."""
    x, failures = Featurizer(fields=["a"]).transform([])
    assert x.shape == (0, 1) and failures == []


def test_vector_width_is_fixed_by_the_first_batch() -> None:
    """The width learned from the first valid rows holds for later batches, so a model
    never sees a row of a different width."""
    f = Featurizer(vector="v")
    x, _ = f.transform([{"v": [1, 2, 3]}])
    assert x.shape == (1, 3)
    x, failures = f.transform([{"v": [1, 2]}, {"v": [4, 5, 6]}, {"v": [1, 2, 3, 4]}])
    assert x.tolist() == [[4.0, 5.0, 6.0]]
    assert why(failures) == [
        (0, "wrong-shape", "expected 3 features, got 2"),
        (2, "wrong-shape", "expected 3 features, got 4"),
    ]


def test_ragged_vectors_within_a_batch() -> None:
    """In a fresh featurizer, the first row sets the width and ragged rows after it fail."""
    x, failures = Featurizer(vector="v").transform([{"v": [1, 2]}, {"v": [3]}, {"v": [4, 5]}])
    assert x.tolist() == [[1.0, 2.0], [4.0, 5.0]]
    assert why(failures) == [(1, "wrong-shape", "expected 2 features, got 1")]


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_nan_and_infinity_are_rejected(value: float) -> None:
    """NaN and infinities fail their record, whether the batch is otherwise all numeric
    (vectorised path) or also holds a non-numeric record (per-record path)."""
    f = Featurizer(fields=["a"], vector="v")
    batch: list[Any] = [{"a": 1, "v": [1.0]}, {"a": 2, "v": [value]}, {"a": 3, "v": [3.0]}]
    x, failures = f.transform(batch)
    assert x.tolist() == [[1.0, 1.0], [3.0, 3.0]]
    assert why(failures) == [(1, "non-finite", "field 'v[0]' is NaN or infinity")]

    x, failures = f.transform([*batch, {"a": "x", "v": [1.0]}])
    assert x.tolist() == [[1.0, 1.0], [3.0, 3.0]]
    assert why(failures) == [
        (1, "non-finite", "field 'v[0]' is NaN or infinity"),
        (3, "wrong-type", "field 'a' must be a number, got a string"),
    ]


def test_a_number_too_large_for_float32_gets_the_same_error_in_any_batch() -> None:
    """1e39 is a finite JSON number and infinity as float32: the vectorised path and the
    per-record path give it the same error type and message."""
    f = Featurizer(fields=["a"])
    _, alone = f.transform([{"a": 1e39}, {"a": 1}])
    _, mixed = f.transform([{"a": 1e39}, {"a": "x"}])
    expected = (0, "out-of-range", "field 'a' is too large for float32")
    assert why(alone) == [expected] and why(mixed)[0] == expected


def test_nan_allowed_when_asked() -> None:
    """allow_nan passes NaN and infinity through to the model."""
    f = Featurizer(fields=["a", "b"], allow_nan=True)
    x, failures = f.transform([{"a": math.nan, "b": math.inf}, {"a": 1, "b": 2}])
    assert failures == []
    assert np.isnan(x[0, 0]) and np.isposinf(x[0, 1]) and x[1].tolist() == [1.0, 2.0]
    x, failures = f.transform([{"a": math.nan, "b": -math.inf}, {"a": None, "b": 2}])
    assert [i for i, _ in failures] == [1]
    assert np.isnan(x[0, 0]) and np.isneginf(x[0, 1])


def test_integer_too_large_for_a_float_is_rejected() -> None:
    """JSON integers have no size limit; one beyond float range fails its record instead of
    raising out of the whole batch."""
    f = Featurizer(fields=["a"])
    x, failures = f.transform([{"a": 1}, {"a": 10**400}, {"a": 2}])
    assert x.tolist() == [[1.0], [2.0]]
    assert why(failures) == [(1, "out-of-range", "field 'a' is too large for a float")]


def test_row_raises_feature_error() -> None:
    """The per-record API says what is wrong with a FeatureError."""
    f = Featurizer(fields=["a"])
    assert f.row({"a": 2}) == [2.0]
    with pytest.raises(FeatureError, match="missing field 'a'"):
        f.row({"b": 2})


# -- property: valid rows out in order, invalid indices reported -----------------------------

WIDTH = 3  # the vector's length; rows are [a, b, *v]

numbers = (
    st.floats(min_value=-1e30, max_value=1e30, allow_nan=False)
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.booleans()
)
not_numbers = (
    st.text(max_size=3)
    | st.none()
    | st.sampled_from([math.nan, math.inf, -math.inf, 10**400])
    | st.lists(numbers, max_size=2)
    | st.dictionaries(st.text(max_size=2), numbers, max_size=1)
)
valid = st.fixed_dictionaries(
    {"a": numbers, "b": numbers, "v": st.lists(numbers, min_size=WIDTH, max_size=WIDTH)},
    optional={"extra": st.text(max_size=2)},
)


@st.composite
def invalid(draw: st.DrawFn) -> Any:
    value = dict(draw(valid))
    kind = draw(st.sampled_from(["scalar", "missing", "length", "vector", "item", "object"]))
    if kind == "scalar":
        value[draw(st.sampled_from(["a", "b"]))] = draw(not_numbers)
    elif kind == "missing":
        del value[draw(st.sampled_from(["a", "b", "v"]))]
    elif kind == "length":
        n = draw(st.integers(0, 6).filter(lambda n: n != WIDTH))
        value["v"] = draw(st.lists(numbers, min_size=n, max_size=n))
    elif kind == "vector":
        value["v"] = draw(
            st.text(max_size=4)
            | st.none()
            | numbers
            | st.dictionaries(st.text(max_size=1), numbers, max_size=3)
        )
    elif kind == "item":
        i = draw(st.integers(0, WIDTH - 1))
        value["v"] = [*value["v"][:i], draw(not_numbers), *value["v"][i + 1 :]]
    else:
        return draw(st.lists(numbers, max_size=3) | st.text(max_size=3) | numbers | st.none())
    return value


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.data()), max_size=25), st.data())
def test_property_valid_rows_in_order_and_failures_are_the_invalid_inputs(
    flags: list[tuple[bool, Any]], data: st.DataObject
) -> None:
    """For any mix of valid and invalid records, the matrix is exactly the valid records'
    rows in input order, and the failure indices are exactly the invalid records."""
    values = [data.draw(valid if ok else invalid()) for ok, _ in flags]
    f = Featurizer(fields=["a", "b"], vector="v")
    f.transform([{"a": 0, "b": 0, "v": [0] * WIDTH}])  # fix the width, as a first batch would
    x, failures = f.transform(values)
    expected = [[v["a"], v["b"], *v["v"]] for (ok, _), v in zip(flags, values, strict=True) if ok]
    np.testing.assert_array_equal(x, np.array(expected, dtype=np.float32).reshape(-1, 2 + WIDTH))
    assert [i for i, _ in failures] == [i for i, (ok, _) in enumerate(flags) if not ok]
    assert all(isinstance(exc, FeatureError) and str(exc) for _, exc in failures)
