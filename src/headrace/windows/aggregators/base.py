"""The protocol every window aggregation follows, and the base of those whose state is
plain msgpack data (see :mod:`headrace.windows.aggregators` for what they promise)."""

from __future__ import annotations

from typing import Any, Generic, Protocol, TypeVar, cast

S = TypeVar("S")


class Aggregator(Protocol[S]):
    """The protocol every aggregation follows, built-in or user-defined.

    * ``init()``: the state of an empty window (a fresh object each call);
    * ``add(state, value, at)``: the state with ``value`` (event time ``at``, µs) added; may
      modify ``state`` in place and return it;
    * ``merge(a, b)``: the state of both windows' events, ``b``'s arriving after ``a``'s on
      ties; may modify and return ``a``, must leave ``b`` unchanged and share no mutable
      part of it with the result;
    * ``result(state)``: the feature value;
    * ``dump(state)`` / ``load(data)``: to and from data msgpack can encode.

    An aggregator that only takes numbers sets a class attribute ``numeric = True``; records
    whose field holds anything else are then rejected before any state changes.

    An aggregator whose dumped state keeps event times (``at``) defines ``from_ms(data)``:
    the dumped data of a version 1 snapshot, where they were milliseconds, with them in
    microseconds (see :class:`First`). Without it such data is restored unchanged.
    """

    def init(self) -> S: ...

    def add(self, state: S, value: Any, at: int) -> S: ...

    def merge(self, a: S, b: S) -> S: ...

    def result(self, state: S) -> Any: ...

    def dump(self, state: S) -> Any: ...

    def load(self, data: Any) -> S: ...


class Plain(Generic[S]):
    """For states that are already msgpack data and come back from it unchanged."""

    def dump(self, state: S) -> Any:
        return state

    def load(self, data: Any) -> S:
        return cast(S, data)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
