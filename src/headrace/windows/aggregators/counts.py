"""Aggregations that count: values, distinct values (exact, then a HyperLogLog sketch),
and values by type, all in bounded memory."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from headrace.windows import hll
from headrace.windows.aggregators.base import Plain


class Count(Plain[int]):
    """How many values (records, when the feature has no field).

    >>> c = Count(); c.result(c.add(c.add(c.init(), "x", 0), None, 0))
    2
    """

    def init(self) -> int:
        return 0

    def add(self, state: int, value: Any, at: int) -> int:
        return state + 1

    def merge(self, a: int, b: int) -> int:
        return a + b

    def result(self, state: int) -> int:
        return state


class DistinctCount:
    """How many distinct values: exact up to ``exact_up_to`` of them, a HyperLogLog
    estimate beyond (``2 ** precision`` one-byte registers, about ``1.04 / sqrt(2 **
    precision)`` relative error: 1.6 % at the default 12).

    Memory is bounded either way: at most ``exact_up_to`` 64-bit hashes, then the fixed
    sketch. The exact phase keeps hashes (:func:`hll.hash64`), not values, so the state is
    small and serialisable whatever the values are; two distinct values collide with
    probability about ``n² / 2**65`` (under 3e-14 for a thousand). Values are distinct when
    their msgpack encodings are: ``1`` and ``1.0`` count twice.

    >>> d = DistinctCount(exact_up_to=100); st = d.init()
    >>> for v in ["a", "b", "a", 3]: st = d.add(st, v, 0)
    >>> d.result(st)
    3
    """

    def __init__(self, exact_up_to: int = 1000, precision: int = 12) -> None:
        if exact_up_to < 0:
            raise ValueError(f"exact_up_to must be 0 or more, got {exact_up_to}")
        hll.registers(precision)  # validates the precision
        self.exact_up_to = exact_up_to
        self.precision = precision

    def init(self) -> set[int] | bytearray:
        return set()

    def _sketch(self, hashes: set[int]) -> bytearray:
        regs = hll.registers(self.precision)
        for h in hashes:
            hll.insert(regs, h)
        return regs

    def add(self, state: set[int] | bytearray, value: Any, at: int) -> set[int] | bytearray:
        h = hll.hash64(value)
        if isinstance(state, set):
            state.add(h)
            return self._sketch(state) if len(state) > self.exact_up_to else state
        hll.insert(state, h)
        return state

    def merge(self, a: set[int] | bytearray, b: set[int] | bytearray) -> set[int] | bytearray:
        if isinstance(a, set):
            if isinstance(b, set):
                a |= b
                return self._sketch(a) if len(a) > self.exact_up_to else a
            a = self._sketch(a)
        if isinstance(b, set):
            for h in b:
                hll.insert(a, h)
        else:
            hll.merge_into(a, b)
        return a

    def result(self, state: set[int] | bytearray) -> int:
        if isinstance(state, set):
            return len(state)
        return round(hll.estimate(state))

    def dump(self, state: set[int] | bytearray) -> Any:
        # Sorted so that equal states make equal snapshots.
        return sorted(state) if isinstance(state, set) else bytes(state)

    def load(self, data: Any) -> set[int] | bytearray:
        return set(data) if isinstance(data, list) else bytearray(data)

    def __repr__(self) -> str:
        return f"DistinctCount(exact_up_to={self.exact_up_to}, precision={self.precision})"


class CountsByType(Plain[list[Any]]):
    """How many events of each type (the field's value, as a string), in at most
    ``max_types`` counters plus ``other``.

    With ``types`` given, exactly those are counted (zero when absent) and everything else
    is ``other``: a fixed shape, what a model's feature vector wants. Without, the first
    ``max_types`` types *in string order* keep their own counter and the rest go to
    ``other``. String order rather than arrival order because it makes the result independent
    of arrival order and of merging: a type pushed out by a smaller one can never come back,
    so no count is ever split between its own counter and ``other``. The result always has the
    ``other`` entry; a real type with that name adds to it.

    >>> c = CountsByType(max_types=2); st = c.init()
    >>> for v in ["view", "click", "view", "buy", "click"]: st = c.add(st, v, 0)
    >>> c.result(st)
    {'buy': 1, 'click': 2, 'other': 2}
    >>> c = CountsByType(types=["click", "buy"]); st = c.init()
    >>> for v in ["view", "click"]: st = c.add(st, v, 0)
    >>> c.result(st)
    {'click': 1, 'buy': 0, 'other': 1}
    """

    def __init__(
        self, types: Sequence[str] | None = None, max_types: int = 32, other: str = "other"
    ) -> None:
        if max_types < 0:
            raise ValueError(f"max_types must be 0 or more, got {max_types}")
        self.types = list(types) if types is not None else None
        self._vocabulary = frozenset(self.types) if self.types is not None else None
        self.max_types = max_types
        self.other = other

    def init(self) -> list[Any]:
        return [{}, 0]  # counts by type, the count of all the others

    def add(self, state: list[Any], value: Any, at: int) -> list[Any]:
        kind = value if isinstance(value, str) else str(value)
        counts: dict[str, int] = state[0]
        if kind in counts:
            counts[kind] += 1
        elif self._vocabulary is not None:
            if kind in self._vocabulary:
                counts[kind] = 1
            else:
                state[1] += 1
        elif len(counts) < self.max_types:
            counts[kind] = 1
        else:
            largest = max(counts) if counts else None
            if largest is not None and kind < largest:
                state[1] += counts.pop(largest)
                counts[kind] = 1
            else:
                state[1] += 1
        return state

    def merge(self, a: list[Any], b: list[Any]) -> list[Any]:
        counts: dict[str, int] = a[0]
        for kind, n in b[0].items():
            counts[kind] = counts.get(kind, 0) + n
        a[1] += b[1]
        if self._vocabulary is None and len(counts) > self.max_types:
            for kind in sorted(counts)[self.max_types :]:
                a[1] += counts.pop(kind)
        return a

    def result(self, state: list[Any]) -> dict[str, int]:
        counts: dict[str, int] = state[0]
        if self.types is not None:
            out = {t: counts.get(t, 0) for t in self.types}
        else:
            out = {t: counts[t] for t in sorted(counts)}
        out[self.other] = out.get(self.other, 0) + state[1]
        return out

    def load(self, data: Any) -> list[Any]:
        return [dict(data[0]), data[1]]

    def __repr__(self) -> str:
        if self.types is not None:
            return f"CountsByType(types={self.types!r}, other={self.other!r})"
        return f"CountsByType(max_types={self.max_types}, other={self.other!r})"
