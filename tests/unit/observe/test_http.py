"""The metrics endpoint: Prometheus text on /metrics, /health, loopback by default."""

from __future__ import annotations

import asyncio

from headrace.observe.http import MetricsServer
from headrace.observe.metrics import PipelineMetrics


async def get(port: int, path: str, method: str = "GET") -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    head, _, body = data.decode().partition("\r\n\r\n")
    return int(head.split()[1]), body


async def test_metrics_and_health_are_served_on_loopback() -> None:
    metrics = PipelineMetrics()
    metrics.records_out.inc(42)
    healthy = [True]
    server = MetricsServer(metrics.registry, port=0, healthy=lambda: healthy[0])
    await server.start()
    try:
        assert server.host == "127.0.0.1"
        status, body = await get(server.port, "/metrics")
        assert status == 200
        assert "headrace_records_out_total 42.0" in body
        assert "headrace_end_to_end_latency_seconds_bucket" in body
        assert (await get(server.port, "/health"))[0] == 200
        healthy[0] = False
        assert (await get(server.port, "/health"))[0] == 503
        assert (await get(server.port, "/nope"))[0] == 404
        assert (await get(server.port, "/metrics", method="POST"))[0] == 405
    finally:
        await server.stop()
