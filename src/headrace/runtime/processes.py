"""Model calls in processes of their own (``batching.model_calls: process``).

A model that holds the GIL for most of a call (pure Python, scikit-learn's forests)
competes with the worker's event loop for it on a thread: 0.70-0.75 of its direct rate
in process on a thread (bench/results/engine_overhead-epyc-2026-12-07.json). In a process
of its own it has an interpreter of its own, and the worker's loop keeps reading,
decoding and writing on the other core. A call that never returns, or that takes its
process down (a crash in native code, ``os._exit``), costs that process: it is killed or
found gone, the call fails (and is isolated and dead-lettered like any model failure), and
another process takes its place.

Each process takes one call at a time; there are ``size`` of them (the engine's
``max_concurrency``). A model is pickled once, sent to each process before its first call
there, and kept there until :data:`KEPT_MODELS` newer ones were used. The processes are
started with ``python -m headrace.runtime.model_process``, not ``multiprocessing``'s
spawn or forkserver: those import the user's main script again in the child, which
without an ``if __name__ == "__main__"`` guard would run the pipeline a second time; and
fork is unsafe with librdkafka's threads. The worker's ``sys.path`` is sent first, so a
model's module imports in the process as it did in the worker; a class defined in the
main script itself cannot be (pickle's rule), and the run refuses to start with a model
that cannot be pickled (:func:`check_picklable`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import io
import itertools
import logging
import os
import pickle
import socket
import subprocess
import sys
import time
import types
from multiprocessing.connection import Connection
from typing import Any

from headrace.errors import HeadraceError

log = logging.getLogger("headrace")

#: How many models (versions) the pool keeps, pickled, and its processes loaded: the one
#: serving, a canary and the one a rollback would go back to. Older ones no call uses
#: are forgotten (a model used again is pickled and loaded again).
KEPT_MODELS = 3
#: How long a stop waits for a process to leave after its connection closed.
EXIT_WAIT = 2.0
#: How long a start waits for the processes to be ready with the model loaded (each
#: imports Headrace and the model's libraries: 0.3-2.9 s measured, on 2 cores).
START_TIMEOUT = 60.0
#: Processes that end before they are ready, in a row, after which no more are started.
MAX_FAILED_STARTS = 3


class ModelProcessError(HeadraceError, RuntimeError):
    """The model's process ended during a call (it crashed, or was killed)."""


class ModelNotPicklable(HeadraceError, ValueError):
    """The model cannot be sent to a process: it cannot be pickled."""


class _MainChecker(pickle.Pickler):
    """Pickles into nothing, refusing a function or class of the main script: pickle
    writes those by name, and the model's process has another main module."""

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, type | types.FunctionType) and obj.__module__ == "__main__":
            raise pickle.PicklingError(
                f"{obj.__qualname__} is defined in the main script, which the model's "
                "process does not import"
            )
        return NotImplemented


def check_picklable(model: Any) -> None:
    """Raise :class:`ModelNotPicklable`, naming the setting and the fix, if ``model``
    cannot be sent to a process."""
    try:
        _MainChecker(io.BytesIO(), protocol=pickle.HIGHEST_PROTOCOL).dump(model)
    except Exception as exc:
        raise ModelNotPicklable(
            f"batching.model_calls: process: the model cannot be sent to its process "
            f"({type(exc).__name__}: {exc}). A model of your own: define its function or "
            "class in a module (not a lambda, a closure or the main script). A runtime's "
            "session (ONNX Runtime, PyTorch) releases the GIL: use model_calls: thread"
        ) from None


class ProcessCall:
    """A call made with :meth:`ProcessPool.call`: ``started`` is done once a process has
    it (waiting for a process, or for the model to load in it, is not the call's time),
    ``future`` gets its outputs."""

    __slots__ = ("future", "id", "inputs", "started", "token")

    def __init__(self, id: int, token: int, inputs: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.id = id
        self.token = token
        self.inputs = inputs
        self.started: asyncio.Future[None] = loop.create_future()
        self.future: asyncio.Future[Any] = loop.create_future()

    def begin(self) -> None:
        if not self.started.done():
            self.started.set_result(None)

    def fail(self, error: BaseException) -> None:
        self.begin()
        if not self.future.done():
            self.future.set_exception(error)

    @property
    def given_up(self) -> bool:
        return self.future.done() or self.started.cancelled()


class _Child:
    __slots__ = ("busy", "conn", "loading", "models", "name", "proc", "ready")

    def __init__(self, name: str, proc: subprocess.Popen[bytes], conn: Connection) -> None:
        self.name = name
        self.proc = proc
        self.conn = conn
        self.ready = False
        self.busy: ProcessCall | None = None  # the call it runs
        self.loading: ProcessCall | None = None  # the call waiting for its model to load
        self.models: set[int] = set()

    @property
    def idle(self) -> bool:
        return self.ready and self.busy is None and self.loading is None


class ProcessPool:
    """``size`` model processes, one call at a time each, answered on the event loop
    (their sockets are read by the loop's selector: no thread in the worker)."""

    def __init__(self, size: int, *, name: str = "headrace-model") -> None:
        if size < 1:
            raise ValueError(f"a pool needs at least one process, got {size}")
        self.size = size
        self.name = name
        self.replaced = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._children: list[_Child] = []
        self._waiting: collections.deque[ProcessCall] = collections.deque()
        # id(model) -> (token, model, pickled): the model is held, so its id stays its own.
        self._models: collections.OrderedDict[int, tuple[int, Any, bytes]] = (
            collections.OrderedDict()
        )
        self._tokens = itertools.count(1)
        self._ids = itertools.count(1)
        self._started = itertools.count(1)
        self._failed_starts = 0
        self._broken: str | None = None
        self._ready = asyncio.Event()
        self._closed = False

    async def start(self, model: Any = None) -> None:
        """Start the processes and wait until each is ready (with ``model`` loaded, if
        given): a process that cannot start is :class:`ModelProcessError` here, with its
        exit code (its error was printed to the worker's stderr), not a failure of every
        batch later."""
        self._loop = asyncio.get_running_loop()
        for _ in range(self.size):
            self._spawn()
        token = None if model is None else self._token_of(model)
        try:
            async with asyncio.timeout(START_TIMEOUT):
                while self._broken is None and not all(c.ready for c in self._children):
                    self._ready.clear()
                    await self._ready.wait()
                if self._broken is not None:
                    raise ModelProcessError(self._broken)
                if token is not None:
                    loads = [self._preload(c, token) for c in self._children]
                    await asyncio.gather(*loads)
        except TimeoutError:
            raise ModelProcessError(
                f"the model's processes were not ready within {START_TIMEOUT:.0f} s"
            ) from None

    async def _preload(self, child: _Child, token: int) -> None:
        """Load the model in ``child`` (a call of id 0, which runs nothing); done when it
        is loaded, or when the process is gone (its replacement loads it on first use)."""
        if child not in self._children:
            return
        call = ProcessCall(0, token, (), self._require_loop())
        self._load(child, call)
        await call.started

    def _require_loop(self) -> asyncio.AbstractEventLoop:
        if self._closed or self._loop is None:
            raise RuntimeError("the model processes are not running")
        return self._loop

    def _spawn(self) -> None:
        loop = self._require_loop()
        ours, theirs = socket.socketpair()
        try:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "headrace.runtime.model_process",
                    str(theirs.fileno()),
                    str(os.getpid()),
                ],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
            )
        finally:
            theirs.close()
        ours.setblocking(True)
        conn = Connection(ours.detach())
        child = _Child(f"{self.name}-{next(self._started)}", proc, conn)
        self._children.append(child)
        loop.add_reader(conn.fileno(), self._readable, child)
        self._send(child, ("path", list(sys.path)))

    def call(self, model: Any, inputs: Any) -> ProcessCall:
        """Call ``model.predict_batch(inputs)`` in a process; await the call's ``future``."""
        loop = self._require_loop()
        call = ProcessCall(next(self._ids), self._token_of(model), inputs, loop)
        if self._broken is not None:
            call.fail(ModelProcessError(self._broken))
            return call
        self._waiting.append(call)
        self._dispatch()
        return call

    def _token_of(self, model: Any) -> int:
        key = id(model)
        known = self._models.get(key)
        if known is not None:
            self._models.move_to_end(key)
            return known[0]
        token = next(self._tokens)
        self._models[key] = (token, model, pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL))
        self._forget_old(token)
        return token

    def _forget_old(self, new: int) -> None:
        """Past :data:`KEPT_MODELS`, forget the least recently used models that no call
        waits for or runs with, nor the ``new`` one a call is being made with (the
        pickled bytes of each are held until then)."""
        in_use = {new, *(c.token for c in self._waiting)}
        for child in self._children:
            in_use.update(c.token for c in (child.busy, child.loading) if c is not None)
        for key in list(self._models):
            if len(self._models) <= KEPT_MODELS:
                return
            old = self._models[key][0]
            if old in in_use:
                continue
            del self._models[key]
            for child in list(self._children):
                if old in child.models:
                    child.models.discard(old)
                    self._send(child, ("forget", old))

    def _dispatch(self) -> None:
        """Hand waiting calls to idle processes, loading the call's model first where
        the process does not have it."""
        for child in list(self._children):  # _gone replaces a child that is found gone
            if not child.idle:
                continue
            call = self._next_call()
            if call is None:
                return
            if call.token in child.models:
                self._run(child, call)
            else:
                self._load(child, call)

    def _next_call(self) -> ProcessCall | None:
        while self._waiting:
            call = self._waiting.popleft()
            if not call.given_up:
                return call
        return None

    def _load(self, child: _Child, call: ProcessCall) -> None:
        pickled = next((m[2] for m in self._models.values() if m[0] == call.token), None)
        if pickled is None:  # cannot happen (_forget_old keeps what calls use): say so
            call.fail(ModelProcessError(f"model {call.token} was forgotten while in use"))
            return
        child.loading = call
        self._send(child, ("model", call.token, pickled))

    def _run(self, child: _Child, call: ProcessCall) -> None:
        child.busy = call
        if self._send(child, ("call", call.id, call.token, call.inputs)):
            call.begin()

    def _send(self, child: _Child, msg: tuple[Any, ...]) -> bool:
        try:
            child.conn.send(msg)
        except (OSError, ValueError):  # the process is gone
            self._gone(child)
            return False
        return True

    def _readable(self, child: _Child) -> None:
        try:
            self._answer(child)
        except Exception:  # a callback that raised would leave every call waiting
            log.exception("model process %s: its message could not be taken", child.name)
            self._gone(child)

    def _answer(self, child: _Child) -> None:
        try:
            msg = child.conn.recv()
        except (EOFError, OSError):
            self._gone(child)
            return
        kind = msg[0]
        if kind == "ready":
            child.ready = True
            self._failed_starts = 0
            self._ready.set()
        elif kind == "loaded":
            child.models.add(msg[1])
            call, child.loading = child.loading, None
            if call is not None and call.id == 0:  # a preload: nothing to run
                call.begin()
            elif call is not None and not call.given_up:
                self._run(child, call)
                return
        else:
            _, call_id, payload = msg
            call, child.busy = child.busy, None
            if call is not None and call.id == call_id and not call.future.done():
                if kind == "done":
                    call.future.set_result(payload)
                else:
                    call.future.set_exception(payload)
        self._dispatch()

    def _gone(self, child: _Child, *, killed: bool = False) -> None:
        """``child`` died or was killed: fail its call, start another in its place."""
        if child not in self._children:
            return
        self._children.remove(child)
        self._close(child)
        try:  # its socket closed as it ended: it is leaving or gone
            code = child.proc.wait(EXIT_WAIT)
        except subprocess.TimeoutExpired:
            child.proc.kill()
            code = child.proc.wait()
        if child.busy is not None:
            child.busy.fail(
                ModelProcessError(
                    f"the model's process {child.name} ended during a call on "
                    f"{len(child.busy.inputs)} records (exit code {code})"
                )
            )
        loading = child.loading
        if loading is not None and loading.id == 0:
            loading.begin()  # a preload: the replacement loads the model on first use
        elif loading is not None:  # not begun: another process will take it
            self._waiting.appendleft(loading)
        if self._closed:
            return
        if not child.ready:
            self._failed_starts += 1
            if self._failed_starts >= MAX_FAILED_STARTS:
                self._give_up(
                    f"the model's process could not start ({self._failed_starts} tries, the "
                    f"last exit code {code}; its error is above, on the worker's stderr)"
                )
                return
        self.replaced += 1
        if not killed:
            log.warning("model process %s ended (exit code %s): starting another", child.name, code)
        self._spawn()

    def _give_up(self, reason: str) -> None:
        """No more processes: every call waiting, and every later one, fails."""
        self._broken = reason
        self._ready.set()
        log.error("%s", reason)
        while self._waiting:
            self._waiting.popleft().fail(ModelProcessError(reason))

    def _close(self, child: _Child) -> None:
        assert self._loop is not None
        with contextlib.suppress(OSError, ValueError):  # closed already
            self._loop.remove_reader(child.conn.fileno())
        child.conn.close()

    def abandon(self, call: ProcessCall) -> None:
        """The caller gave up on ``call`` (a timeout): a process still running it is
        killed and replaced; a call still waiting is dropped."""
        if call in self._waiting:
            self._waiting.remove(call)
            return
        for child in self._children:
            if child.busy is call:
                child.proc.kill()
                child.proc.wait()
                log.warning(
                    "a model call did not return: process %s killed and replaced", child.name
                )
                self._gone(child, killed=True)
                return

    def shutdown(self) -> None:
        """Close every process's connection (it then leaves), wait for them at most
        :data:`EXIT_WAIT` seconds, then kill what is left (a call that never returns)."""
        if self._closed:
            return
        self._closed = True
        for call in self._waiting:
            call.future.cancel()
        self._waiting.clear()
        children, self._children = self._children, []
        for child in children:
            self._close(child)
            for running in (child.busy, child.loading):
                if running is not None:
                    running.future.cancel()
        deadline = time.monotonic() + EXIT_WAIT
        for child in children:
            try:
                child.proc.wait(max(deadline - time.monotonic(), 0.0))
            except subprocess.TimeoutExpired:
                child.proc.kill()
                child.proc.wait()
