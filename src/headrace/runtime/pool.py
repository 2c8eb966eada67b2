"""Threads for model calls, where a call that never returns costs one thread, not the
worker.

Python cannot stop a thread. With ``concurrent.futures.ThreadPoolExecutor`` a model call
that hangs keeps its thread for good: a few such calls (bisection and retries make about
nine for one hanging record) took every thread, every later call and the health probe
timed out, and at exit the interpreter waited for the stuck threads, so SIGTERM did not
end the process. Here a call the caller gave up on (:meth:`InferencePool.abandon`) has its
thread written off and replaced, up to ``max_hung`` threads in all; the threads are
daemons, so the process can exit with some still stuck in a model.
"""

from __future__ import annotations

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
        self._work: queue.SimpleQueue[
            tuple[Future[Any], Callable[..., Any], tuple[Any, ...]] | None
        ]
        self._work = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._running: dict[Future[Any], threading.Thread] = {}
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

    def _serve(self) -> None:
        me = threading.current_thread()
        while True:
            item = self._work.get()
            if item is None:
                return
            future, fn, args = item
            if not future.set_running_or_notify_cancel():
                continue
            with self._lock:
                self._running[future] = me
            try:
                result = fn(*args)
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result(result)
            finally:
                with self._lock:
                    self._running.pop(future, None)
                    gone = me in self._written_off
                    self._written_off.discard(me)
            if gone:
                return  # replaced while it hung: the pool has its size without it

    def abandon(self, future: Future[Any]) -> None:
        """The caller gave up on ``future`` (a timeout). If it is still running, its
        thread is written off and a new one takes its place; past ``max_hung`` written-off
        threads, :class:`PoolExhaustedError`. A call still queued is just cancelled."""
        if future.cancel():
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
                if item is not None:
                    item[0].cancel()
        for _ in range(self._threads):
            self._work.put(None)
        if wait:
            with self._lock:
                busy = set(self._running.values()) - self._written_off
            for t in busy:
                t.join()
