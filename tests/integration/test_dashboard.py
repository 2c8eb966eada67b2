"""The dashboard in a real browser (Debian's Chromium, driven by Playwright) over a real
`headrace run`: the page loads with no console errors, its numbers move while a generator
pipeline runs, a model promotion shows the new version, and a paused Kafka pipeline shows
its lag. A failure names a screenshot under the test's temporary directory."""

from __future__ import annotations

import json
import os
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from browser import DashboardPage
from headrace.connectors.generator import SensorEvents
from headrace.registry import LocalRegistry, Sample, Signature
from kafka_helpers import TansuBroker
from version_helpers import Linear
from workers import Worker, admin_post, kafka_pipeline, log_text, models_env, wait_until

TOKEN = "dashboard-admin-token"
TOKEN_ENV = "HEADRACE_TEST_DASHBOARD_TOKEN"
NAME = "scorer"
V1 = Linear([0.5, -0.25, 1.0, 0.75, -0.5, 0.25, -1.0, 0.125], 0.1)
V2 = Linear([-1.5, 0.5, 0.25, -0.75, 1.0, -0.25, 0.5, 2.0], -3.0)


def register(registry: LocalRegistry, tmp_path: Path, model: Linear) -> str:
    rows = [[0.1 * i + j for j in range(8)] for i in range(4)]
    artifact = model.onnx(tmp_path / f"v{len(list(tmp_path.glob('v*.onnx')))}.onnx")
    info = registry.register(
        NAME,
        artifact,
        format="onnx",
        signature=Signature(shape=[None, 8]),
        samples=[Sample(input=rows, expected=model(rows).tolist(), tolerance=1e-4)],
    )
    return info.version


def dashboard_url(worker: Worker) -> str:
    """The URL the startup line names."""
    found: list[str] = []

    def printed() -> bool:
        m = re.search(r"dashboard: (http://127\.0\.0\.1:\d+/)", log_text(worker))
        if m:
            found.append(m.group(1))
        return bool(found)

    wait_until(printed, 60, "the dashboard's URL on the startup line", (worker,))
    return found[0]


def get_json(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return int(resp.status), json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), json.loads(exc.read())


def port_of(url: str) -> int:
    return int(url.rstrip("/").rsplit(":", 1)[1])


@pytest.fixture
def worker_env(tmp_path: Path) -> dict[str, str]:
    env = models_env(tmp_path)
    env[TOKEN_ENV] = TOKEN
    return env


@pytest.fixture
def page_of(browser: Any, tmp_path: Path) -> Iterator[Any]:
    pages: list[DashboardPage] = []

    def open_page(url: str) -> DashboardPage:
        pages.append(DashboardPage(browser, url, tmp_path))
        return pages[-1]

    yield open_page
    for page in pages:
        page.close()


def test_the_dashboard_follows_a_generator_pipeline_and_a_promotion(
    tmp_path: Path, worker_env: dict[str, str], page_of: Any
) -> None:
    registry = LocalRegistry(tmp_path / "registry")
    registry.promote(NAME, register(registry, tmp_path, V1), "production")
    config = tmp_path / "p.yaml"
    config.write_text(
        f"""
name: dashboard-test
source: {{type: generator, rate: 400, entities: 20, seed: 1}}
model:
  type: registry
  ref: registry:{NAME}@production
  root: {registry.root}
  features: {{vector: features}}
batching: {{max_size: 64, max_wait_ms: 20}}
sinks:
  - {{type: "null", name: predictions}}
  - type: jsonl
    name: alerts
    path: {tmp_path / "alerts.jsonl"}
    filter: {{above: 2.0}}
metrics: {{port: 0}}
admin: {{token_env: {TOKEN_ENV}}}
"""
    )
    worker = Worker(config, worker_env, tmp_path / "worker.log").start()
    try:
        url = dashboard_url(worker)
        page = page_of(url)
        page.wait_text("state", "t === 'running'", "the state 'running'")
        page.wait_text("pipeline", "t === 'dashboard-test'", "the pipeline's name")
        # The numbers move: more scored than the page showed a moment ago.
        page.wait_text("records-out", "Number(t.replace(/,/g, '')) > 0", "records scored")
        before = page.number("records-out")
        page.wait_text(
            "records-out",
            f"Number(t.replace(/,/g, '')) > {before}",
            f"more than {before:.0f} records scored",
        )
        page.wait_text("rate-out", "Number(t.replace(/,/g, '')) > 0", "a throughput")
        page.wait_text("p50", "t.endsWith('ms') || t.endsWith(' s')", "a latency")
        page.wait_text("model-version", "t === '1'", "model version 1")
        page.wait(
            "() => document.querySelectorAll('#chart-rate path').length >= 1",
            "a throughput chart",
        )
        page.wait(
            "() => document.querySelectorAll('#alerts tbody tr').length > 0",
            "recent alerts (outputs above the filter)",
        )
        assert get_json(url + "ready") == (200, {"status": "ready"})

        # A promotion, and the admin call that makes the worker look now.
        registry.promote(NAME, register(registry, tmp_path, V2), "production")
        assert admin_post(port_of(url), "/admin/models/check", TOKEN) == 202
        page.wait_text("model-version", "t === '2'", "model version 2 after the promotion")
        page.wait(
            "() => [...document.querySelectorAll('#model-history td')]"
            ".some((td) => td.textContent === 'swapped')",
            "the swap in the model history",
        )
        assert page.text("model-sha") == registry.get(NAME, "2").sha256[:12]
        shot = page.screenshot()
        assert page.errors == [], f"{page.errors}; screenshot: {shot}"
    finally:
        worker.stop()


@pytest.mark.slow
def test_a_paused_kafka_pipeline_shows_its_lag(
    tansu: TansuBroker, tmp_path: Path, worker_env: dict[str, str], page_of: Any
) -> None:
    """Paused by the admin call, the worker reads nothing: what is produced meanwhile is
    lag, per partition, on the page; resumed, it drains."""
    tansu.create_topic("events", partitions=2)
    config = kafka_pipeline(
        tmp_path / "p.yaml",
        tansu.bootstrap,
        sinks="  - type: kafka\n    topic: predictions\n",
        extra=f"metrics: {{port: 0}}\nadmin: {{token_env: {TOKEN_ENV}}}\n",
    )
    worker = Worker(config, worker_env, tmp_path / "worker.log").start()
    try:
        url = dashboard_url(worker)
        wait_until(
            lambda: get_json(url + "ready")[0] == 200,
            60,
            "ready (partitions assigned)",
            (worker,),
        )
        assert admin_post(port_of(url), "/admin/pause", TOKEN) == 202
        events, _ = SensorEvents(entities=20, seed=2).make(start_id=0, n=600, ts=1.7e9)
        tansu.produce_json("events", events, key_field="entity_id")
        page = page_of(url)
        page.wait_text("state", "t === 'paused'", "the state 'paused'")
        page.wait_text("paused", "t.includes('operator')", "why it is paused")
        page.wait(
            "() => { const rows = document.querySelectorAll('#lag-table tbody tr');"
            " let sum = 0; rows.forEach((r) => sum += Number(r.cells[2].textContent));"
            " return rows.length === 2 && sum > 0; }",
            "lag on both partitions",
            timeout=30,
        )
        page.wait_text("lag-total", "Number(t.replace(/,/g, '')) > 0", "the total lag")
        assert page.number("records-out") <= 0
        assert admin_post(port_of(url), "/admin/resume", TOKEN) == 202
        page.wait_text("records-out", "Number(t.replace(/,/g, '')) === 600", "600 scored")
        page.screenshot("kafka")
        assert page.errors == []
    finally:
        worker.stop()
    assert os.path.exists(tmp_path / "kafka.png")


@pytest.mark.slow
def test_the_supervisors_page_shows_the_whole_group(
    tansu: TansuBroker, tmp_path: Path, worker_env: dict[str, str], page_of: Any
) -> None:
    """`--workers 2`: the supervisor's page adds up both workers (every record scored
    once, in the group's total) and lists each."""
    tansu.create_topic("events", partitions=2)
    config = kafka_pipeline(
        tmp_path / "p.yaml",
        tansu.bootstrap,
        sinks="  - type: kafka\n    topic: predictions\n",
        extra="metrics: {port: 0}\n",
    )
    events, _ = SensorEvents(entities=20, seed=4).make(start_id=0, n=400, ts=1.7e9)
    tansu.produce_json("events", events, key_field="entity_id")
    group = Worker(config, worker_env, tmp_path / "group.log", args=["--workers", "2"]).start()
    try:
        url = dashboard_url(group)  # the supervisor's: it listens before any worker starts
        page = page_of(url)
        page.wait(
            "() => document.querySelectorAll('#workers tbody tr').length === 2",
            "both workers listed",
            timeout=60,
        )
        page.wait_text(
            "records-out", "Number(t.replace(/,/g, '')) === 400", "400 scored", timeout=60
        )
        status, body = get_json(url + "api/status")
        assert status == 200 and body["totals"]["out"] == 400
        assert sorted(w["worker"] for w in body["workers"]) == [0, 1]
        page.screenshot("group")
        assert page.errors == []
        assert group.terminate() == 0, group.tail()  # SIGTERM reaches the workers too
    finally:
        group.stop()
