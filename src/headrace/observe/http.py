"""A small HTTP server for /metrics, /health and token-guarded admin calls, on loopback
unless told otherwise."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hmac
from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from headrace.errors import HeadraceError

_MAX_REQUEST = 8192


class MetricsPortError(HeadraceError, OSError):
    """The metrics server cannot listen where it was told to (the port is taken, or not
    ours to take). Raised before the pipeline reads anything; the message says what is
    wrong and what to do, in one sentence."""

    def __init__(self, host: str, port: int, cause: OSError) -> None:
        if cause.errno == errno.EADDRINUSE:
            why = "the port is already in use; stop what holds it, or choose another port"
            why += " (0 picks a free one)"
        elif cause.errno == errno.EACCES:
            why = "no permission to use the port; choose one above 1023"
        else:
            why = f"{cause.strerror or cause}; check the host and port"
        super().__init__(f"cannot serve metrics on {host}:{port}: {why}")
        self.errno = cause.errno
        self.host = host
        self.port = port


def _bearer(headers: list[bytes]) -> str | None:
    for line in headers:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"authorization":
            scheme, _, token = value.strip().partition(b" ")
            if scheme.lower() == b"bearer":
                return token.strip().decode("utf-8", "replace")
    return None


class MetricsServer:
    """Serves ``GET /metrics`` (Prometheus text format) and ``GET /health``.

    ``/health`` answers 200 while ``healthy()`` is true and 503 otherwise. It binds
    127.0.0.1 by default: exposing it on other interfaces is an explicit choice.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        host: str = "127.0.0.1",
        port: int = 9108,
        healthy: Callable[[], bool] = lambda: True,
        admin_token: str | None = None,
        admin: Mapping[str, Callable[[], Any]] | None = None,
    ) -> None:
        self.registry = registry
        self.host = host
        self.port = port
        self.healthy = healthy
        self.admin_token = admin_token
        self.admin = dict(admin or {})
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        """Listen on ``host:port``; raises :class:`MetricsPortError` in one sentence (what
        is wrong, and what to do) if it cannot."""
        try:
            self._server = await asyncio.start_server(self._serve, self.host, self.port)
        except OSError as exc:
            raise MetricsPortError(self.host, self.port, exc) from None
        if self.port == 0:
            self.port = self._server.sockets[0].getsockname()[1]

    def _admin(self, path: str, headers: list[bytes]) -> tuple[str, str, bytes]:
        """An admin action: only with ``Authorization: Bearer <token>``, and only when a
        token was configured (admin calls are off otherwise)."""
        action = self.admin.get(path)
        if self.admin_token is None or action is None:
            return "404 Not Found", "text/plain", b"not found\n"
        given = _bearer(headers)
        if given is None or not hmac.compare_digest(given, self.admin_token):
            return "401 Unauthorized", "text/plain", b"a valid bearer token is required\n"
        action()
        return "202 Accepted", "application/json", b'{"status":"accepted"}\n'

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(5):
                head = await reader.readuntil(b"\r\n\r\n")
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            writer.close()
            return
        lines = head[:_MAX_REQUEST].split(b"\r\n")
        parts = lines[0].split()
        method = parts[0] if parts else b""
        path = parts[1].split(b"?", 1)[0] if len(parts) > 1 else b""
        if method == b"POST" and path.startswith(b"/admin/"):
            status, ctype, body = self._admin(path.decode("ascii", "replace"), lines[1:])
        elif method != b"GET":
            status, ctype, body = "405 Method Not Allowed", "text/plain", b"GET only\n"
        elif path == b"/metrics":
            body = await asyncio.to_thread(generate_latest, self.registry)
            status, ctype = "200 OK", CONTENT_TYPE_LATEST
        elif path == b"/health":
            ok = self.healthy()
            status = "200 OK" if ok else "503 Service Unavailable"
            ctype, body = (
                "application/json",
                b'{"status":"ok"}\n' if ok else b'{"status":"stopping"}\n',
            )
        else:
            status, ctype, body = "404 Not Found", "text/plain", b"not found\n"
        writer.write(
            f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n".encode()
            + body
        )
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()
