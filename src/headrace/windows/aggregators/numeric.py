"""Aggregations of numbers: sum, mean, minimum, maximum, standard deviation.

Sums and means use compensated (Neumaier) summation, the deviation Welford's update
and Chan et al.'s merge, so that a merged result equals a sequential one up to an ulp or
so, whatever the order of the values and however they were split.
"""

from __future__ import annotations

import math
from typing import Any

from headrace.windows.aggregators.base import Plain


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


class Sum(Plain[list[float]]):
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


class Mean(Plain[list[float]]):
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


class Min(Plain[Any]):
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


class Max(Plain[Any]):
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


class Std(Plain[list[float]]):
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
