"""The HTTP server of a running pipeline, on aiohttp in the engine's event loop, on
loopback unless told otherwise.

==========================  ==========================================================
``GET /``                   the live dashboard (a page, its script and style; no CDN)
``GET /metrics``            Prometheus text
``GET /health``             liveness: 200 while running, 503 once stopping or failed
``GET /ready``              readiness: 200 only with partitions assigned, window state
                            restored and the model loaded; 503 (with why) otherwise
``GET /api/status``         what the dashboard shows, as JSON (``?history=1`` adds the
                            last few minutes of chart points)
``GET /api/events``         the same, as server-sent events, about once a second
``POST /admin/...``         the operator's actions, only with ``Authorization: Bearer
                            <token>`` and only when a token is configured (404 otherwise)
==========================  ==========================================================
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
from importlib import resources
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from headrace.observe.api import MetricsPortError, Operations, Refused
from headrace.observe.status import StatusBoard

#: The dashboard's files, served from the package (``headrace/observe/dashboard``).
_PAGES = {
    "/": ("index.html", "text/html"),
    "/dashboard.js": ("dashboard.js", "text/javascript"),
    "/dashboard.css": ("dashboard.css", "text/css"),
}
# The page loads nothing but its own files and talks only to this server.
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


def _bearer(request: web.Request) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def _json(body: Any, status: int = 200) -> web.Response:
    return web.json_response(body, status=status, dumps=lambda o: json.dumps(o, default=str))


class MetricsServer:
    """Serves the endpoints in the module docstring for ``ops`` (``None``: only
    ``/metrics``, and ``/health`` and ``/ready`` always 200).

    It binds 127.0.0.1 by default: exposing it on other interfaces is an explicit choice.
    Admin calls are off unless ``admin_token`` is set, and need it then (compared in
    constant time).
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        host: str = "127.0.0.1",
        port: int = 9108,
        ops: Operations | None = None,
        admin_token: str | None = None,
        status_every: float = 1.0,
    ) -> None:
        self.registry = registry
        self.host = host
        self.port = port
        self.ops = ops
        self.admin_token = admin_token
        self.board = StatusBoard(ops.status, every=status_every) if ops is not None else None
        self._runner: web.AppRunner | None = None
        self._sampler: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    async def start(self) -> None:
        """Listen on ``host:port``; raises :class:`MetricsPortError` in one sentence (what
        is wrong, and what to do) if it cannot."""
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/health", self._health)
        app.router.add_get("/ready", self._ready)
        if self.board is not None:
            for path in _PAGES:
                app.router.add_get(path, self._page)
            app.router.add_get("/api/status", self._status)
            app.router.add_get("/api/events", self._events)
        app.router.add_post("/admin/{action:.+}", self._admin)
        # No access log: a scrape a second is noise, and lines could carry tokens' paths.
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise MetricsPortError(self.host, self.port, exc) from None
        self._runner = runner
        if self.port == 0:
            self.port = runner.addresses[0][1]
        if self.board is not None:
            self._sampler = asyncio.create_task(self.board.run(), name="headrace-status")

    async def stop(self) -> None:
        self._closing.set()  # event streams end now rather than at the shutdown timeout
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
            self._sampler = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- handlers ------------------------------------------------------------------------

    async def _metrics(self, request: web.Request) -> web.Response:
        body = await asyncio.to_thread(generate_latest, self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _health(self, request: web.Request) -> web.Response:
        if self.ops is None or self.ops.healthy():
            return _json({"status": "ok"})
        return _json({"status": "stopping"}, 503)

    async def _ready(self, request: web.Request) -> web.Response:
        why = self.ops.ready() if self.ops is not None else None
        if why is None:
            return _json({"status": "ready"})
        return _json({"status": "not ready", "reason": why}, 503)

    async def _page(self, request: web.Request) -> web.Response:
        name, ctype = _PAGES[request.path]
        body = resources.files("headrace.observe").joinpath("dashboard", name).read_bytes()
        return web.Response(body=body, content_type=ctype, headers=_PAGE_HEADERS)

    async def _status(self, request: web.Request) -> web.Response:
        assert self.board is not None
        body = dict(self.board.current())
        if request.query.get("history") in ("1", "true"):
            body["history"] = self.board.history()
        return _json(body)

    async def _events(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events: the status, each time the board samples it."""
        board = self.board
        assert board is not None
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"}
        )
        await response.prepare(request)
        closing = asyncio.create_task(self._closing.wait())
        try:
            status = board.current()
            while not self._closing.is_set():
                line = json.dumps(status, default=str)
                await response.write(f"data: {line}\n\n".encode())
                sampled = asyncio.create_task(board.wait())
                done, _ = await asyncio.wait(
                    {sampled, closing}, return_when=asyncio.FIRST_COMPLETED
                )
                if sampled not in done:
                    sampled.cancel()
                    break
                status = sampled.result()
        except (ConnectionError, asyncio.CancelledError):
            pass  # the page went away
        finally:
            closing.cancel()
        return response

    async def _admin(self, request: web.Request) -> web.Response:
        """An admin action: only with ``Authorization: Bearer <token>``, and only when a
        token was configured (admin calls are off otherwise)."""
        action = self.ops.actions().get(request.path) if self.ops is not None else None
        if self.admin_token is None or action is None:
            return web.Response(status=404, text="not found\n")
        given = _bearer(request)
        if given is None or not hmac.compare_digest(
            given.encode("utf-8", "replace"), self.admin_token.encode("utf-8")
        ):
            return web.Response(status=401, text="a valid bearer token is required\n")
        try:
            body = await action()
        except Refused as exc:
            return _json({"status": "refused", "error": str(exc)}, 409)
        return _json(body, 202)
