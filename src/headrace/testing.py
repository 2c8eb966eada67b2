"""Test your own pipeline: a source that delivers the input you give it, with faults where
you put them, and a sink that keeps what was written.

The input is a list of values (a value alone is an :class:`Input` without key or event
time), :class:`Input` items, or :class:`~headrace.record.Record` objects, with markers
between them: :class:`Crash` (the source raises there), :class:`Pause` (it delivers
nothing for a while) and :class:`EndOfInput` (it ends there). Running the same source
again is a restart: it resumes at the positions the pipeline committed, and a crash or end
it went through before does not happen again, so a test can check what a crash costs.

>>> from headrace import CallableModel, Pipeline, PipelineError
>>> source = TestingSource([{"x": 1}, Input({"x": 2}, key="a"), Crash(), {"x": 3}])
>>> sink = TestingSink()
>>> pipeline = (
...     Pipeline("double")
...     .source(source)
...     .model(CallableModel(lambda xs: [x["x"] * 2 for x in xs], name="double"))
...     .sink(sink)
... )
>>> try:
...     pipeline.run(install_signal_handlers=False)
... except PipelineError as exc:
...     print(exc)
CrashError: source 'testing' crashed on purpose (a Crash marker, item 2)
>>> sink.predictions  # a failing pipeline writes no more, and commits nothing unwritten
[]
>>> pipeline.run(install_signal_handlers=False).records_out  # the restart reads it again
3
>>> sink.predictions, source.committed
([2, 4, 6], {('testing', 0): 3})
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from headrace.connectors.base import DecodedSource, PartitionKey, Sink, Source
from headrace.errors import HeadraceError
from headrace.record import FailedRecord, Record, ScoredBatch


class CrashError(HeadraceError, RuntimeError):
    """What a :class:`Crash` marker raises unless it was given an error of its own."""


@dataclass(frozen=True)
class Input:
    """One input: its value and what a real source adds to it. Without ``event_time``
    (seconds since the epoch) it is the time the record is read, as for a file read
    without a time field."""

    value: Any
    key: Any = None
    event_time: float | None = None
    partition: int = 0


@dataclass(frozen=True)
class Crash:
    """The source raises ``error`` (a :class:`CrashError` if none) here, as a broken
    connection would. Only once: a restart of the same source goes past it."""

    error: Exception | None = None


@dataclass(frozen=True)
class Pause:
    """The source delivers nothing for ``seconds``, or until ``until`` is set, while the
    pipeline goes on with what it has. ``Pause()`` only ends the chunk being read."""

    seconds: float = 0.0
    until: asyncio.Event | None = None

    async def wait(self) -> None:
        if self.until is not None:
            await self.until.wait()
        elif self.seconds > 0:
            await asyncio.sleep(self.seconds)


@dataclass(frozen=True)
class EndOfInput:
    """The input ends here, as a file does; the pipeline finishes and commits. Only once:
    a restart of the same source goes on with the items after it."""


_Marker = Crash | Pause | EndOfInput


class _ScriptedSource(Source):
    """Delivers ``items`` in order, in chunks of up to ``chunk_size`` records (a marker
    ends a chunk), from partitions of ``topic``: each :class:`Input` gets the next offset
    of its partition. Every commit is kept in :attr:`commits`."""

    _as_bytes = False

    def __init__(
        self,
        items: Iterable[Any],
        *,
        topic: str = "testing",
        chunk_size: int = 100,
        name: str = "testing",
    ) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be 1 or more, got {chunk_size}")
        self.topic = topic
        self.chunk_size = chunk_size
        self.name = name
        self.commits: list[dict[PartitionKey, int]] = []
        # Offsets are given now, so that a restart finds each input where it was.
        self._steps: list[Record | _Marker | tuple[Input, int]] = []
        offsets: dict[int, int] = {}
        for item in items:
            if isinstance(item, Record | _Marker):
                self._steps.append(item)
                continue
            one = item if isinstance(item, Input) else Input(item)
            offset = offsets.get(one.partition, 0)
            offsets[one.partition] = offset + 1
            self._steps.append((one, offset))
        self._done: set[int] = set()  # the crashes and ends already gone through
        self._resume: dict[PartitionKey, int] = {}

    async def open(self) -> None:
        self._resume = self.committed

    async def chunks(self) -> AsyncIterator[list[Record]]:
        chunk: list[Record] = []
        for i, step in enumerate(self._steps):
            if isinstance(step, _Marker):
                if i in self._done:
                    continue
                if chunk:
                    yield chunk
                    chunk = []
                if isinstance(step, Pause):
                    await step.wait()
                    continue
                self._done.add(i)
                if isinstance(step, EndOfInput):
                    return
                raise step.error or CrashError(
                    f"source {self.name!r} crashed on purpose (a Crash marker, item {i})"
                )
            record = step if isinstance(step, Record) else self._record(*step)
            if record.offset < self._resume.get((record.topic, record.partition), 0):
                continue  # committed before this restart
            chunk.append(record)
            if len(chunk) >= self.chunk_size:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    def _record(self, one: Input, offset: int) -> Record:
        value, raw = one.value, None
        if self._as_bytes:
            value, raw = None, one.value if isinstance(one.value, bytes) else _json(one.value)
        return Record(
            key=one.key,
            value=value,
            event_time=time.time() if one.event_time is None else one.event_time,
            topic=self.topic,
            partition=one.partition,
            offset=offset,
            raw=raw,
        )

    async def commit(self, positions: Mapping[PartitionKey, int]) -> None:
        self.commits.append(dict(positions))

    @property
    def committed(self) -> dict[PartitionKey, int]:
        """Per partition, the position the last commit gave: where a restart resumes."""
        merged: dict[PartitionKey, int] = {}
        for c in self.commits:
            merged.update(c)
        return merged


class TestingSource(_ScriptedSource, DecodedSource):
    """Delivers the values as given, decoded, as the generator does. Records go in
    chunks of up to ``chunk_size`` (a marker ends a chunk), from partitions of ``topic``:
    each :class:`Input` gets the next offset of its partition. Every commit is kept in
    :attr:`commits`."""

    __test__ = False  # not a test class, whatever pytest makes of the name


class TestingBytesSource(_ScriptedSource):
    """Delivers the values as bytes, as Kafka and MQTT sources do, for the pipeline's
    decoder: bytes as they are, any other value encoded as JSON. Otherwise as
    :class:`TestingSource`."""

    __test__ = False
    _as_bytes = True


_json = msgspec.json.Encoder().encode


class TestingSink(Sink):
    """Keeps what it is given: :attr:`outputs` as every sink writes them (see
    :meth:`~headrace.record.ScoredBatch.to_dicts`), the :attr:`batches` themselves, the
    dead letters (:attr:`failures`, when it is the dead-letter sink), and how often it was
    opened, flushed and closed."""

    __test__ = False  # not a test class, whatever pytest makes of the name

    def __init__(self, name: str = "testing") -> None:
        self.name = name
        self.outputs: list[dict[str, Any]] = []
        self.batches: list[ScoredBatch] = []
        self.failures: list[FailedRecord] = []
        self.opened = self.closed = self.flushes = 0

    @property
    def predictions(self) -> list[Any]:
        """The predictions written, in the order they were written."""
        return [o["prediction"] for o in self.outputs]

    async def open(self) -> None:
        self.opened += 1

    async def write(self, batch: ScoredBatch) -> None:
        assert self.opened > self.closed, f"sink {self.name!r}: a write while it is not open"
        self.batches.append(batch)
        self.outputs.extend(batch.to_dicts())

    async def write_failures(self, failures: Sequence[FailedRecord]) -> None:
        self.failures.extend(failures)

    async def flush(self) -> None:
        self.flushes += 1

    async def close(self) -> None:
        self.closed += 1


__all__ = [
    "Crash",
    "CrashError",
    "EndOfInput",
    "Input",
    "Pause",
    "TestingBytesSource",
    "TestingSink",
    "TestingSource",
]
