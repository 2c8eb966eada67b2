"""The unit of data that flows through a pipeline, and what comes out of it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NamedTuple

from msgspec import Raw, Struct


class Position(NamedTuple):
    """Where a record came from: a topic (or stream, or file), a partition, an offset."""

    topic: str
    partition: int
    offset: int


class Record:
    """One event as read from a source.

    ``value`` is the decoded payload (``None`` until a decoder ran for sources that deliver
    bytes), ``raw`` the bytes as they arrived (``None`` for sources that build values
    directly), ``event_time`` seconds since the epoch.

    >>> r = Record(key="pump-1", value={"t": 1.5}, event_time=10.0,
    ...            topic="sensors", partition=0, offset=42)
    >>> r.position
    Position(topic='sensors', partition=0, offset=42)
    """

    # Slots and plain attributes: a record is created for every event, so it stays cheap.
    __slots__ = ("event_time", "headers", "key", "offset", "partition", "raw", "topic", "value")

    # Keywords only: of eight parameters, three are numbers that a positional call swaps
    # without an error.
    def __init__(
        self,
        *,
        key: Any,
        value: Any,
        event_time: float,
        topic: str,
        partition: int,
        offset: int,
        raw: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> None:
        self.key = key
        self.value = value
        self.event_time = event_time
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.raw = raw
        self.headers = headers

    @property
    def position(self) -> Position:
        return Position(self.topic, self.partition, self.offset)

    def __repr__(self) -> str:
        return (
            f"Record(key={self.key!r}, topic={self.topic!r}, partition={self.partition}, "
            f"offset={self.offset}, event_time={self.event_time})"
        )


_new = object.__new__


def source_record(
    *,
    key: Any,
    value: Any,
    event_time: float,
    topic: str,
    partition: int,
    offset: int,
    raw: bytes | None = None,
    headers: Sequence[tuple[str, bytes]] | None = None,
) -> Record:
    """``Record(...)``, for a source's read loop, which builds one per event: the same
    record, in 208 ns where the class call with keywords takes 434 (1e6 builds, Python
    3.11, this project's 2-core machine) — half a microsecond of a record's few through the
    whole engine.

    >>> source_record(key=None, value=1, event_time=0.0, topic="t", partition=0, offset=3)
    Record(key=None, topic='t', partition=0, offset=3, event_time=0.0)
    """
    r: Record = _new(Record)
    r.key = key
    r.value = value
    r.event_time = event_time
    r.topic = topic
    r.partition = partition
    r.offset = offset
    r.raw = raw
    r.headers = headers
    return r


class WindowRecord(Record):
    """A closed window of one key, as the model scores it: ``value`` holds the window's
    features, ``event_time`` its end, ``topic`` and ``partition`` the input partition whose
    state it came from, ``closed_at`` when the watermark closed it. Its ``offset`` numbers
    the windows a worker closed; it is no source position, and nothing commits it.

    >>> w = WindowRecord("pump-1", {"n": 3}, "sensors", 0, 0, 0.0, 10.0, 3)
    >>> w.window_start, w.event_time, w.count
    (0.0, 10.0, 3)
    """

    __slots__ = ("closed_at", "count", "window_start")

    def __init__(
        self,
        key: Any,
        features: dict[str, Any],
        topic: str,
        partition: int,
        sequence: int,
        start: float,
        end: float,
        count: int,
        closed_at: float = 0.0,
    ) -> None:
        super().__init__(
            key=key,
            value=features,
            event_time=end,
            topic=topic,
            partition=partition,
            offset=sequence,
        )
        self.window_start = start
        self.count = count
        self.closed_at = closed_at  # wall clock when the watermark closed it

    def __repr__(self) -> str:
        return (
            f"WindowRecord(key={self.key!r}, window=[{self.window_start}, {self.event_time}), "
            f"count={self.count}, topic={self.topic!r}, partition={self.partition})"
        )


@dataclass(frozen=True, slots=True)
class ModelRef:
    """Which model produced an output: name, version and, where known, the first 12 hex
    digits of its artifact's sha256."""

    name: str
    version: str
    sha256: str | None = None


class BatchKind(StrEnum):
    """What a batch holds: events as read, or closed windows (:class:`WindowRecord` s,
    whose offsets are no source positions)."""

    EVENTS = "events"
    WINDOWS = "windows"


@dataclass(frozen=True, slots=True)
class ScoredBatch:
    """A batch of records with one prediction each, all from one model version; ``kind``
    says whether they are events or closed windows (never both).

    Sinks receive these. Keeping the batch as one object, rather than one output object per
    record, keeps the per-record cost of the engine low; :meth:`to_dicts` builds the
    documented output shape for sinks that write JSON.
    """

    records: Sequence[Record]
    predictions: Sequence[Any]
    model: ModelRef
    processed_at: float
    kind: BatchKind = BatchKind.EVENTS

    def __len__(self) -> int:
        return len(self.records)

    def select(self, keep: Sequence[bool]) -> ScoredBatch:
        """The same batch holding only the records whose flag is true."""
        return ScoredBatch(
            records=[r for r, k in zip(self.records, keep, strict=True) if k],
            predictions=[p for p, k in zip(self.predictions, keep, strict=True) if k],
            model=self.model,
            processed_at=self.processed_at,
            kind=self.kind,
        )

    def encode_each(
        self, encode: Callable[[Any], bytes], *, raw_inputs: bool = False
    ) -> list[bytes]:
        """One JSON document per record: the same bytes as ``encode`` gives for each of
        :meth:`to_dicts` (a property test holds them equal), for sinks that write one
        message per output, built as structs and with the model encoded once per batch.

        >>> import msgspec
        >>> r = Record(key="k", value={"x": 1}, event_time=5.0, topic="t", partition=0,
        ...            offset=7)
        >>> b = ScoredBatch(records=[r], predictions=[0.9], model=ModelRef("m", "1"),
        ...                 processed_at=6.0)
        >>> encode = msgspec.json.encode
        >>> b.encode_each(encode) == [encode(d) for d in b.to_dicts()]
        True
        """
        if self.kind is BatchKind.WINDOWS:
            return [encode(d) for d in self.to_dicts(raw_inputs=raw_inputs)]
        m = self.model
        model = Raw(encode({"name": m.name, "version": m.version, "sha256": m.sha256}))
        processed_at = self.processed_at
        return [
            encode(
                _Output(
                    key=r.key,
                    input=r.value if not raw_inputs or r.raw is None else Raw(r.raw),
                    prediction=p,
                    model=model,
                    source=_Source(topic=r.topic, partition=r.partition, offset=r.offset),
                    event_time=r.event_time,
                    processed_at=processed_at,
                )
            )
            for r, p in zip(self.records, self.predictions, strict=True)
        ]

    def to_dicts(self, *, raw_inputs: bool = False) -> list[dict[str, Any]]:
        """One output per record, in the shape every sink writes.

        With ``raw_inputs``, an event's ``input`` is its ``raw`` bytes as a
        ``msgspec.Raw`` (the same JSON, embedded as is when msgspec encodes the output:
        half the cost of encoding the value again), where the record has them.

        >>> r = Record(key="k", value={"x": 1}, event_time=5.0, topic="t", partition=0,
        ...            offset=7)
        >>> b = ScoredBatch(records=[r], predictions=[0.9], model=ModelRef("m", "1"),
        ...                 processed_at=6.0)
        >>> b.to_dicts()[0]["source"]
        {'topic': 't', 'partition': 0, 'offset': 7}
        """
        m = self.model
        model = {"name": m.name, "version": m.version, "sha256": m.sha256}
        processed_at = self.processed_at
        if self.kind is BatchKind.WINDOWS:
            return _window_dicts(self.records, self.predictions, model, processed_at)
        if raw_inputs:
            return [
                {
                    "key": r.key,
                    "input": r.value if r.raw is None else Raw(r.raw),
                    "prediction": p,
                    "model": model,
                    "source": {"topic": r.topic, "partition": r.partition, "offset": r.offset},
                    "event_time": r.event_time,
                    "processed_at": processed_at,
                }
                for r, p in zip(self.records, self.predictions, strict=True)
            ]
        return [
            {
                "key": r.key,
                "input": r.value,
                "prediction": p,
                "model": model,
                "source": {"topic": r.topic, "partition": r.partition, "offset": r.offset},
                "event_time": r.event_time,
                "processed_at": processed_at,
            }
            for r, p in zip(self.records, self.predictions, strict=True)
        ]


def encode_columns(
    batch: ScoredBatch,
    encode: Callable[[Any], bytes],
    *,
    keys: Sequence[Any],
    raws: Sequence[bytes],
    topic: str,
    partition: int,
    offsets: Sequence[int],
    event_times: Sequence[float],
    predictions: Sequence[Any] | None = None,
) -> list[bytes]:
    """What ``batch.encode_each(encode, raw_inputs=True)`` gives, from a batch of one
    partition's events held as columns (a :class:`~headrace.batch.RecordBatch`, whose
    records need not be built): their keys, bytes as read, offsets and event times;
    ``predictions``: theirs, where they are a part of ``batch`` (default: all of it).

    >>> import msgspec
    >>> r = Record(key="k", value={"x": 1}, event_time=5.0, topic="t", partition=0,
    ...            offset=7, raw=b'{"x":1}')
    >>> b = ScoredBatch(records=[r], predictions=[0.9], model=ModelRef("m", "1"),
    ...                 processed_at=6.0)
    >>> encode = msgspec.json.encode
    >>> encode_columns(b, encode, keys=["k"], raws=[b'{"x":1}'], topic="t", partition=0,
    ...                offsets=[7], event_times=[5.0]) == b.encode_each(encode, raw_inputs=True)
    True
    """
    m = batch.model
    model = Raw(encode({"name": m.name, "version": m.version, "sha256": m.sha256}))
    processed_at = batch.processed_at
    return [
        encode(
            _Output(
                key=k,
                input=Raw(raw),
                prediction=p,
                model=model,
                source=_Source(topic=topic, partition=partition, offset=o),
                event_time=t,
                processed_at=processed_at,
            )
        )
        for k, raw, p, o, t in zip(
            keys,
            raws,
            batch.predictions if predictions is None else predictions,
            offsets,
            event_times,
            strict=True,
        )
    ]


class _Source(Struct, gc=False):
    topic: str
    partition: int
    offset: int


class _Output(Struct, gc=False):
    """An event's output in the shape of :meth:`ScoredBatch.to_dicts`, fields in its order:
    msgspec builds and encodes a struct in about 0.7 of the time of the dict. Short-lived
    and holding no reference back to itself, so the garbage collector need not track it."""

    key: Any
    input: Any
    prediction: Any
    model: Any
    source: _Source
    event_time: Any
    processed_at: Any


def _window_dicts(
    records: Sequence[Record], predictions: Sequence[Any], model: Any, processed_at: float
) -> list[dict[str, Any]]:
    """Windowed outputs: the key, the window's bounds and record count in place of a
    source position."""
    out = []
    for r, p in zip(records, predictions, strict=True):
        assert isinstance(r, WindowRecord)  # a batch holds windows or events, never both
        out.append(
            {
                "key": r.key,
                "window": {"start": r.window_start, "end": r.event_time},
                "count": r.count,
                "features": r.value,
                "prediction": p,
                "model": model,
                "source": {"topic": r.topic, "partition": r.partition},
                "event_time": r.event_time,
                "processed_at": processed_at,
            }
        )
    return out


@dataclass(frozen=True, slots=True)
class FailedRecord:
    """A record that could not be scored, with why and where it failed."""

    record: Record
    stage: str
    error: str
    error_type: str
    model: ModelRef | None = None
    attempts: int = 1

    def to_dict(self) -> dict[str, Any]:
        r = self.record
        out = {
            "key": r.key,
            "input": r.value,
            "raw": r.raw.decode("utf-8", "replace") if r.raw is not None else None,
            "stage": self.stage,
            "error_type": self.error_type,
            "error": self.error,
            "attempts": self.attempts,
            "model": (
                {
                    "name": self.model.name,
                    "version": self.model.version,
                    "sha256": self.model.sha256,
                }
                if self.model
                else None
            ),
            "source": {"topic": r.topic, "partition": r.partition, "offset": r.offset},
            "event_time": r.event_time,
        }
        if isinstance(r, WindowRecord):  # a window the model failed on: no source position
            out["window"] = {"start": r.window_start, "end": r.event_time}
            out["count"] = r.count
            out["source"] = {"topic": r.topic, "partition": r.partition}
        return out
