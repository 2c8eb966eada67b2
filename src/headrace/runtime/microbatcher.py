"""Request-level batching for applications: ``await batcher.infer(x)``.

Many callers each wait for the result of their own item while the model scores many items
at once. When a batch fires decides latency and throughput:

* **the model is idle** (no call in flight): at once, with whatever is waiting — every
  caller that became ready in the same turn of the event loop joins it. Waiting for a fuller
  batch while the model sits idle only adds latency; the requests arriving meanwhile form
  the next batch, which is fuller because the model is busy.
* **the model is busy** and a call slot is free (``max_concurrency`` above 1): when
  ``max_size`` items wait, when the model goes idle, or ``max_wait`` after the oldest
  waiting item arrived, whichever comes first;
* **every slot is taken**: items collect until a call ends, then the next batch takes up
  to ``max_size`` of them.

Bookkeeping is per call, not per item: one future per ``infer`` or ``infer_many`` call,
and a batch is a list of slices of calls.
"""

from __future__ import annotations

import asyncio
import inspect
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Any, Generic, TypeVar, cast

from headrace.runtime.batcher import BatcherClosed, OutputCountError, is_async_callable

T = TypeVar("T")
R = TypeVar("R")


class _Call(Generic[T, R]):
    """One ``infer``/``infer_many`` call: its items, its future, the outputs so far."""

    __slots__ = ("arrived", "future", "items", "left", "many", "outputs", "taken")

    def __init__(self, items: Sequence[T], future: asyncio.Future[Any], many: bool, at: float):
        self.items = items
        self.future = future
        self.many = many
        self.arrived = at
        self.taken = 0  # items handed to batches so far
        self.left = len(items)  # items without an output yet
        self.outputs: list[Any] = [None] * len(items)

    def answer(self, start: int, outputs: Sequence[Any]) -> None:
        self.outputs[start : start + len(outputs)] = outputs
        self.left -= len(outputs)
        if not self.left and not self.future.done():
            self.future.set_result(self.outputs if self.many else self.outputs[0])

    def fail(self, exc: BaseException) -> None:
        if self.future.done():
            return
        if isinstance(exc, asyncio.CancelledError):  # the model call was cancelled
            self.future.cancel()
        else:
            self.future.set_exception(exc)


_Part = tuple[_Call[T, R], int, int]  # a slice of a call's items: (call, start, end)


class MicroBatcher(Generic[T, R]):
    """``await batcher.infer(x)`` answered from batched model calls.

    ``predict_batch`` takes a list of inputs and returns one output per input, in order. A
    plain function runs in ``executor`` (the loop's default thread pool if ``None``), so the
    event loop never blocks on the model; a coroutine function is awaited.

    >>> import asyncio
    >>> async def main():
    ...     async with MicroBatcher(lambda xs: [x * 2 for x in xs], max_size=8,
    ...                             max_wait=0.005) as batcher:
    ...         return await asyncio.gather(*(batcher.infer(i) for i in range(5)))
    >>> asyncio.run(main())
    [0, 2, 4, 6, 8]

    A batch fires at once while the model is idle; ``max_wait`` bounds how long a partial
    batch waits for more items while another call is running (module docstring). If
    ``predict_batch`` raises, or returns the wrong number of outputs, the callers whose
    items were in that batch get the error; other batches are unaffected.
    """

    def __init__(
        self,
        predict_batch: Callable[[list[T]], Any],
        *,
        max_size: int = 64,
        max_wait: float = 0.01,
        max_concurrency: int = 1,
        executor: Executor | None = None,
    ) -> None:
        if max_size < 1:
            raise ValueError(f"max_size must be at least 1, got {max_size}")
        if max_wait < 0:
            raise ValueError(f"max_wait must not be negative, got {max_wait}")
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {max_concurrency}")
        self._predict = predict_batch
        self._is_async = is_async_callable(predict_batch)
        self._executor = executor
        self.max_size = max_size
        self.max_wait = max_wait
        self.max_concurrency = max_concurrency
        self._waiting: deque[_Call[T, R]] = deque()  # calls with items not yet in a batch
        self._count = 0  # items not yet in a batch
        self._running = 0  # model calls in flight
        self._closing = False
        self._kicked = False
        self._timer: asyncio.TimerHandle | None = None
        self._idle: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> MicroBatcher[T, R]:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def start(self) -> None:
        """Nothing to start: batches are dispatched as items arrive (kept for callers
        written for the earlier, task-driven batcher)."""

    @property
    def waiting(self) -> int:
        """Items not yet in a batch."""
        return self._count

    async def infer(self, item: T) -> R:
        """Score one item as part of whichever batch it joins; returns its output."""
        return cast(R, await self._submit((item,), many=False))

    async def infer_many(self, items: Sequence[T]) -> list[R]:
        """Score several items; they may span batches. Returns outputs in input order."""
        if not items:
            if self._closing:
                raise BatcherClosed("the batcher is closed and takes no more items")
            return []
        return cast(list[R], await self._submit(items, many=True))

    async def aclose(self) -> None:
        """Score everything already submitted, then stop taking items."""
        self._closing = True
        if self._count or self._running:
            self._idle = asyncio.Event()
            self._dispatch()
            await self._idle.wait()

    def _submit(self, items: Sequence[T], *, many: bool) -> asyncio.Future[Any]:
        if self._closing:
            raise BatcherClosed("the batcher is closed and takes no more items")
        loop = asyncio.get_running_loop()
        call = _Call[T, R](items, loop.create_future(), many, loop.time())
        self._waiting.append(call)
        self._count += len(items)
        if not self._kicked:
            # At the end of this turn of the loop: callers ready in the same turn join.
            self._kicked = True
            loop.call_soon(self._dispatch)
        return call.future

    def _dispatch(self) -> None:
        """Start as many batches as the rules allow (module docstring)."""
        self._kicked = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        loop = asyncio.get_running_loop()
        while self._count and self._running < self.max_concurrency:
            if self._running and self._count < self.max_size and not self._closing:
                due = self._waiting[0].arrived + self.max_wait
                if due > loop.time():  # busy: wait a little for a fuller batch
                    self._timer = loop.call_at(due, self._dispatch)
                    return
            self._start(self._take(min(self._count, self.max_size)), loop)
        if self._idle is not None and not self._count and not self._running:
            self._idle.set()

    def _take(self, n: int) -> list[_Part[T, R]]:
        """Slices ``(call, start, end)`` of the oldest waiting calls, ``n`` items."""
        parts = []
        waiting = self._waiting
        self._count -= n
        while n:
            call = waiting[0]
            start = call.taken
            end = min(len(call.items), start + n)
            parts.append((call, start, end))
            call.taken = end
            n -= end - start
            if end == len(call.items):
                waiting.popleft()
        return parts

    def _start(self, parts: list[_Part[T, R]], loop: asyncio.AbstractEventLoop) -> None:
        """Hand the batch to the model now: a plain function is submitted to its thread
        before this turn of the loop ends (no task step in between, during which the
        device would sit idle)."""
        if len(parts) == 1:
            call, start, end = parts[0]
            items = call.items
            inputs = list(items[start:end]) if start or end < len(items) else list(items)
        else:
            inputs = [x for call, start, end in parts for x in call.items[start:end]]
        self._running += 1
        if self._is_async:
            task = loop.create_task(self._awaited(parts, inputs))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        running = loop.run_in_executor(self._executor, self._predict, inputs)
        running.add_done_callback(lambda done: self._finished(parts, inputs, done))

    async def _awaited(self, parts: list[_Part[T, R]], inputs: list[T]) -> None:
        try:
            outputs = await self._predict(inputs)
        except Exception as exc:
            self._settle(parts, inputs, None, exc)
        else:
            self._settle(parts, inputs, outputs, None)

    def _finished(
        self, parts: list[_Part[T, R]], inputs: list[T], done: asyncio.Future[Any]
    ) -> None:
        exc = asyncio.CancelledError() if done.cancelled() else done.exception()
        outputs = None if exc is not None else done.result()
        if exc is None and inspect.isawaitable(outputs):  # a plain function's coroutine
            task = asyncio.get_running_loop().create_task(
                self._awaited_result(parts, inputs, outputs)
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        self._settle(parts, inputs, outputs, exc)

    async def _awaited_result(
        self, parts: list[_Part[T, R]], inputs: list[T], pending: Any
    ) -> None:
        try:
            outputs = await pending
        except Exception as exc:
            self._settle(parts, inputs, None, exc)
        else:
            self._settle(parts, inputs, outputs, None)

    def _settle(
        self,
        parts: list[_Part[T, R]],
        inputs: list[T],
        outputs: Any,
        exc: BaseException | None,
    ) -> None:
        """The next batch starts first, then this one's callers are answered: the device
        works while they wake."""
        self._running -= 1
        self._dispatch()
        if exc is None and len(outputs) != len(inputs):
            exc = OutputCountError(len(inputs), len(outputs))
        if exc is not None:
            for call, _, _ in parts:
                call.fail(exc)
            return
        at = 0
        for call, start, end in parts:
            call.answer(start, outputs[at : at + end - start])
            at += end - start
