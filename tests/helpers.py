"""Helpers shared by tests: `from helpers import wait_for`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

from headrace.connectors.base import Sink, Source
from headrace.record import FailedRecord, Record, ScoredBatch


async def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:  # noqa: ASYNC109
    """Wait until ``condition()`` is true, polling; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.005)


class ListSource(Source):
    """Yields prepared chunks of records, then ends (or waits for ``release`` when
    ``hold_open``, like a live source with no new data). Commits are recorded."""

    decoded = True

    def __init__(self, chunks: list[list[Record]], *, hold_open: bool = False) -> None:
        self._chunks = chunks
        self.hold_open = hold_open
        self.release = asyncio.Event()
        self.commits: list[dict[tuple[str, int], int]] = []

    async def chunks(self) -> AsyncIterator[list[Record]]:
        for chunk in self._chunks:
            yield chunk
        if self.hold_open:
            await self.release.wait()

    async def commit(self, positions: Mapping[tuple[str, int], int]) -> None:
        self.commits.append(dict(positions))

    @property
    def committed(self) -> dict[tuple[str, int], int]:
        merged: dict[tuple[str, int], int] = {}
        for c in self.commits:
            merged.update(c)
        return merged


class MemorySink(Sink):
    """Keeps every output and dead letter in memory; counts opens, closes and flushes."""

    def __init__(self, name: str = "memory") -> None:
        self.name = name
        self.outputs: list[dict[str, Any]] = []
        self.batches: list[ScoredBatch] = []
        self.failures: list[FailedRecord] = []
        self.opened = self.closed = self.flushes = 0

    async def open(self) -> None:
        self.opened += 1

    async def write(self, batch: ScoredBatch) -> None:
        assert self.opened and not self.closed, "write on a sink that is not open"
        self.batches.append(batch)
        self.outputs.extend(batch.to_dicts())

    async def write_failures(self, failures: Sequence[FailedRecord]) -> None:
        self.failures.extend(failures)

    async def flush(self) -> None:
        self.flushes += 1

    async def close(self) -> None:
        self.closed += 1


def records(n: int, *, partitions: int = 1, topic: str = "t", keys: int = 10) -> list[Record]:
    """``n`` decoded records spread round-robin over partitions, each value carrying a
    unique ``id``, a key and a per-key sequence number ``seq``."""
    out: list[Record] = []
    next_offset = [0] * partitions
    seq: dict[str, int] = {}
    for i in range(n):
        p = i % partitions
        key = f"k{i % keys}"
        seq[key] = seq.get(key, -1) + 1
        value = {"id": i, "key": key, "seq": seq[key], "x": float(i), "features": [float(i)] * 2}
        out.append(Record(key, value, time.time(), topic, p, next_offset[p]))
        next_offset[p] += 1
    return out
