"""Micro-batching: group items into batches that fire when full or when the oldest item is due.

:class:`Batcher` feeds whole batches to a handler coroutine; the engine uses it for records.
(:class:`~headrace.runtime.microbatcher.MicroBatcher`, for applications' ``await
batcher.infer(x)``, fires by another rule: when the model is idle.)

A batch fires as soon as it holds ``max_size`` items, or ``max_wait`` seconds after its oldest
item arrived, whichever comes first. There is no fixed sleep and no waiting for a next item
to arrive. At most ``max_concurrency`` batches are handled at a time; while they run, the next
batch keeps filling.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

from headrace.errors import ErrorType, HeadraceError

T = TypeVar("T")
R = TypeVar("R")


class BatcherClosed(HeadraceError, RuntimeError):
    """Raised when items are given to a batcher that is closing or closed."""


class OutputCountError(HeadraceError, ValueError):
    """A model returned a different number of outputs than it was given inputs."""

    error_type = ErrorType.WRONG_OUTPUT_COUNT

    def __init__(self, expected: int, got: int) -> None:
        super().__init__(f"model returned {got} outputs for a batch of {expected} inputs")
        self.expected = expected
        self.got = got


class Batcher(Generic[T]):
    """Assembles items into batches and hands each batch to ``handle``.

    ``handle`` runs as its own task, so batches overlap up to ``max_concurrency``. If
    ``handle`` raises, :meth:`run` re-raises the first such error once the other in-flight
    batches have finished: a handler error is a failure of the whole pipeline, so handlers
    deal with per-item failures themselves.

    With ``lanes`` > 1, items are put into priority lanes and a batch is filled from lane 0
    first: under load, lower lanes wait while higher ones have items.

    ``join`` makes one batch of the parts of the sequences put that it takes (default: a
    list of their items); a batch that is one part of one sequence is that part, as its
    slice gives it (``items[lo:hi]``).
    """

    def __init__(
        self,
        handle: Callable[[Sequence[T]], Awaitable[None]],
        *,
        max_size: int,
        max_wait: float,
        max_concurrency: int = 1,
        lanes: int = 1,
        join: Callable[[list[Sequence[T]]], Sequence[T]] | None = None,
    ) -> None:
        if max_size < 1:
            raise ValueError(f"max_size must be at least 1, got {max_size}")
        if max_wait < 0:
            raise ValueError(f"max_wait must not be negative, got {max_wait}")
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {max_concurrency}")
        if lanes < 1:
            raise ValueError(f"lanes must be at least 1, got {lanes}")
        self._handle = handle
        self.max_size = max_size
        self.max_wait = max_wait
        self.max_concurrency = max_concurrency
        # One buffer per priority lane, lane 0 first, of the sequences put, kept whole (a
        # column batch stays one: see headrace.batch). Within a lane, items keep their order.
        self._lanes: list[deque[Sequence[T]]] = [deque() for _ in range(lanes)]
        self._counts = [0] * lanes
        self._join = join or _concatenate
        # (count, arrival time) per put(), so the oldest arrival is known after a partial take.
        self._arrivals: list[deque[list[Any]]] = [deque() for _ in range(lanes)]
        self._buffered = 0
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(max_concurrency)
        self._in_flight: set[asyncio.Task[None]] = set()
        self._closing = False
        self._error: BaseException | None = None

    @property
    def buffered(self) -> int:
        """Items waiting for a batch."""
        return self._buffered

    def buffered_in(self, lane: int) -> int:
        """Items of one lane waiting for a batch."""
        return self._counts[lane]

    @property
    def batches_in_flight(self) -> int:
        return len(self._in_flight)

    def put(self, items: Sequence[T], lane: int = 0) -> None:
        """Add items to ``lane`` (0 is taken first); they arrived now. Never blocks: bound
        the input upstream."""
        if self._closing:
            raise BatcherClosed("the batcher is closing and takes no more items")
        if not items:
            return
        was_empty = not self._buffered
        self._lanes[lane].append(items)
        self._counts[lane] += len(items)
        self._arrivals[lane].append([len(items), time.monotonic()])
        self._buffered += len(items)
        # Wake the dispatcher only when its decision can change: a first item starts the
        # clock, a full buffer fires at once.
        if was_empty or self._buffered >= self.max_size:
            self._wake.set()

    def close(self) -> None:
        """Stop taking items; :meth:`run` flushes what is buffered and returns."""
        self._closing = True
        self._wake.set()

    async def run(self) -> None:
        """Dispatch batches until closed and drained. Re-raises a handler's error."""
        try:
            while self._error is None:
                await self._slots.acquire()
                batch = await self._next_batch()
                if batch is None:
                    self._slots.release()
                    break
                task = asyncio.create_task(self._run_handler(batch))
                self._in_flight.add(task)
                task.add_done_callback(self._in_flight.discard)
        finally:
            if self._in_flight:
                await asyncio.gather(*self._in_flight, return_exceptions=True)
        if self._error is not None:
            raise self._error

    async def _run_handler(self, batch: Sequence[T]) -> None:
        try:
            await self._handle(batch)
        except BaseException as exc:
            if self._error is None:
                self._error = exc
            self._wake.set()
            if not isinstance(exc, Exception):
                raise
        finally:
            self._slots.release()

    async def _next_batch(self) -> Sequence[T] | None:
        while self._error is None:
            buffered = self._buffered
            if buffered >= self.max_size:
                return self._take(self.max_size)
            if buffered:
                if self._closing:
                    return self._take(buffered)
                delay = self._oldest() + self.max_wait - time.monotonic()
                if delay <= 0:
                    return self._take(buffered)
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
            else:
                if self._closing:
                    return None
                self._wake.clear()
                await self._wake.wait()
        return None

    def _oldest(self) -> float:
        if len(self._arrivals) == 1:
            return float(self._arrivals[0][0][1])
        return min(float(a[0][1]) for a in self._arrivals if a)

    def _take(self, n: int) -> Sequence[T]:
        pieces: list[Sequence[T]] = []
        for lane in range(len(self._lanes)):
            if n and self._counts[lane]:
                n -= self._take_from(lane, n, pieces)
        return self._join(pieces)

    def _take_from(self, lane: int, n: int, pieces: list[Sequence[T]]) -> int:
        """Move up to ``n`` items of ``lane`` to ``pieces``; how many it moved."""
        buffer = self._lanes[lane]
        taken = 0
        while taken < n and buffer:
            piece = buffer[0]
            want = n - taken
            if len(piece) <= want:
                buffer.popleft()
            else:
                buffer[0] = piece[want:]
                piece = piece[:want]
            pieces.append(piece)
            taken += len(piece)
        self._counts[lane] -= taken
        self._buffered -= taken
        remaining = taken
        arrivals = self._arrivals[lane]
        while remaining:
            head = arrivals[0]
            if head[0] <= remaining:
                remaining -= head[0]
                arrivals.popleft()
            else:
                head[0] -= remaining
                remaining = 0
        return taken


def _concatenate(pieces: list[Sequence[T]]) -> list[T]:
    out: list[T] = []
    for piece in pieces:
        out.extend(piece)
    return out


def is_async_callable(fn: Any) -> bool:
    """A coroutine function, or an object whose ``__call__`` is one."""
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - the method itself is what is checked
    )
