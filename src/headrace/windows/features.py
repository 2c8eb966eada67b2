"""A window's features: named aggregations of record fields.

:class:`Features` maps each output name to ``(field, aggregator)``. A window's state is one
aggregator state per feature, in declaration order; its result is a dictionary from the
names to the aggregators' results, which is what the model scores.

A record whose field is missing or ``None`` is *absent* for that feature and leaves it
unchanged (``Mean`` of the values present, ``Count`` of the records that have the field); a
field of ``None`` takes the whole record value (``("n", (None, Count()))`` counts records).
A field holding something a numeric aggregator cannot take (a string for ``Sum``, a NaN)
makes the whole record invalid: :meth:`Features.extract` says why, and no state is touched.

>>> from headrace.windows.aggregators import Count, Max, Mean
>>> f = Features({"n": (None, Count()), "avg": ("amount", Mean()), "top": ("amount", Max())})
>>> st = f.init()
>>> for v in ({"amount": 10}, {"amount": 20}, {"other": 1}):
...     st = f.add(st, f.extract(v), at=0)
>>> f.result(st)
{'n': 3, 'avg': 15.0, 'top': 20}
>>> bad = f.extract({"amount": "ten"}); bad.error_type.value, bad.detail
('wrong-type', "feature 'avg': field 'amount' holds 'ten', not a number")
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

from headrace.errors import ErrorType, json_kind
from headrace.windows.aggregators import Aggregator


class Invalid(NamedTuple):
    """Why a record cannot be placed in a window: an error type and the details."""

    error_type: ErrorType
    detail: str


def not_an_object(value: Any) -> Invalid:
    return Invalid(
        ErrorType.NOT_AN_OBJECT, f"the record value is {json_kind(value)}, not an object"
    )


def _is_number(value: Any) -> bool:
    t = type(value)
    if t is float:
        return not math.isnan(value)  # NaN would poison min/max and every sum after it
    if t is int or t is bool:  # a flag sums to how often it was set: what one wants
        return True
    if isinstance(value, float):  # subclasses (numpy.float64)
        return not math.isnan(value)
    return isinstance(value, int)


class Features:
    """The feature spec: ``{name: (field or None, aggregator)}``, in output order."""

    def __init__(self, spec: Mapping[str, tuple[str | None, Aggregator[Any]]]) -> None:
        if not spec:
            raise ValueError("a window needs at least one feature")
        self.names = list(spec)
        self.fields = [field for field, _ in spec.values()]
        self.aggregators = [agg for _, agg in spec.values()]
        # Each distinct field is read and checked once per record, however many features
        # use it (a spec typically has several aggregations of one amount).
        self._distinct: list[str | None] = list(dict.fromkeys(self.fields))
        slot = {field: i for i, field in enumerate(self._distinct)}
        self._adders = [(i, agg.add, slot[f]) for i, (f, agg) in enumerate(spec.values())]
        numeric: dict[str | None, str] = {}  # field -> the first numeric feature using it
        for name, (field, agg) in spec.items():
            if getattr(agg, "numeric", False):
                numeric.setdefault(field, name)
        self._checks = [(slot[f], f, name) for f, name in numeric.items()]
        self._needs_object = any(field is not None for field in self.fields)

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        inner = ", ".join(
            f"{n!r}: ({f!r}, {a!r})"
            for n, f, a in zip(self.names, self.fields, self.aggregators, strict=True)
        )
        return f"Features({{{inner}}})"

    def extract(self, value: Any) -> list[Any] | Invalid:
        """The record's value of each field the spec reads (``None`` where absent), for
        :meth:`add`; or why the record cannot be added."""
        if not self._needs_object:
            return [value]
        if not isinstance(value, dict):
            return not_an_object(value)
        get = value.get
        out = [value if f is None else get(f) for f in self._distinct]
        for i, field, name in self._checks:
            v = out[i]
            if v is not None and not _is_number(v):
                return Invalid(
                    ErrorType.WRONG_TYPE,
                    f"feature {name!r}: field {field!r} holds {v!r}, not a number",
                )
        return out

    def init(self) -> list[Any]:
        return [agg.init() for agg in self.aggregators]

    def add(self, states: list[Any], values: list[Any], at: int) -> list[Any]:
        """Fold one record's values (from :meth:`extract`) into ``states`` (in place;
        returned)."""
        for i, add, slot in self._adders:
            v = values[slot]
            if v is not None:
                states[i] = add(states[i], v, at)
        return states

    def merge(self, a: list[Any], b: list[Any]) -> list[Any]:
        """The states of both windows, ``b``'s events arriving after ``a``'s on ties (may
        modify ``a``, leaves ``b`` alone)."""
        for i, agg in enumerate(self.aggregators):
            a[i] = agg.merge(a[i], b[i])
        return a

    def result(self, states: list[Any]) -> dict[str, Any]:
        return {
            name: agg.result(st)
            for name, agg, st in zip(self.names, self.aggregators, states, strict=True)
        }

    def dump(self, states: list[Any]) -> list[Any]:
        return [agg.dump(st) for agg, st in zip(self.aggregators, states, strict=True)]

    def from_ms(self, data: list[Any]) -> list[Any]:
        """Dumped states of version 1 state, whose event times were milliseconds, with them
        in microseconds: what each aggregator's optional ``from_ms`` makes of its part (the
        ones that keep no time have none)."""
        if len(data) != len(self.aggregators):
            raise ValueError(
                f"the stored state has {len(data)} features, this spec {len(self.aggregators)}"
            )
        out = []
        for agg, d in zip(self.aggregators, data, strict=True):
            convert = getattr(agg, "from_ms", None)
            out.append(d if convert is None else convert(d))
        return out

    def load(self, data: list[Any]) -> list[Any]:
        if len(data) != len(self.aggregators):
            raise ValueError(
                f"the stored state has {len(data)} features, this spec {len(self.aggregators)}"
            )
        return [agg.load(d) for agg, d in zip(self.aggregators, data, strict=True)]
