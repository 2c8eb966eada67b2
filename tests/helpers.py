"""Helpers shared by tests: `from helpers import wait_for`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from headrace.record import Record
from headrace.testing import Pause, TestingSink, TestingSource


async def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:  # noqa: ASYNC109
    """Wait until ``condition()`` is true, polling; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.005)


# The sink the tests keep outputs in is the one users get.
MemorySink = TestingSink


class ListSource(TestingSource):
    """Delivers prepared chunks of records, each as one chunk, then ends (or, with
    ``hold_open``, waits for ``release`` first, like a live source with no new data).
    Commits are recorded. The tests' own spelling of a :class:`TestingSource`, whose
    chunks follow ``chunk_size`` instead."""

    def __init__(self, chunks: list[list[Record]], *, hold_open: bool = False) -> None:
        self._chunks = chunks  # subclasses deliver them in their own ways
        self.hold_open = hold_open
        self.release = asyncio.Event()
        items: list[Any] = []
        for chunk in chunks:
            items += [*chunk, Pause()]  # a Pause() only ends the chunk
        if hold_open:
            items.append(Pause(until=self.release))
        # A subclass's class attribute ``name`` still holds.
        size = max(map(len, chunks), default=1)
        super().__init__(items, chunk_size=size, name=self.name)


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
        out.append(
            Record(
                key=key,
                value=value,
                event_time=time.time(),
                topic=topic,
                partition=p,
                offset=next_offset[p],
            )
        )
        next_offset[p] += 1
    return out
