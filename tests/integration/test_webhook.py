"""The webhook sink against a real HTTP server (`webhook_server.AlertServer`): failures
and retries, dead letters, the cooldown, an endpoint that is down, and secrets kept out
of logs. No HTTP mocks: every request crosses a socket."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cli_helpers import HEADRACE, pipeline_yaml
from headrace import CallableModel, Pipeline, PipelineError
from headrace.connectors.base import SinkContext
from headrace.connectors.webhook import WebhookSink
from headrace.observe.metrics import PipelineMetrics
from headrace.record import ModelRef, Record, ScoredBatch
from headrace.runtime.engine import Engine
from headrace.testing import Input, TestingSink, TestingSource
from helpers import wait_for
from webhook_server import AlertServer, Hang, Reply

TOKEN = "tok-5ecret-42"


@pytest.fixture
def server() -> Iterator[AlertServer]:
    with AlertServer() as s:
        yield s


def inputs(n: int, *, seed: int = 0, keys: int | None = None) -> list[Input]:
    rng = random.Random(seed)
    return [
        Input({"id": i, "score": rng.random()}, key=f"k{i % keys if keys else i}") for i in range(n)
    ]


def score(xs: list[Any]) -> list[float]:
    return [x["score"] for x in xs]


def webhook(server: AlertServer, **kw: Any) -> WebhookSink:
    settings: dict[str, Any] = {
        "headers": {"Authorization": f"Bearer {TOKEN}"},
        "max_records": 4,
        "max_wait": 0.02,
        "timeout": 2.0,  # long: a loaded machine must not turn a 200 into a retry
        "retries": 5,
        "name": "alerts",
        "backoff_first": 0.01,
        **kw,
    }
    return WebhookSink(server.url, **settings)


def pipeline(
    items: list[Input],
    sink: WebhookSink,
    dead: TestingSink | None,
    *,
    above: float | None = 0.9,
    **flow: Any,
) -> tuple[Engine, TestingSource]:
    source = TestingSource(items, chunk_size=25)
    p = (
        Pipeline("alerts")
        .source(source)
        .model(CallableModel(score, name="m", version="1"))
        .sink(sink, above=above)
        .batching(max_size=16, max_wait=0.005)
    )
    if dead is not None:
        p.dead_letter(dead)
    if flow:
        p.flow(**flow)
    return p.build(), source


def ids(alerts: list[Any]) -> list[int]:
    return [a["input"]["id"] for a in alerts]


async def test_every_alert_arrives_through_500_429_and_a_timeout_and_no_other(
    server: AlertServer,
) -> None:
    server.start()
    server.answer(
        Reply(500, "boom"), Reply(429, "slow down", {"Retry-After": "1"}), Hang(1.5), Reply(503)
    )
    items = inputs(400)
    expected = {i.value["id"] for i in items if i.value["score"] > 0.9}
    dead = TestingSink("dead")
    engine, source = pipeline(items, webhook(server, timeout=0.5), dead)
    summary = await engine.run()

    delivered = ids(server.delivered())
    assert set(delivered) == expected, "every matching output arrives at least once"
    assert not set(delivered) - expected, "nothing that did not match the filter"
    assert dead.failures == []
    assert source.committed == {("testing", 0): 400}
    assert summary.written == {"alerts": len(expected)}
    statuses = [r.status for r in server.requests]
    assert statuses[:5] == [500, 429, None, 503, 200]
    after_429 = server.requests[2].at - server.requests[1].at
    assert after_429 >= 0.95, "Retry-After: 1 is honoured"
    assert all(len(r.json()) <= 4 for r in server.requests), "max_records per POST"
    assert all(r.headers["Authorization"] == f"Bearer {TOKEN}" for r in server.requests)
    assert all(r.headers["Content-Type"] == "application/json" for r in server.requests)


async def test_a_400_sends_the_alert_to_the_dead_letters_with_the_response(
    server: AlertServer,
) -> None:
    server.start()
    # The endpoint quotes the token back: the dead letter must not.
    server.answer(
        Reply(400, f"invalid_payload: no channel for {TOKEN} at {server.path}\n" + "x" * 5000)
    )
    items = inputs(200, seed=1)
    expected = [i.value["id"] for i in items if i.value["score"] > 0.9]
    dead = TestingSink("dead")
    engine, source = pipeline(items, webhook(server, max_records=1), dead)
    summary = await engine.run()

    [letter] = dead.failures
    assert letter.record.value["id"] == expected[0]
    assert (letter.stage, letter.error_type, letter.attempts) == ("output", "output-rejected", 1)
    assert letter.error.startswith("webhook sink 'alerts': HTTP 400: 'invalid_payload: no channel")
    assert TOKEN not in letter.error and "***" in letter.error
    assert len(letter.error) < 300, "a bounded snippet of the body"
    assert server.path not in letter.error and server.url not in letter.error
    assert sorted(ids(server.delivered())) == expected[1:]
    assert summary.written == {"alerts": len(expected) - 1}
    assert summary.records_failed == 1
    assert engine.metrics.records_failed.labels("output")._value.get() == 1
    assert source.committed == {("testing", 0): 200}


async def test_retries_exhausted_dead_letter_the_alerts_and_without_a_dead_letter_sink_stop(
    server: AlertServer,
) -> None:
    server.start()
    server.default = Reply(503, "maintenance")
    items = inputs(60, seed=2)
    expected = {i.value["id"] for i in items if i.value["score"] > 0.9}
    dead = TestingSink("dead")
    engine, _ = pipeline(items, webhook(server, retries=2), dead)
    await engine.run()
    assert {f.record.value["id"] for f in dead.failures} == expected
    assert {(f.error_type, f.attempts) for f in dead.failures} == {("output-retries-exhausted", 3)}
    assert all("HTTP 503: 'maintenance', after 3 attempts" in f.error for f in dead.failures)

    # No dead-letter sink: the pipeline stops, and the alert's position is not committed.
    server.default = Reply(400, "no")
    engine, source = pipeline(items, webhook(server, retries=0), None)
    with pytest.raises(PipelineError, match=r"failed at stage 'output' \(output-rejected\)"):
        await engine.run()
    first = min(expected)
    assert source.committed.get(("testing", 0), 0) <= first


async def test_the_cooldown_suppresses_repeats_of_a_key_and_counts_them(
    server: AlertServer,
) -> None:
    server.start()
    items = inputs(300, seed=3, keys=3)
    matching = [i for i in items if i.value["score"] > 0.5]
    dead = TestingSink("dead")
    engine, _ = pipeline(items, webhook(server, cooldown=60.0), dead, above=0.5)
    summary = await engine.run()

    delivered = server.delivered()
    assert sorted(a["key"] for a in delivered) == ["k0", "k1", "k2"], "one per key"
    firsts = {}
    for i in matching:
        firsts.setdefault(i.key, i.value["id"])
    assert sorted(ids(delivered)) == sorted(firsts.values()), "the first of each key"
    suppressed = len(matching) - 3
    assert engine.outputs.sinks[0].sink.suppressed == suppressed  # type: ignore[attr-defined]
    sample = engine.metrics.registry.get_sample_value(
        "headrace_alerts_suppressed_total", {"sink": "alerts"}
    )
    assert sample == suppressed
    assert summary.written == {"alerts": len(matching)}, "suppressed alerts count as written"


async def test_a_template_field_missing_from_an_output_dead_letters_that_alert(
    server: AlertServer,
) -> None:
    server.start()
    items = [Input({"id": 1, "score": 1.0, "where": "hall"}), Input({"id": 2, "score": 1.0})]
    dead = TestingSink("dead")
    sink = webhook(server, template="{{ input.where }}: {{ prediction }}")
    engine, _ = pipeline(items, sink, dead)
    await engine.run()
    assert [r.body for r in server.answered()] == [b"hall: 1.0"]
    [letter] = dead.failures
    assert (letter.record.value["id"], letter.error_type) == (2, "missing-field")
    assert "'dict object' has no attribute 'where'" in letter.error
    assert server.requests[0].headers["Content-Type"] == "text/plain; charset=utf-8"


@pytest.mark.slow
async def test_a_webhook_that_is_down_pauses_the_pipeline_and_nothing_is_lost(
    server: AlertServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    items = [Input({"id": i, "score": 1.0}) for i in range(400)]
    dead = TestingSink("dead")
    sink = webhook(server, backoff_cap=0.05)
    engine, source = pipeline(items, sink, dead, max_in_flight=40)
    run = asyncio.create_task(engine.run())

    await wait_for(lambda: sink.down, timeout=10)
    paused = engine.metrics.source_paused.labels("in-flight")
    await wait_for(lambda: paused._value.get() == 1, timeout=10)
    read = engine.stats.records_in
    assert read < 400, "the source is paused, not drained into memory"
    tries = sink.posts
    await wait_for(lambda: sink.posts >= tries + 3, timeout=10)  # three more tries, refused
    assert engine.stats.records_in == read
    assert not run.done() and dead.failures == []

    server.start()
    summary = await asyncio.wait_for(run, 20)
    assert Counter(ids(server.delivered())) == Counter(range(400)), "each once, none lost"
    assert dead.failures == [] and summary.written == {"alerts": 400}
    assert source.committed == {("testing", 0): 400}
    assert not sink.down
    # What Headrace logs (the test server's own access log names its path, of course).
    text = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("headrace"))
    assert "webhook sink 'alerts' is unavailable (cannot connect: Connection refused)" in text
    assert "webhook sink 'alerts' answers again" in text
    for secret in (TOKEN, server.path, str(server.port)):
        assert secret not in text, "neither the URL nor a header is logged"


async def test_a_connection_not_made_in_time_is_an_outage_not_a_failed_attempt() -> None:
    """A listener whose backlog is full never completes a connection: the endpoint is not
    reachable, so the alert waits (retried past ``retries``), and is not dead-lettered."""
    with contextlib.ExitStack() as stack:
        listener = stack.enter_context(socket.socket())
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        for _ in range(4):  # fill the backlog: later connections are never answered
            filler = stack.enter_context(socket.socket())
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
        failed: list[Any] = []

        async def set_aside(f: list[Any]) -> None:
            failed.extend(f)

        sink = WebhookSink(
            f"http://127.0.0.1:{port}/x", max_records=1, timeout=0.05, retries=1, backoff_cap=0.01
        )
        sink.bind(SinkContext(metrics=PipelineMetrics(), set_aside=set_aside))
        await sink.open()
        write = asyncio.create_task(sink.write(scored(range(1))))
        try:
            await wait_for(lambda: sink.down and sink.posts >= 4, timeout=10)
            assert not write.done() and failed == []
        finally:
            write.cancel()
            await asyncio.wait([write])
            await sink.close()


# -- batching: a property -------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared_server() -> Iterator[AlertServer]:
    with AlertServer() as s:
        yield s.start()


def scored(offsets: range) -> ScoredBatch:
    records = [
        Record(key=f"k{o}", value={"id": o}, event_time=1.0, topic="t", partition=0, offset=o)
        for o in offsets
    ]
    ones = [1.0] * len(records)
    return ScoredBatch(
        records=records, predictions=ones, model=ModelRef("m", "1"), processed_at=2.0
    )


@settings(max_examples=25, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 30), max_size=8),
    max_records=st.integers(1, 12),
    max_wait=st.sampled_from([0.0, 0.002, 60.0]),
    flush_after=st.sets(st.integers(0, 7)),
)
def test_posts_carry_each_alert_once_in_order_and_at_most_max_records(
    shared_server: AlertServer,
    sizes: list[int],
    max_records: int,
    max_wait: float,
    flush_after: set[int],
) -> None:
    """Whatever the writes, flushes and limits: after a flush every alert was posted
    exactly once, in the order written; no POST holds more than ``max_records``; and
    without a flush or the wait running out, a POST goes only when it is full."""
    start = len(shared_server.requests)
    sink = WebhookSink(shared_server.url, max_records=max_records, max_wait=max_wait)
    failed: list[Any] = []

    async def set_aside(f: list[Any]) -> None:
        failed.extend(f)

    sink.bind(SinkContext(metrics=PipelineMetrics(), set_aside=set_aside))

    async def run() -> None:
        await sink.open()
        try:
            offset = 0
            for i, n in enumerate(sizes):
                assert await sink.write(scored(range(offset, offset + n))) is None
                offset += n
                # A full POST goes with the write that filled it; without a wait, all.
                assert sink.pending < (max_records if max_wait else 1)
                if i in flush_after:
                    await sink.flush()
                    assert sink.pending == 0
            await sink.flush()
        finally:
            await sink.close()

    asyncio.run(run())
    posts = [r.json() for r in shared_server.requests[start:]]
    assert [a["input"]["id"] for p in posts for a in p] == list(range(sum(sizes)))
    assert all(1 <= len(p) <= max_records for p in posts)
    if max_wait == 60.0 and not flush_after:
        assert all(len(p) == max_records for p in posts[:-1]), "only the flush sends a part"
    assert failed == [] and sink.pending == 0


# -- `headrace run`, killed ------------------------------------------------------------------

WEBHOOK_SINK = """  - type: webhook
    name: alerts
    url: ${ALERT_WEBHOOK_URL}
    headers: {Authorization: "Bearer ${ALERT_TOKEN}"}
    filter: {above: THRESHOLD}
    batch: {max_records: 20, max_wait_ms: 50}
    template: json
    timeout_ms: 2000
    retries: 5"""


@pytest.mark.slow
def test_sigkill_mid_run_loses_no_alert(
    tmp_path: Path, events_file: Path, cli_env: dict[str, str], server: AlertServer
) -> None:
    """Two SIGKILLs of `headrace run` while alerts are being posted, then a run to the
    end: every output above the threshold reached the endpoint at least once, and no
    other did. Positions are committed (the file's checkpoint) only after the alerts
    before them were answered."""
    server.start()
    events = [msgspec.json.decode(line) for line in events_file.read_bytes().splitlines()]
    scores = sorted(sum(e["features"]) for e in events)
    threshold = scores[int(len(scores) * 0.9)]
    expected = {e["id"] for e in events if sum(e["features"]) > threshold}
    sinks = WEBHOOK_SINK.replace("THRESHOLD", repr(threshold))
    config = pipeline_yaml(tmp_path, events_file, sinks, extra="dead_letter: {type: stdout}")
    env = {**cli_env, "ALERT_WEBHOOK_URL": server.url, "ALERT_TOKEN": TOKEN}
    for at_least in (300, 1000):
        proc = subprocess.Popen(
            [*HEADRACE, "run", str(config), "--no-progress"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            server.wait(
                lambda n=at_least, p=proc: len(server.delivered()) >= n or p.poll() is not None
            )
            assert proc.poll() is None, "the pipeline exited early"
        finally:
            proc.kill()
            proc.wait(timeout=10)
    result = subprocess.run(
        [*HEADRACE, "run", str(config), "--no-progress"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    delivered = ids(server.delivered())
    assert set(delivered) == expected, "every alert at least once, and no other"
    assert len(delivered) >= len(expected)
    assert TOKEN not in result.stdout + result.stderr
    assert server.path not in result.stdout + result.stderr
