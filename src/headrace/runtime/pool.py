"""Threads for model calls, where a call that never returns costs one thread, not the
worker.

Python cannot stop a thread. With ``concurrent.futures.ThreadPoolExecutor`` a model call
that hangs keeps its thread for good: a few such calls (bisection and retries make about
nine for one hanging record) took every thread, every later call and the health probe
timed out, and at exit the interpreter waited for the stuck threads, so SIGTERM did not
end the process. Here a call the caller gave up on (:meth:`InferencePool.abandon`) has its
thread written off and replaced, up to ``max_hung`` threads in all; the threads are
daemons, so the process can exit with some still stuck in a model.

The engine's calls (:meth:`InferencePool.call`) complete an asyncio future directly: a
``concurrent.futures.Future`` wrapped for the event loop cost about 50 us of CPU per call
against 30 us (measured, one call at a time), on a path taken once per batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, TypeVar

from headrace.errors import HeadraceError

T = TypeVar("T")

log = logging.getLogger("headrace")


_Item = tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]


class _State(enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    DROPPED = "dropped"


class Call:
    """A call made with :meth:`InferencePool.call`: ``future`` (on the event loop that made
    it) gets its result. Its state changes under the pool's lock, so a call given up on
    before a thread took it is never run, and one running is known to be."""

    __slots__ = ("args", "fn", "future", "loop", "state")

    def __init__(
        self, fn: Callable[..., Any], args: tuple[Any, ...], loop: asyncio.AbstractEventLoop
    ) -> None:
        self.fn = fn
        self.args = args
        self.loop = loop
        self.future: asyncio.Future[Any] = loop.create_future()
        self.state = _State.QUEUED

    def _complete(self, result: Any = None, error: BaseException | None = None) -> None:
        """From the thread that ran it: hand the outcome to the event loop."""
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits for it
            self.loop.call_soon_threadsafe(_settle, self.future, result, error)


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # the caller gave up on it (a timeout cancelled it)
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class PoolExhaustedError(HeadraceError, RuntimeError):
    """Model calls that never returned hold more threads than the pool may write off."""


class InferencePool(Executor):
    """``size`` daemon threads taking calls in order.

    >>> pool = InferencePool(2, max_hung=4, name="doc")
    >>> pool.submit(sum, [1, 2, 3]).result()
    6
    >>> pool.shutdown()
    """

    def __init__(self, size: int, *, max_hung: int, name: str = "headrace-infer") -> None:
        if size < 1:
            raise ValueError(f"a pool needs at least one thread, got {size}")
        self.size = size
        self.max_hung = max_hung
        self.name = name
        self.hung = 0
        self._work: queue.SimpleQueue[_Item | Call | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._running: dict[Future[Any] | Call, threading.Thread] = {}
        self._written_off: set[threading.Thread] = set()
        self._threads = 0
        self._shutdown = False
        for _ in range(size):
            self._spawn()

    def _spawn(self) -> None:
        self._threads += 1
        t = threading.Thread(target=self._serve, name=f"{self.name}_{self._threads}", daemon=True)
        t.start()

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        if self._shutdown:
            raise RuntimeError("the inference pool was shut down")
        if kwargs:
            return self.submit(lambda: fn(*args, **kwargs))
        future: Future[T] = Future()
        self._work.put((future, fn, args))
        return future

    def call(self, fn: Callable[..., Any], *args: Any) -> Call:
        """Run ``fn(*args)`` on a pool thread; await the returned call's ``future`` on the
        running event loop.

        >>> pool = InferencePool(1, max_hung=1, name="doc")
        >>> async def double(x):
        ...     return await pool.call(lambda v: v * 2, x).future
        >>> asyncio.run(double(21))
        42
        >>> pool.shutdown()
        """
        if self._shutdown:
            raise RuntimeError("the inference pool was shut down")
        call = Call(fn, args, asyncio.get_running_loop())
        self._work.put(call)
        return call

    def _serve(self) -> None:
        me = threading.current_thread()
        while True:
            item = self._work.get()
            if item is None:
                return
            if isinstance(item, Call):
                gone = self._run_call(item, me)
            else:
                gone = self._run_submitted(item, me)
            if gone:
                return  # replaced while it hung: the pool has its size without it

    def _run_call(self, call: Call, me: threading.Thread) -> bool:
        with self._lock:
            # Given up on before it started (a timeout, or its task was cancelled: reading
            # the future's state from this thread can only miss that, and then it runs).
            if call.state is not _State.QUEUED or call.future.cancelled():
                call.state = _State.DROPPED
                return False
            call.state = _State.RUNNING
            self._running[call] = me
        try:
            result = call.fn(*call.args)
        except BaseException as exc:
            call._complete(error=exc)
        else:
            call._complete(result)
        return self._finished(call, me)

    def _run_submitted(self, item: _Item, me: threading.Thread) -> bool:
        future, fn, args = item
        if not future.set_running_or_notify_cancel():
            return False
        with self._lock:
            self._running[future] = me
        try:
            result = fn(*args)
        except BaseException as exc:
            future.set_exception(exc)
        else:
            future.set_result(result)
        return self._finished(future, me)

    def _finished(self, key: Future[Any] | Call, me: threading.Thread) -> bool:
        """The call is over; whether this thread was written off meanwhile."""
        with self._lock:
            if isinstance(key, Call):
                key.state = _State.DONE
            self._running.pop(key, None)
            gone = me in self._written_off
            self._written_off.discard(me)
        return gone

    def abandon(self, future: Future[Any] | Call) -> None:
        """The caller gave up on ``future`` (a timeout). If it is still running, its
        thread is written off and a new one takes its place; past ``max_hung`` written-off
        threads, :class:`PoolExhaustedError`. A call still queued is just dropped."""
        if isinstance(future, Call):
            with self._lock:
                if future.state is _State.QUEUED:
                    future.state = _State.DROPPED
                    future.future.cancel()
                    return
        elif future.cancel():
            return
        with self._lock:
            thread = self._running.get(future)
            if thread is None or thread in self._written_off:
                return  # it finished meanwhile, or was already written off
            self._written_off.add(thread)
            self.hung += 1
            hung = self.hung
            if hung <= self.max_hung:
                self._spawn()
        if hung > self.max_hung:
            raise PoolExhaustedError(
                f"{hung} model calls never returned (more than max_hung_calls="
                f"{self.max_hung}): their threads cannot be stopped. Restart the worker; "
                "the records of those calls were dead-lettered as they were isolated"
            )
        log.warning(
            "a model call did not return: thread %s written off and replaced (%d of %d allowed)",
            thread.name,
            hung,
            self.max_hung,
        )

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop taking calls. Threads stuck in a model are never waited for, whatever
        ``wait`` says: they are daemons and end with the process."""
        self._shutdown = True
        if cancel_futures:
            while True:
                try:
                    item = self._work.get_nowait()
                except queue.Empty:
                    break
                if isinstance(item, Call):
                    item.state = _State.DROPPED
                    with contextlib.suppress(RuntimeError):  # the loop is closed
                        item.loop.call_soon_threadsafe(item.future.cancel)
                elif item is not None:
                    item[0].cancel()
        for _ in range(self._threads):
            self._work.put(None)
        if wait:
            with self._lock:
                busy = set(self._running.values()) - self._written_off
            for t in busy:
                t.join()
