"""A real HTTP endpoint for the webhook tests: `from webhook_server import AlertServer`.

An aiohttp server on a free 127.0.0.1 port, in a thread of its own (so that it answers
while a test's event loop is busy, or while the test waits on a `headrace run`
subprocess). What it answers is scripted: a queue of replies (:class:`Reply`,
:class:`Hang`) taken one per request, then ``default``. It can be stopped (the port then
refuses connections) and started again on the same port.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web

T = TypeVar("T")


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: str = "ok"
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Hang:
    """Answer nothing for ``seconds`` (longer than the client's timeout), then 200."""

    seconds: float = 3.0


@dataclass(frozen=True)
class Request:
    at: float  # time.monotonic()
    headers: dict[str, str]
    body: bytes
    status: int | None  # what it was answered; None: left hanging

    def json(self) -> Any:
        return json.loads(self.body)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class AlertServer:
    """``requests``: every request received, with what it was answered."""

    def __init__(self, port: int | None = None, *, path: str = "/hooks/secret-path") -> None:
        self.port = port or free_port()
        self.path = path
        self.default: Reply | Hang = Reply()
        self.plan: deque[Reply | Hang] = deque()
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def start(self) -> AlertServer:
        self._call(self._start())
        return self

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post(self.path, self._handle)
        runner = web.AppRunner(app, shutdown_timeout=0.1, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        self._runner = runner

    def stop(self) -> None:
        """Close the port: connections are refused until :meth:`start`."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            self._call(runner.cleanup())

    def close(self) -> None:
        self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def __enter__(self) -> AlertServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def answer(self, *replies: Reply | Hang) -> None:
        """The next requests get these replies, in order."""
        with self._lock:
            self.plan.extend(replies)

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        with self._lock:
            reply = self.plan.popleft() if self.plan else self.default
        if isinstance(reply, Hang):
            self._record(request, body, None)
            await asyncio.sleep(reply.seconds)
            return web.Response(status=200, text="late")
        self._record(request, body, reply.status)
        return web.Response(status=reply.status, text=reply.body, headers=reply.headers)

    def _record(self, request: web.Request, body: bytes, status: int | None) -> None:
        with self._lock:
            self.requests.append(Request(time.monotonic(), dict(request.headers), body, status))

    def answered(self, status: int = 200) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.status == status]

    def delivered(self) -> list[Any]:
        """Every alert of a JSON-array body answered with a 2xx, in arrival order."""
        return [a for r in self.answered() for a in r.json()]

    def wait(self, condition: Callable[[], bool], timeout: float = 20.0) -> None:
        """Block until ``condition()`` (for tests that wait on a subprocess)."""
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not met within {timeout}s")
            time.sleep(0.01)
