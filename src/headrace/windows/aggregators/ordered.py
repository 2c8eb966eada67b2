"""Aggregations by event time: the first value, the last, the last ``n``. Their states
keep the time (µs) of each value they hold; ties go by arrival."""

from __future__ import annotations

import bisect
import heapq
from operator import itemgetter
from typing import Any

from headrace.windows.aggregators.base import Plain


class First(Plain[list[Any] | None]):
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

    def from_ms(self, data: list[Any] | None) -> list[Any] | None:
        """A dumped state with its time in ms (version 1 state), in µs.

        >>> First().from_ms([1500, "a"]), First().from_ms(None)
        ([1500000, 'a'], None)
        """
        return None if data is None else [data[0] * 1000, data[1]]


class Last(Plain[list[Any] | None]):
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

    def from_ms(self, data: list[Any] | None) -> list[Any] | None:
        """A dumped state with its time in ms (version 1 state), in µs."""
        return None if data is None else [data[0] * 1000, data[1]]


class LastN(Plain[list[list[Any]]]):
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

    def from_ms(self, data: list[list[Any]]) -> list[list[Any]]:
        """A dumped state with its times in ms (version 1 state), in µs."""
        return [[at * 1000, v] for at, v in data]

    def __repr__(self) -> str:
        return f"LastN({self.n})"
