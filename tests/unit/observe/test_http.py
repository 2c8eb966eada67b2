"""The metrics endpoint: Prometheus text on /metrics, /health, loopback by default; admin
calls only with the configured bearer token."""

from __future__ import annotations

import asyncio
import errno
import json
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from headrace import Pipeline
from headrace.observe.http import MetricsPortError, MetricsServer, Refused
from headrace.observe.metrics import PipelineMetrics
from headrace.runtime.engine import Engine
from helpers import MemorySink, wait_for
from version_helpers import FakeSource, FeedSource, make_records


class FakeOps:
    """The operations a server asks for, as a unit test sets them."""

    def __init__(self) -> None:
        self.alive = True
        self.why_not_ready: str | None = None
        self.calls: list[str] = []

    def healthy(self) -> bool:
        return self.alive

    def ready(self) -> str | None:
        return self.why_not_ready

    def status(self) -> dict[str, Any]:
        return {
            "time": 0.0,
            "totals": {"in": 0, "out": 0, "batches": 0, "batched_records": 0},
            "latency": {"p50": None, "p99": None},
            "in_flight": {"records": 0},
            "lag": [],
        }

    def actions(self) -> dict[str, Callable[[], Awaitable[dict[str, Any]]]]:
        async def check() -> dict[str, Any]:
            self.calls.append("check")
            return {"status": "accepted"}

        async def refuse() -> dict[str, Any]:
            raise Refused("nothing to roll back to")

        return {"/admin/models/check": check, "/admin/models/rollback": refuse}


async def get(port: int, path: str, method: str = "GET") -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    head, _, body = data.decode().partition("\r\n\r\n")
    return int(head.split()[1]), body


async def test_metrics_and_health_are_served_on_loopback() -> None:
    metrics = PipelineMetrics()
    metrics.records_out.inc(42)
    ops = FakeOps()
    server = MetricsServer(metrics.registry, port=0, ops=ops)
    await server.start()
    try:
        assert server.host == "127.0.0.1"
        status, body = await get(server.port, "/metrics")
        assert status == 200
        assert "headrace_records_out_total 42.0" in body
        assert "headrace_end_to_end_latency_seconds_bucket" in body
        assert (await get(server.port, "/health"))[0] == 200
        ops.alive = False
        assert (await get(server.port, "/health"))[0] == 503
        assert (await get(server.port, "/nope"))[0] == 404
        assert (await get(server.port, "/metrics", method="POST"))[0] == 405
    finally:
        await server.stop()


# -- admin calls -----------------------------------------------------------------------------


async def post(port: int, path: str, *headers: str) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = "".join(f"{h}\r\n" for h in headers)
    writer.write(f"POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{head}\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    status, _, body = data.decode().partition("\r\n\r\n")
    return int(status.split()[1]), body


async def admin_server(token: str | None) -> tuple[MetricsServer, list[str]]:
    ops = FakeOps()
    server = MetricsServer(PipelineMetrics().registry, port=0, admin_token=token, ops=ops)
    await server.start()
    return server, ops.calls


async def test_admin_calls_are_off_without_a_token() -> None:
    """No token configured: the admin paths do not exist, whatever the request bears."""
    server, calls = await admin_server(None)
    try:
        assert server.host == "127.0.0.1"
        assert (await post(server.port, "/admin/models/check"))[0] == 404
        bearer = "Authorization: Bearer anything"
        assert (await post(server.port, "/admin/models/check", bearer))[0] == 404
        assert calls == []
    finally:
        await server.stop()


async def test_admin_calls_need_the_right_bearer_token() -> None:
    server, calls = await admin_server("s3cret-token")
    try:
        assert server.host == "127.0.0.1"  # loopback by default, token or not
        path = "/admin/models/check"
        for headers in (
            (),
            ("Authorization: Bearer wrong",),
            ("Authorization: Bearer s3cret-toke",),
            ("Authorization: Bearer s3cret-token-and-more",),
            ("Authorization: Basic s3cret-token",),
            ("Authorization: s3cret-token",),
            ("X-Token: s3cret-token",),
        ):
            assert (await post(server.port, path, *headers))[0] == 401, headers
        assert calls == []
        # GET does not run an action, even with the token.
        assert (await get(server.port, path))[0] == 405
        status, body = await post(server.port, path, "authorization: bearer  s3cret-token")
        assert (status, json.loads(body)) == (202, {"status": "accepted"})
        assert calls == ["check"]
        bearer = "Authorization: Bearer s3cret-token"
        assert (await post(server.port, "/admin/nope", bearer))[0] == 404
        assert (await post(server.port, "/admin/models/check?now=1", bearer))[0] == 202
        assert calls == ["check", "check"]
    finally:
        await server.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_the_admin_call_makes_a_running_pipeline_look_for_a_new_version() -> None:
    """run_engine wires POST /admin/models/check to the engine: with the token, the model
    manager looks now (its poll interval is an hour) and the next batches use version 2."""

    def plus(k: int) -> Any:
        return lambda xs: [x["x"] + 1000 * k for x in xs]

    versions = FakeSource({"1": plus(1), "2": plus(2)}, "1")
    source, sink = FeedSource(), MemorySink()
    port = free_port()
    engines: list[Engine] = []
    pipeline = (
        Pipeline("admin")
        .source(source)
        .model_source(versions, poll_interval=3600)
        .sink(sink)
        .batching(max_size=10, max_wait=0.005)
        .metrics(port=port)
        .admin("tok")
    )
    run = asyncio.create_task(
        pipeline.run_async(install_signal_handlers=False, on_start=engines.append)
    )
    try:
        source.put(make_records(0, 10))
        await wait_for(lambda: len(sink.outputs) == 10)
        versions.point("2")
        assert (await post(port, "/admin/models/check", "Authorization: Bearer nope"))[0] == 401
        assert (await post(port, "/admin/models/check", "Authorization: Bearer tok"))[0] == 202
        await wait_for(lambda: engines[0].model.version == "2")
        source.put(make_records(10, 10))
        await wait_for(lambda: len(sink.outputs) == 20)
    finally:
        source.end()
    await run
    assert [o["model"]["version"] for o in sink.outputs] == ["1"] * 10 + ["2"] * 10
    assert versions.polls == 2  # start, and the admin call: no poll in between


async def test_a_port_in_use_is_one_sentence_naming_it() -> None:
    """A port another process holds: an OSError (EADDRINUSE) whose message names the
    address and says what to do, not asyncio's bind error."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        server = MetricsServer(PipelineMetrics().registry, port=port)
        with pytest.raises(MetricsPortError) as info:
            await server.start()
    assert info.value.errno == errno.EADDRINUSE
    assert str(info.value) == (
        f"cannot serve metrics on 127.0.0.1:{port}: the port is already in use; stop what "
        "holds it, or choose another port (0 picks a free one)"
    )
