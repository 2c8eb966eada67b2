"""Incremental aggregations over a window: constant memory, mergeable, serialisable.

An :class:`Aggregator` never keeps a window's raw events. It folds each value into a small
state (:meth:`~Aggregator.add`), combines two states into the state of both
(:meth:`~Aggregator.merge`: session windows merge, sliding windows are built from per-event
panes), turns a state into the feature (:meth:`~Aggregator.result`) and into plain
msgpack-encodable data and back (:meth:`~Aggregator.dump`, :meth:`~Aggregator.load`), which
is what a snapshot (and the changelog) stores.

``add`` also receives the event time in milliseconds (``at``): :class:`First`, :class:`Last`
and :class:`LastN` order by it, everything else ignores it. Ties in event time go by
arrival: a later ``add`` is a later arrival, and ``merge(a, b)`` treats ``b``'s events as
arriving after ``a``'s.

Every aggregation here gives the same result whatever order its events arrive in and however
they are split and merged (up to float rounding for sums, means and deviations, which use
compensated arithmetic to keep that rounding tiny). That is what makes a streaming result
equal a batch recomputation.

>>> m = Mean()
>>> a = m.add(m.add(m.init(), 2, at=0), 4, at=1)
>>> b = m.add(m.init(), 9, at=2)
>>> m.result(m.merge(a, b))
5.0
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections.abc import Sequence
from operator import itemgetter
from typing import Any, Generic, Protocol, TypeVar, cast

from headrace.windows import hll

S = TypeVar("S")


class Aggregator(Protocol[S]):
    """The protocol every aggregation follows, built-in or user-defined.

    * ``init()``: the state of an empty window (a fresh object each call);
    * ``add(state, value, at)``: the state with ``value`` (event time ``at``, ms) added; may
      modify ``state`` in place and return it;
    * ``merge(a, b)``: the state of both windows' events, ``b``'s arriving after ``a``'s on
      ties; may modify and return ``a``, must leave ``b`` unchanged and share no mutable
      part of it with the result;
    * ``result(state)``: the feature value;
    * ``dump(state)`` / ``load(data)``: to and from data msgpack can encode.

    An aggregator that only takes numbers sets a class attribute ``numeric = True``; records
    whose field holds anything else are then rejected before any state changes.
    """

    def init(self) -> S: ...

    def add(self, state: S, value: Any, at: int) -> S: ...

    def merge(self, a: S, b: S) -> S: ...

    def result(self, state: S) -> Any: ...

    def dump(self, state: S) -> Any: ...

    def load(self, data: Any) -> S: ...


class _Plain(Generic[S]):
    """For states that are already msgpack data and come back from it unchanged."""

    def dump(self, state: S) -> Any:
        return state

    def load(self, data: Any) -> S:
        return cast(S, data)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Count(_Plain[int]):
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


def _neumaier(s: float, c: float, x: float) -> tuple[float, float]:
    """``s + x`` with the rounding error added to the compensation ``c`` (Neumaier's
    variant of Kahan summation): the total ``s + c`` stays within an ulp or so of the exact
    sum whatever the order, which is what lets a merged sum equal a sequential one."""
    t = s + x
    if abs(s) >= abs(x):
        c += (s - t) + x
    else:
        c += (x - t) + s
    return t, c


def _total(s: float, c: float) -> float:
    # Past an infinity the compensation is NaN (inf - inf); the infinite sum is the answer.
    return s + c if math.isfinite(s) else s


class Sum(_Plain[list[float]]):
    """The sum of the values, as a float (compensated: see :func:`_neumaier`).

    >>> s = Sum(); st = s.init()
    >>> for v in (0.1, 0.2, 0.3): st = s.add(st, v, 0)
    >>> s.result(st)
    0.6
    """

    numeric = True

    def init(self) -> list[float]:
        return [0.0, 0.0]

    def add(self, state: list[float], value: Any, at: int) -> list[float]:
        state[0], state[1] = _neumaier(state[0], state[1], float(value))
        return state

    def merge(self, a: list[float], b: list[float]) -> list[float]:
        s, c = _neumaier(a[0], a[1], b[0])
        a[0], a[1] = s, c + b[1]
        return a

    def result(self, state: list[float]) -> float:
        return _total(state[0], state[1])


class Mean(_Plain[list[float]]):
    """The arithmetic mean of the values; ``None`` for none. State: count, compensated sum.

    >>> m = Mean(); m.result(m.init()), m.result(m.add(m.init(), 3, 0))
    (None, 3.0)
    """

    numeric = True

    def init(self) -> list[float]:
        return [0, 0.0, 0.0]

    def add(self, state: list[float], value: Any, at: int) -> list[float]:
        state[0] += 1
        state[1], state[2] = _neumaier(state[1], state[2], float(value))
        return state

    def merge(self, a: list[float], b: list[float]) -> list[float]:
        s, c = _neumaier(a[1], a[2], b[1])
        a[0] += b[0]
        a[1], a[2] = s, c + b[2]
        return a

    def result(self, state: list[float]) -> float | None:
        return _total(state[1], state[2]) / state[0] if state[0] else None


class Min(_Plain[Any]):
    """The smallest value; ``None`` for none.

    >>> m = Min(); m.result(m.add(m.add(m.init(), 3, 0), -1.5, 0))
    -1.5
    """

    numeric = True

    def init(self) -> Any:
        return None

    def add(self, state: Any, value: Any, at: int) -> Any:
        return value if state is None or value < state else state

    def merge(self, a: Any, b: Any) -> Any:
        return b if a is None or (b is not None and b < a) else a

    def result(self, state: Any) -> Any:
        return state


class Max(_Plain[Any]):
    """The largest value; ``None`` for none.

    >>> m = Max(); m.result(m.add(m.add(m.init(), 3, 0), -1.5, 0))
    3
    """

    numeric = True

    def init(self) -> Any:
        return None

    def add(self, state: Any, value: Any, at: int) -> Any:
        return value if state is None or value > state else state

    def merge(self, a: Any, b: Any) -> Any:
        return b if a is None or (b is not None and b > a) else a

    def result(self, state: Any) -> Any:
        return state


class Std(_Plain[list[float]]):
    """The standard deviation of the values: the sample one by default (``ddof=1``, as
    pandas and SQL's ``STDDEV``), the population one with ``ddof=0``; ``None`` with no more
    than ``ddof`` values.

    Welford's update (count, mean, sum of squared deviations) adds a value without the
    cancellation of the textbook ``E[x²] - E[x]²``, and Chan et al.'s pairwise formula merges
    two states as exactly as if one had seen all the values.

    >>> s = Std(); st = s.init()
    >>> for v in (2, 4, 4, 4, 5, 5, 7, 9): st = s.add(st, v, 0)
    >>> round(s.result(st), 6), Std(ddof=0).result(st)
    (2.13809, 2.0)
    """

    numeric = True

    def __init__(self, ddof: int = 1) -> None:
        if ddof < 0:
            raise ValueError(f"ddof must be 0 or more, got {ddof}")
        self.ddof = ddof

    def init(self) -> list[float]:
        return [0, 0.0, 0.0]

    def add(self, state: list[float], value: Any, at: int) -> list[float]:
        x = float(value)
        n = state[0] + 1
        delta = x - state[1]
        mean = state[1] + delta / n
        state[0], state[1] = n, mean
        state[2] += delta * (x - mean)
        return state

    def merge(self, a: list[float], b: list[float]) -> list[float]:
        na, nb = a[0], b[0]
        if not nb:
            return a
        if not na:
            a[:] = b
            return a
        n = na + nb
        delta = b[1] - a[1]
        a[0] = n
        a[1] = a[1] + delta * (nb / n)
        a[2] = a[2] + b[2] + delta * delta * (na * nb / n)
        return a

    def result(self, state: list[float]) -> float | None:
        n = state[0]
        if n <= self.ddof:
            return None
        return math.sqrt(max(state[2], 0.0) / (n - self.ddof))

    def __repr__(self) -> str:
        return f"Std(ddof={self.ddof})"


class First(_Plain[list[Any] | None]):
    """The value of the earliest event (by event time; the earlier arrival on ties).

    >>> f = First(); st = f.init()
    >>> for at, v in ((5, "b"), (3, "a"), (3, "late tie")): st = f.add(st, v, at)
    >>> f.result(st)
    'a'
    """

    def init(self) -> list[Any] | None:
        return None

    def add(self, state: list[Any] | None, value: Any, at: int) -> list[Any] | None:
        return [at, value] if state is None or at < state[0] else state

    def merge(self, a: list[Any] | None, b: list[Any] | None) -> list[Any] | None:
        # States are replaced, never modified, so returning b shares nothing mutable.
        return b if a is None or (b is not None and b[0] < a[0]) else a

    def result(self, state: list[Any] | None) -> Any:
        return None if state is None else state[1]


class Last(_Plain[list[Any] | None]):
    """The value of the latest event (by event time; the later arrival on ties).

    >>> f = Last(); st = f.init()
    >>> for at, v in ((5, "b"), (3, "a"), (5, "late tie")): st = f.add(st, v, at)
    >>> f.result(st)
    'late tie'
    """

    def init(self) -> list[Any] | None:
        return None

    def add(self, state: list[Any] | None, value: Any, at: int) -> list[Any] | None:
        return [at, value] if state is None or at >= state[0] else state

    def merge(self, a: list[Any] | None, b: list[Any] | None) -> list[Any] | None:
        return b if a is None or (b is not None and b[0] >= a[0]) else a

    def result(self, state: list[Any] | None) -> Any:
        return None if state is None else state[1]


class LastN(_Plain[list[list[Any]]]):
    """The values of the latest ``n`` events, oldest first (by event time, then arrival):
    a sequence feature in at most ``n`` entries.

    >>> l = LastN(3); st = l.init()
    >>> for at, v in ((1, "a"), (4, "d"), (2, "b"), (3, "c"), (0, "too old")):
    ...     st = l.add(st, v, at)
    >>> l.result(st)
    ['b', 'c', 'd']
    """

    def __init__(self, n: int) -> None:
        if n < 1:
            raise ValueError(f"LastN needs n of at least 1, got {n}")
        self.n = n

    def init(self) -> list[list[Any]]:
        return []

    def add(self, state: list[list[Any]], value: Any, at: int) -> list[list[Any]]:
        # After every entry with the same time: a later arrival is later in the sequence.
        bisect.insort_right(state, [at, value], key=itemgetter(0))
        if len(state) > self.n:
            del state[0]
        return state

    def merge(self, a: list[list[Any]], b: list[list[Any]]) -> list[list[Any]]:
        # heapq.merge is stable: on equal times a's entries come first. Entries are never
        # modified, so sharing b's pairs is safe.
        merged = list(heapq.merge(a, b, key=itemgetter(0)))
        return merged[-self.n :]

    def result(self, state: list[list[Any]]) -> list[Any]:
        return [v for _, v in state]

    def __repr__(self) -> str:
        return f"LastN({self.n})"


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


class CountsByType(_Plain[list[Any]]):
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
