"""Turning decoded JSON values into the numeric matrix a model takes."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from headrace.errors import ErrorType, RecordError, json_kind


class FeatureError(RecordError):
    """One record's value cannot be turned into features; ``error_type`` says why."""


class Featurizer:
    """Maps named fields of each JSON object to one row of a float matrix.

    ``fields`` are scalar fields, in order; ``vector`` names a field holding a list of
    numbers, appended after them. Booleans count as 0 and 1; strings and nulls are not
    numbers, and a value with one is rejected, as is NaN or infinity unless ``allow_nan``.

    >>> f = Featurizer(fields=["a"], vector="v")
    >>> x, failures = f.transform([{"a": 1, "v": [2.0, 3.0]}, {"a": "x", "v": [1, 2]}])
    >>> x.tolist(), [(i, e.error_type.value, str(e)) for i, e in failures]
    ([[1.0, 2.0, 3.0]], [(1, 'wrong-type', "field 'a' must be a number, got a string")])
    """

    def __init__(
        self,
        fields: Sequence[str] = (),
        vector: str | None = None,
        *,
        dtype: npt.DTypeLike = np.float32,
        allow_nan: bool = False,
    ) -> None:
        if not fields and vector is None:
            raise ValueError("a featurizer needs fields, a vector field, or both")
        self.fields = tuple(fields)
        self.vector = vector
        self.dtype = np.dtype(dtype)
        self.allow_nan = allow_nan
        self._width: int | None = len(self.fields) if vector is None else None
        # Larger finite floats become infinity in the matrix.
        self._max = float(np.finfo(self.dtype).max) if self.dtype.kind == "f" else math.inf

    def transform(self, values: Sequence[Any]) -> tuple[np.ndarray, list[tuple[int, FeatureError]]]:
        """The feature matrix of the valid values, and (index, why) for each invalid one."""
        try:
            x = self._fast(values)
        except (KeyError, TypeError, ValueError, IndexError):
            x = None
        if x is not None:
            if self.allow_nan:
                return x, []
            finite = np.isfinite(x).all(axis=1)
            if finite.all():
                return x, []
            # The row-by-row check names the field and tells NaN from a number too large
            # for the matrix's type, so a record gets the same error in any batch.
            return x[finite], [(i, self._why(values[i])) for i in np.flatnonzero(~finite).tolist()]
        return self._slow(values)

    def from_columns(self, columns: Mapping[str, np.ndarray]) -> np.ndarray | None:
        """The feature matrix of a batch held as columns (a
        :class:`~headrace.batch.RecordBatch`): its fields as 1-D numeric arrays, its vector
        as a 2-D one, all finite (unless ``allow_nan``); ``None`` where they are not, and
        the records' values say which is wrong (:meth:`transform`).

        >>> f = Featurizer(fields=["a"], vector="v")
        >>> f.from_columns({"a": np.array([1, 2]), "v": np.array([[0.5, 1.0], [2.0, 3.0]])})
        array([[1. , 0.5, 1. ],
               [2. , 2. , 3. ]], dtype=float32)
        >>> f.from_columns({"v": np.array([[0.5, 1.0]])}) is None  # no column 'a'
        True
        """
        parts: list[np.ndarray] = []
        for name in self.fields:
            column = columns.get(name)
            if column is None or column.ndim != 1 or column.dtype.kind not in "biuf":
                return None
            parts.append(column[:, None])
        if self.vector is not None:
            column = columns.get(self.vector)
            if column is None or column.ndim != 2 or column.dtype.kind not in "biuf":
                return None
            parts.append(column)
        x = (parts[0] if len(parts) == 1 else np.hstack(parts)).astype(self.dtype)
        if self._width is not None and x.shape[1] != self._width:
            return None
        if not self.allow_nan and not np.isfinite(x).all():
            return None
        self._width = x.shape[1]
        return x

    def _fast(self, values: Sequence[Any]) -> np.ndarray | None:
        fields, vector = self.fields, self.vector
        if vector is None:
            rows: list[Any] = [[v[f] for f in fields] for v in values]
        elif not fields:
            rows = [v[vector] for v in values]
        else:
            rows = [[*(v[f] for f in fields), *v[vector]] for v in values]
        # Without a dtype, NumPy reveals strings, nulls and ragged rows (non-numeric kinds)
        # instead of silently converting "1.5" to 1.5.
        arr = np.array(rows)
        if arr.ndim != 2 or arr.dtype.kind not in "fiu" or len(arr) != len(values):
            return None
        if self._width is None:
            self._width = arr.shape[1]
        elif arr.shape[1] != self._width:
            return None
        return arr.astype(self.dtype, copy=False)

    def _slow(self, values: Sequence[Any]) -> tuple[np.ndarray, list[tuple[int, FeatureError]]]:
        rows: list[list[float]] = []
        failures: list[tuple[int, FeatureError]] = []
        for i, value in enumerate(values):
            try:
                rows.append(self.row(value))
            except FeatureError as exc:
                failures.append((i, exc))
        width = self._width or 0
        x = np.array(rows, dtype=self.dtype) if rows else np.empty((0, width), self.dtype)
        return x, failures

    def _why(self, value: Any) -> FeatureError:
        try:
            self.row(value)
        except FeatureError as exc:
            return exc
        return FeatureError("features contain NaN or infinity", ErrorType.NON_FINITE)

    def row(self, value: Any) -> list[float]:
        """One value's features, or a :class:`FeatureError` saying what is wrong."""
        if not isinstance(value, dict):
            raise FeatureError(
                f"expected a JSON object, got {json_kind(value)}", ErrorType.NOT_AN_OBJECT
            )
        row = [self._number(value, f) for f in self.fields]
        if self.vector is not None:
            if self.vector not in value:
                raise FeatureError(f"missing field {self.vector!r}", ErrorType.MISSING_FIELD)
            vec = value[self.vector]
            if not isinstance(vec, list):
                raise FeatureError(
                    f"field {self.vector!r} must be a list of numbers, got {json_kind(vec)}",
                    ErrorType.WRONG_TYPE,
                )
            for j, item in enumerate(vec):
                row.append(self._check(item, f"{self.vector}[{j}]"))
        if self._width is not None and len(row) != self._width:
            raise FeatureError(
                f"expected {self._width} features, got {len(row)}", ErrorType.WRONG_SHAPE
            )
        self._width = len(row)
        return row

    def _number(self, value: dict[str, Any], field: str) -> float:
        if field not in value:
            raise FeatureError(f"missing field {field!r}", ErrorType.MISSING_FIELD)
        return self._check(value[field], field)

    def _check(self, item: Any, where: str) -> float:
        if not isinstance(item, int | float):
            raise FeatureError(
                f"field {where!r} must be a number, got {json_kind(item)}", ErrorType.WRONG_TYPE
            )
        try:
            number = float(item)
        except OverflowError:  # a JSON integer has no size limit
            raise FeatureError(
                f"field {where!r} is too large for a float", ErrorType.OUT_OF_RANGE
            ) from None
        if not self.allow_nan:
            if not math.isfinite(number):
                raise FeatureError(f"field {where!r} is NaN or infinity", ErrorType.NON_FINITE)
            if abs(number) > self._max:
                raise FeatureError(
                    f"field {where!r} is too large for {self.dtype.name}", ErrorType.OUT_OF_RANGE
                )
        return number
