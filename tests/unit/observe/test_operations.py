"""The HTTP server over a running engine: /ready, /api/status and its event stream, and
the operator's calls (pause, resume, rollback), in-process with aiohttp's client."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp

from headrace import CallableModel, Pipeline
from headrace.runtime.engine import Engine
from helpers import MemorySink, wait_for
from version_helpers import FakeSource, FeedSource, make_records

TOKEN = "op-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def plus(k: int) -> Any:
    return lambda xs: [x["x"] + 1000 * k for x in xs]


@asynccontextmanager
async def running(
    versions: FakeSource | None = None, **sink_filter: Any
) -> AsyncIterator[tuple[Engine, FeedSource, MemorySink, str]]:
    """A pipeline fed by hand, with its HTTP server on a free port; yields the engine, its
    source, its sink and the server's base URL."""
    source, sink = FeedSource(), MemorySink()
    engines: list[Engine] = []
    pipeline = Pipeline("ops").source(source)
    if versions is not None:
        pipeline = pipeline.model_source(versions, poll_interval=3600)
    else:
        pipeline = pipeline.model(
            CallableModel(lambda xs: [x["x"] for x in xs], name="ident", version="7")
        )
    pipeline = (
        pipeline.sink(sink, **sink_filter)
        .batching(max_size=10, max_wait=0.005)
        .metrics(port=0)
        .admin(TOKEN)
    )
    run = asyncio.create_task(
        pipeline.run_async(install_signal_handlers=False, on_start=engines.append)
    )
    try:
        # Serving starts before the model loads: wait for both (under load, a call made
        # before the model serves was answered "no model is serving yet").
        await wait_for(
            lambda: bool(engines) and engines[0].served_at is not None and not engines[0].ready()
        )
        engine = engines[0]
        assert engine.served_at is not None
        yield engine, source, sink, engine.served_at.rstrip("/")
    finally:
        if engines:
            engines[0].pause_reading(False)  # a failed assertion may leave it paused
        source.end()
        await run


async def get_json(http: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with http.get(url) as resp:
        return resp.status, await resp.json()


async def test_ready_status_and_the_event_stream_follow_the_run() -> None:
    async with running() as (engine, source, sink, base), aiohttp.ClientSession() as http:
        assert base.startswith("http://127.0.0.1:")
        assert await get_json(http, base + "/ready") == (200, {"status": "ready"})
        source.put(make_records(0, 30))
        await wait_for(lambda: len(sink.outputs) == 30)
        # The board samples once a second: wait for a status that has seen the records.
        async with http.get(base + "/api/events") as events:
            assert events.headers["Content-Type"] == "text/event-stream"
            seen: dict[str, Any] = {}
            async for line in events.content:
                if line.startswith(b"data: "):
                    seen = json.loads(line[6:])
                    if seen["totals"]["out"] == 30:
                        break
        assert seen["pipeline"] == "ops" and seen["state"] == "running" and seen["ready"]
        assert seen["model"]["name"] == "ident" and seen["model"]["version"] == "7"
        assert seen["written"] == {sink.name: 30}
        assert seen["point"]["time"] == seen["time"]
        status, body = await get_json(http, base + "/api/status?history=1")
        assert status == 200 and body["totals"]["in"] == 30
        assert body["history"] and body["history"][-1]["time"] <= body["time"]
        engine.stop()
        status, body = await get_json(http, base + "/ready")
        assert (status, body) == (503, {"status": "not ready", "reason": "stopping"})


async def test_the_dashboard_is_served_with_its_own_files_only() -> None:
    async with running() as (_engine, _source, _sink, base), aiohttp.ClientSession() as http:
        async with http.get(base + "/") as page:
            html = await page.text()
            assert page.status == 200 and page.content_type == "text/html"
            assert page.headers["Content-Security-Policy"].startswith("default-src 'self'")
        assert 'src="/dashboard.js"' in html and 'href="/dashboard.css"' in html
        assert "http" not in html.split("<footer")[0]  # nothing loaded from elsewhere
        for path, ctype in (("/dashboard.js", "text/javascript"), ("/dashboard.css", "text/css")):
            async with http.get(base + path) as resp:
                assert resp.status == 200 and resp.content_type == ctype


async def test_pause_holds_reading_until_resume() -> None:
    async with running() as (engine, source, sink, base), aiohttp.ClientSession() as http:
        async with http.post(base + "/admin/pause") as resp:
            assert resp.status == 401  # no token
        async with http.post(base + "/admin/pause", headers=AUTH) as resp:
            assert resp.status == 202
            assert await resp.json() == {"status": "paused", "paused": ["operator"]}
        source.put(make_records(0, 20))
        # Paused: the next status says so, and none read a record.
        for _ in range(2):
            body = await engine_board_tick(http, base)
            assert body["state"] == "paused" and body["paused"] == ["operator"]
            assert body["totals"]["in"] == 0
        assert engine.stats.records_in == 0 and sink.outputs == []
        async with http.post(base + "/admin/resume", headers=AUTH) as resp:
            assert resp.status == 202
            assert await resp.json() == {"status": "resumed", "paused": []}
        await wait_for(lambda: len(sink.outputs) == 20)


async def engine_board_tick(http: aiohttp.ClientSession, base: str) -> dict[str, Any]:
    """The next status the board samples (about a second from now)."""
    async with http.get(base + "/api/events") as events:
        seen = 0
        async for line in events.content:
            if line.startswith(b"data: "):
                seen += 1
                if seen == 2:  # the first is the one sampled before
                    status: dict[str, Any] = json.loads(line[6:])
                    return status
    raise AssertionError("the event stream ended")


async def test_rollback_goes_back_to_the_version_before_and_is_shown() -> None:
    versions = FakeSource({"1": plus(1), "2": plus(2), "3": plus(3)}, "1")
    async with running(versions) as (engine, source, sink, base), aiohttp.ClientSession() as http:
        async with http.post(base + "/admin/models/rollback", headers=AUTH) as resp:
            assert resp.status == 409  # version 1 has nothing before it
            assert "no earlier version" in (await resp.json())["error"]
        versions.point("2")
        async with http.post(base + "/admin/models/check", headers=AUTH) as resp:
            assert resp.status == 202
        await wait_for(lambda: engine.model.version == "2")
        # On probation: back to the version it replaced, and the alias moves back.
        async with http.post(base + "/admin/models/rollback", headers=AUTH) as resp:
            assert resp.status == 202
            assert (await resp.json())["serving"].endswith("1")
        assert engine.model.version == "1"
        await asyncio.to_thread(versions.rolled.wait, 5)
        assert versions.current == "1"
        source.put(make_records(0, 5))
        await wait_for(lambda: len(sink.outputs) == 5)
        assert {o["model"]["version"] for o in sink.outputs} == {"1"}
        body = await engine_board_tick(http, base)
        history = [(e["outcome"], e["version"]) for e in body["model"]["history"]]
        assert [h[0] for h in history] == ["serving", "swapped", "rolled_back"]
        assert body["model"]["updates"] == {"swapped": 1, "rolled_back": 1}


async def test_rollback_after_probation_moves_the_alias_back() -> None:
    versions = FakeSource({"1": plus(1), "2": plus(2)}, "1")
    async with running(versions) as (engine, _source, _sink, base), aiohttp.ClientSession() as http:
        manager = engine.rollout.manager if engine.rollout else None
        assert manager is not None
        versions.point("2")
        await manager.check()
        manager.previous = None  # probation over: nothing kept to fall back on
        async with http.post(base + "/admin/models/rollback", headers=AUTH) as resp:
            assert resp.status == 202, await resp.text()
        assert engine.model.version == "1" and versions.current == "1"
        assert versions.rolled_back == ["2"]
        # Never taken again in this run, even when the alias names it once more.
        versions.point("2")
        assert not await manager.check()


async def test_recent_alerts_are_the_outputs_a_filtered_sink_took() -> None:
    async with (
        running(above=14.5) as (_engine, source, sink, base),
        aiohttp.ClientSession() as http,
    ):
        source.put(make_records(0, 40))
        await wait_for(lambda: len(sink.outputs) == 25)
        alerts = (await engine_board_tick(http, base))["alerts"]
        assert len(alerts) == 20  # the latest 20
        assert [a["prediction"] for a in alerts] == [float(i) for i in range(20, 40)]
        assert {a["sink"] for a in alerts} == {sink.name}
