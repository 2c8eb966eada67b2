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

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from itertools import chain
from typing import Any, cast, overload

import numpy as np

from headrace.record import Record, ScoredBatch, encode_columns, source_record

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
    ``raws``, where the records were read as bytes (Kafka), holds each one's bytes as read:
    the records built get them as ``raw``, and a sink that writes inputs as read takes
    them from here.

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
        "raws",
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
        raws: Sequence[bytes] | None = None,
    ) -> None:
        n = len(offsets)
        if offsets.step != 1:
            raise ValueError(f"a batch's offsets are consecutive, got {offsets}")
        if len(keys) != n or len(event_times) != n:
            raise ValueError(
                f"a batch of {n} offsets needs {n} keys and event times, "
                f"got {len(keys)} and {len(event_times)}"
            )
        if raws is not None and len(raws) != n:
            raise ValueError(f"a batch of {n} offsets needs {n} raws, got {len(raws)}")
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
        self.raws = raws
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
            topic, partition, raws = self.topic, self.partition, self.raws
            self._records = [
                source_record(
                    key=k,
                    value=v,
                    event_time=t,
                    topic=topic,
                    partition=partition,
                    offset=o,
                    raw=raw,
                )
                for k, v, t, o, raw in zip(
                    self.keys,
                    values,
                    self.event_times.tolist(),
                    self.offsets,
                    [None] * len(values) if raws is None else raws,
                    strict=True,
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
            raws=None if self.raws is None else self.raws[lo:hi],
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
            and (self.raws is None) == (before.raws is None)
        )


class Batches(Sequence[Record]):
    """A batch made of several :class:`RecordBatch` es (of different partitions, or
    not consecutive), in order, with the same columns: what the batcher forms from the
    chunks of several partitions. The hot path reads its parts' columns
    (:func:`parts_of`); records are built only if a part asks for one, and kept.

    >>> import numpy as np
    >>> def part(p, lo, hi):
    ...     return RecordBatch(topic="t", partition=p, offsets=range(lo, hi),
    ...                        keys=[None] * (hi - lo), event_times=np.zeros(hi - lo),
    ...                        columns={}, values_from=lambda b: [None] * len(b))
    >>> b = Batches([part(0, 0, 2), part(1, 5, 6)])
    >>> len(b), [(r.partition, r.offset) for r in b], b.materialized
    (3, [(0, 0), (0, 1), (1, 5)], True)
    """

    __slots__ = ("_n", "_records", "parts")

    def __init__(self, parts: Sequence[RecordBatch]) -> None:
        self.parts = parts
        self._n = sum(len(p) for p in parts)
        self._records: list[Record] | None = None

    def __len__(self) -> int:
        return self._n

    @overload
    def __getitem__(self, index: int) -> Record: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[Record]: ...

    def __getitem__(self, index: int | slice) -> Record | Sequence[Record]:
        return self.records()[index]

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records())

    def __repr__(self) -> str:
        return f"Batches({list(self.parts)!r})"

    @property
    def materialized(self) -> bool:
        """Whether any part's records were built."""
        return any(p.materialized for p in self.parts)

    def records(self) -> list[Record]:
        if self._records is None:
            self._records = [r for p in self.parts for r in p.records()]
        return self._records


def parts_of(records: Iterable[Record]) -> Sequence[RecordBatch] | None:
    """The :class:`RecordBatch` es that ``records`` is made of, if it is one or a
    :class:`Batches`; else ``None`` (a list of records)."""
    if isinstance(records, RecordBatch):
        return (records,)
    if isinstance(records, Batches):
        return records.parts
    return None


def columns_of(records: Sequence[Record]) -> Mapping[str, np.ndarray] | None:
    """The columns of a batch held as columns whose records were not built (a part that
    built them may have changed their values); else ``None``."""
    parts = parts_of(records)
    if parts is None or any(p.materialized for p in parts):
        return None
    if len(parts) == 1:
        return parts[0].columns
    names = parts[0].columns.keys()
    if any(p.columns.keys() != names for p in parts):
        return None
    return {name: np.concatenate([p.columns[name] for p in parts]) for name in names}


def event_times_of(records: Sequence[Record]) -> np.ndarray:
    """The records' event times, as an array (from the columns where it can)."""
    parts = parts_of(records)
    if parts is None:
        return np.fromiter((r.event_time for r in records), np.float64, len(records))
    if len(parts) == 1:
        return parts[0].event_times
    return np.concatenate([p.event_times for p in parts])


def join(pieces: Sequence[Sequence[Record]]) -> Sequence[Record]:
    """One sequence of the records of ``pieces``, in order: one :class:`RecordBatch` where
    each piece is a batch that continues the one before it, :class:`Batches` where each
    is a batch with the same columns, else a list.

    >>> import numpy as np
    >>> def nothing(b):
    ...     return [None] * len(b)
    >>> def part(lo, hi):
    ...     return RecordBatch(topic="t", partition=0, offsets=range(lo, hi),
    ...                        keys=[None] * (hi - lo), event_times=np.zeros(hi - lo),
    ...                        columns={}, values_from=nothing)
    >>> join([part(0, 2), part(2, 5)]).offsets
    range(0, 5)
    >>> gap = join([part(0, 2), part(3, 4)])
    >>> type(gap).__name__, [r.offset for r in gap]
    ('Batches', [0, 1, 3])
    >>> [r.offset for r in join([part(0, 2), [gap[2]]])]
    [0, 1, 3]
    """
    if len(pieces) == 1:
        return pieces[0]
    if all(isinstance(p, RecordBatch) for p in pieces):
        runs = _runs(cast(Sequence[RecordBatch], pieces))
        if len(runs) == 1:
            return _joined(runs[0])
        names = runs[0][0].columns.keys()
        if all(r[0].columns.keys() == names for r in runs):
            return Batches([_joined(r) for r in runs])
    out: list[Record] = []
    for piece in pieces:
        out.extend(piece)
    return out


def _runs(batches: Sequence[RecordBatch]) -> list[list[RecordBatch]]:
    """``batches`` in runs that each join into one batch."""
    runs: list[list[RecordBatch]] = []
    for b in batches:
        if runs and b.follows(runs[-1][-1]):
            runs[-1].append(b)
        else:
            runs.append([b])
    return runs


def _joined(batches: list[RecordBatch]) -> RecordBatch:
    """One batch of ``batches``, each continuing the one before it."""
    if len(batches) == 1:
        return batches[0]
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
        raws=(
            None if first.raws is None else list(chain.from_iterable(b.raws or () for b in batches))
        ),
    )
    if any(b.materialized for b in batches):
        joined._records = [r for b in batches for r in b.records()]
    return joined


def encode_outputs(
    batch: ScoredBatch, encode: Callable[[Any], bytes], *, raw_inputs: bool
) -> tuple[Sequence[Any], list[bytes]]:
    """The keys and the encoded outputs of ``batch`` (each as ``encode`` gives it for
    :meth:`~headrace.record.ScoredBatch.to_dicts`), for a sink that writes one JSON
    document per output. With ``raw_inputs`` (inputs as read), a batch held as columns
    whose records were not built is encoded from its columns, its inputs the bytes as
    read, and no record is built.

    >>> import msgspec
    >>> from headrace.record import ModelRef
    >>> part = RecordBatch(topic="t", partition=0, offsets=range(3, 5), keys=["a", "b"],
    ...                    event_times=np.array([1.0, 2.0]), columns={},
    ...                    values_from=lambda b: [None, None], raws=[b'{"x": 1}', b'{"x":2}'])
    >>> out = ScoredBatch(records=part, predictions=[0.5, 0.25], model=ModelRef("m", "1"),
    ...                   processed_at=9.0)
    >>> keys, docs = encode_outputs(out, msgspec.json.encode, raw_inputs=True)
    >>> keys, docs[0][:36], part.materialized
    (['a', 'b'], b'{"key":"a","input":{"x": 1},"predict', False)
    """
    records = batch.records
    parts = parts_of(records) if raw_inputs else None
    if parts is None or any(p.raws is None or p.materialized for p in parts):
        return [r.key for r in records], batch.encode_each(encode, raw_inputs=raw_inputs)
    keys: list[Any] = []
    values: list[bytes] = []
    done = 0
    for p in parts:
        n = len(p)
        keys += p.keys
        values += encode_columns(
            batch,
            encode,
            keys=p.keys,
            raws=p.raws or (),
            topic=p.topic,
            partition=p.partition,
            offsets=p.offsets,
            event_times=p.event_times.tolist(),
            predictions=batch.predictions[done : done + n],
        )
        done += n
    return keys, values
