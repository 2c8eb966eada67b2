"""A chunk of records kept as columns: what a source that holds its events as arrays hands
the engine, so that the hot path never builds an object per record.

A :class:`RecordBatch` is a read-only sequence of :class:`~headrace.record.Record` s, so
every part of the engine takes it as it takes a list; the parts on the hot path read its
columns instead: the offset tracker one run per batch (:func:`~headrace.runtime.offsets.runs`),
the featurizer the feature arrays (:meth:`~headrace.models.featurizer.Featurizer.from_columns`),
the latency histogram the event times. Records are built only when a part asks for one
(a sink that writes JSON, a dead letter, a window), once per batch, and kept: asked
again, the batch gives the same objects.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from itertools import chain
from typing import Any, overload

import numpy as np

from headrace.record import Record, source_record

# Builds the values of a batch's records from its columns, keys, offsets and event times
# (called once per batch, and only if a part asks for records).
ValuesFrom = Callable[["RecordBatch"], list[Any]]


class RecordBatch(Sequence[Record]):
    """Consecutive records of one partition, as columns.

    ``offsets`` is a ``range`` (step 1): the batch holds ``topic[partition]`` offsets
    ``offsets.start .. offsets.stop - 1``. ``keys`` and ``event_times`` hold one item per
    record; ``columns`` the decoded fields a source already holds as arrays (one row per
    record; a vector field as a 2-D array), which the featurizer reads directly; and
    ``values_from`` builds the records' values from them when records are asked for.

    >>> import numpy as np
    >>> b = RecordBatch(topic="t", partition=0, offsets=range(10, 13), keys=["a", "b", "c"],
    ...                 event_times=np.array([1.0, 2.0, 3.0]),
    ...                 columns={"x": np.array([0.5, 1.5, 2.5])},
    ...                 values_from=lambda b: [{"x": x} for x in b.columns["x"].tolist()])
    >>> len(b), b[1]
    (3, Record(key='b', topic='t', partition=0, offset=11, event_time=2.0))
    >>> tail = b[1:]
    >>> tail.offsets, tail.columns["x"].tolist(), tail[0].value
    (range(11, 13), [1.5, 2.5], {'x': 1.5})
    >>> b[2] is b[2]
    True
    """

    __slots__ = (
        "_records",
        "columns",
        "event_times",
        "keys",
        "offsets",
        "partition",
        "topic",
        "values_from",
    )

    def __init__(
        self,
        *,
        topic: str,
        partition: int,
        offsets: range,
        keys: Sequence[Any],
        event_times: np.ndarray,
        columns: Mapping[str, np.ndarray],
        values_from: ValuesFrom,
    ) -> None:
        n = len(offsets)
        if offsets.step != 1:
            raise ValueError(f"a batch's offsets are consecutive, got {offsets}")
        if len(keys) != n or len(event_times) != n:
            raise ValueError(
                f"a batch of {n} offsets needs {n} keys and event times, "
                f"got {len(keys)} and {len(event_times)}"
            )
        for name, column in columns.items():
            if len(column) != n:
                raise ValueError(f"column {name!r} has {len(column)} rows for {n} offsets")
        self.topic = topic
        self.partition = partition
        self.offsets = offsets
        self.keys = keys
        self.event_times = event_times
        self.columns = columns
        self.values_from = values_from
        self._records: list[Record] | None = None

    def __len__(self) -> int:
        return len(self.offsets)

    @overload
    def __getitem__(self, index: int) -> Record: ...

    @overload
    def __getitem__(self, index: slice) -> RecordBatch: ...

    def __getitem__(self, index: int | slice) -> Record | RecordBatch:
        if isinstance(index, slice):
            return self._slice(index)
        return self.records()[index]

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records())

    def __repr__(self) -> str:
        return (
            f"RecordBatch(topic={self.topic!r}, partition={self.partition}, "
            f"offsets={self.offsets}, columns={sorted(self.columns)})"
        )

    @property
    def materialized(self) -> bool:
        """Whether its records were built (a part asked for one)."""
        return self._records is not None

    def records(self) -> list[Record]:
        """The records, built on the first call (with their values) and kept."""
        if self._records is None:
            values = self.values_from(self)
            if len(values) != len(self):
                raise ValueError(
                    f"values_from gave {len(values)} values for the {len(self)} records of "
                    f"{self.topic}[{self.partition}] offsets {self.offsets.start}.."
                    f"{self.offsets.stop - 1}"
                )
            topic, partition = self.topic, self.partition
            self._records = [
                source_record(
                    key=k, value=v, event_time=t, topic=topic, partition=partition, offset=o
                )
                for k, v, t, o in zip(
                    self.keys, values, self.event_times.tolist(), self.offsets, strict=True
                )
            ]
        return self._records

    def _slice(self, index: slice) -> RecordBatch:
        lo, hi, step = index.indices(len(self))
        if step != 1:
            raise ValueError("a batch is sliced in order, without a step")
        hi = max(lo, hi)
        part = RecordBatch(
            topic=self.topic,
            partition=self.partition,
            offsets=self.offsets[lo:hi],
            keys=self.keys[lo:hi],
            event_times=self.event_times[lo:hi],
            columns={name: column[lo:hi] for name, column in self.columns.items()},
            values_from=self.values_from,
        )
        if self._records is not None:  # the same record objects in the part
            part._records = self._records[lo:hi]
        return part

    def follows(self, before: RecordBatch) -> bool:
        """Whether this batch continues ``before``: the same partition, the next offsets,
        the same columns and way to build values (so the two join into one batch)."""
        return (
            self.partition == before.partition
            and self.topic == before.topic
            and self.offsets.start == before.offsets.stop
            and self.values_from is before.values_from
            and self.columns.keys() == before.columns.keys()
        )


def join(pieces: Sequence[Sequence[Record]]) -> Sequence[Record]:
    """One sequence of the records of ``pieces``, in order: one :class:`RecordBatch` where
    each piece is a batch that continues the one before it, else a list.

    >>> import numpy as np
    >>> def nothing(b):
    ...     return [None] * len(b)
    >>> def part(lo, hi):
    ...     return RecordBatch(topic="t", partition=0, offsets=range(lo, hi),
    ...                        keys=[None] * (hi - lo), event_times=np.zeros(hi - lo),
    ...                        columns={}, values_from=nothing)
    >>> join([part(0, 2), part(2, 5)]).offsets
    range(0, 5)
    >>> [r.offset for r in join([part(0, 2), part(3, 4)])]
    [0, 1, 3]
    """
    if len(pieces) == 1:
        return pieces[0]
    batches = _continuous(pieces)
    if batches is not None:
        first = batches[0]
        joined = RecordBatch(
            topic=first.topic,
            partition=first.partition,
            offsets=range(first.offsets.start, batches[-1].offsets.stop),
            keys=list(chain.from_iterable(b.keys for b in batches)),
            event_times=np.concatenate([b.event_times for b in batches]),
            columns={
                name: np.concatenate([b.columns[name] for b in batches]) for name in first.columns
            },
            values_from=first.values_from,
        )
        if any(b.materialized for b in batches):
            joined._records = [r for b in batches for r in b.records()]
        return joined
    out: list[Record] = []
    for piece in pieces:
        out.extend(piece)
    return out


def _continuous(pieces: Sequence[Sequence[Record]]) -> list[RecordBatch] | None:
    """The pieces, if each is a batch that continues the one before it."""
    batches: list[RecordBatch] = []
    for piece in pieces:
        if not isinstance(piece, RecordBatch) or (batches and not piece.follows(batches[-1])):
            return None
        batches.append(piece)
    return batches
