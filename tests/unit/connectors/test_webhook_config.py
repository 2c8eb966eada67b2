"""The webhook sink's configuration: every key checked as strictly as any section's, the
template checked before anything runs, and the URL and headers never shown."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from headrace.build.connectors import KafkaParts, build_sink
from headrace.config import ConfigError, WebhookSinkConfig, parse_config
from headrace.connectors.webhook import WebhookSink
from headrace.connectors.webhook_templates import Renderer

BASE: dict[str, Any] = {
    "source": {"type": "generator", "count": 10},
    "model": {"type": "callable", "name": "m", "version": "1", "function": "m:score"},
}
WEBHOOK: dict[str, Any] = {
    "type": "webhook",
    "name": "alerts",
    "url": "${ALERT_WEBHOOK_URL}",
    "filter": {"above": 0.9},
    "headers": {"Authorization": "Bearer ${ALERT_TOKEN}"},
    "batch": {"max_records": 50, "max_wait_ms": 1000},
    "template": "slack",
    "cooldown_s": 60,
    "timeout_ms": 5000,
    "retries": 5,
}
ENV = {"ALERT_WEBHOOK_URL": "https://hooks.example.com/T0/B0/s3cr3t", "ALERT_TOKEN": "tok-42"}


def document(sink_changes: dict[str, Any] | None = None, **top: Any) -> dict[str, Any]:
    sink = {**copy.deepcopy(WEBHOOK), **(sink_changes or {})}
    return {**copy.deepcopy(BASE), "sinks": [sink], **top}


def error_of(data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(data, env=ENV)
    return str(info.value)


def test_the_example_parses_with_secrets_from_the_environment() -> None:
    config = parse_config(document(), env=ENV)
    [sink] = config.sinks
    assert isinstance(sink, WebhookSinkConfig)
    assert sink.url == ENV["ALERT_WEBHOOK_URL"]
    assert sink.headers == {"Authorization": "Bearer tok-42"}
    assert (sink.batch.max_records, sink.batch.max_wait_ms) == (50, 1000)
    assert (sink.template, sink.cooldown_s, sink.timeout_ms, sink.retries) == ("slack", 60, 5000, 5)


def test_defaults() -> None:
    config = parse_config(document({"filter": None}) | {}, env=ENV)
    sink = config.sinks[0]
    minimal = parse_config(
        {**BASE, "sinks": [{"type": "webhook", "url": "http://127.0.0.1:9/x"}]}, env={}
    ).sinks[0]
    assert isinstance(sink, WebhookSinkConfig) and isinstance(minimal, WebhookSinkConfig)
    assert minimal.template == "json" and minimal.headers == {}
    assert (minimal.batch.max_records, minimal.batch.max_wait_ms) == (50, 1000)
    assert (minimal.cooldown_s, minimal.timeout_ms, minimal.retries) == (0, 5000, 5)


def test_numbers_may_come_from_variables() -> None:
    config = parse_config(document({"retries": "${N}"}), env={**ENV, "N": "2"})
    assert config.sinks[0].retries == 2  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"colour": "red"}, "at sinks[0]: unknown key 'colour'; expected one of: batch, "),
        (
            {"batch": {"max_record": 3}},
            "at sinks[0].batch: unknown key 'max_record'; expected one of: max_records, "
            "max_wait_ms",
        ),
        ({"batch": {"max_records": 0}}, "at sinks[0].batch.max_records: Expected `int` >= 1"),
        ({"batch": {"max_wait_ms": -1}}, "at sinks[0].batch.max_wait_ms: Expected `float` >= 0"),
        ({"retries": "five"}, "at sinks[0].retries: Expected `int`, got `str`"),
        ({"retries": -1}, "at sinks[0].retries: Expected `int` >= 0"),
        ({"timeout_ms": 0}, "at sinks[0].timeout_ms: Expected `float` > 0"),
        ({"cooldown_s": -5}, "at sinks[0].cooldown_s: Expected `float` >= 0"),
        ({"headers": {"X-Count": 3}}, "at sinks[0].headers['X-Count']: Expected `str`, got `int`"),
        ({"headers": ["a"]}, "at sinks[0].headers: Expected `object`, got `array`"),
        (
            {"template": "slak"},
            "at sinks[0].template: unknown template 'slak'; expected one of: json, slack, or a "
            "Jinja template using {{ field }} (sink 'alerts')",
        ),
        (
            {"template": "{{ key }} scored {{ predicton }}"},
            "at sinks[0].template: unknown field 'predicton'; a template may use: count, "
            "event_time, features, input, key, model, prediction, processed_at, sink, source, "
            "window (sink 'alerts')",
        ),
        (
            {"template": "{{ key "},
            "at sinks[0].template: not a valid template: unexpected end of template",
        ),
        (
            {"template": "{{ window.start }}"},
            "at sinks[0].template: 'window' is not a field of event outputs (sink 'alerts')",
        ),
        ({"url": "ftp://example.com/x"}, "at sinks[0].url: expected an http:// or https:// URL"),
    ],
)
def test_mistakes_name_the_key(change: dict[str, Any], expected: str) -> None:
    assert expected in error_of(document(change))


def test_a_bad_url_is_not_echoed() -> None:
    message = error_of(document({"url": "hooks.example.com/s3cr3t"}))
    assert "s3cr3t" not in message


def test_window_fields_belong_to_windowed_pipelines() -> None:
    windows = {"type": "tumbling", "size_s": 10, "features": {"n": {"agg": "count"}}}
    ok = document({"template": "{{ key }}: {{ count }} in {{ window.start }}"}, windows=windows)
    parse_config(ok, env=ENV)
    wrong = document({"template": "{{ input.value }}"}, windows=windows)
    assert "at sinks[0].template: 'input' is not a field of a windowed pipeline" in error_of(wrong)


@pytest.mark.parametrize("role", ["dead_letter", "shedding"])
def test_a_webhook_takes_outputs_only(role: str) -> None:
    sink = {"type": "webhook", "url": "http://127.0.0.1:9/x"}
    extra = {"dead_letter": sink} if role == "dead_letter" else {"shedding": {"destination": sink}}
    data = {**copy.deepcopy(BASE), "sinks": [{"type": "null"}], **extra}
    where = "dead_letter" if role == "dead_letter" else "shedding.destination"
    assert f"at {where}: a webhook sink takes outputs (alerts) only" in error_of(data)


def test_exactly_once_refuses_a_webhook() -> None:
    data = document(
        source={"type": "kafka", "group_id": "g", "topics": ["t"]},
        kafka={"bootstrap_servers": "127.0.0.1:9092"},
        delivery="exactly-once",
    )
    assert "at delivery: exactly-once needs every sink" in error_of(data)


def test_neither_config_nor_sink_shows_the_url_or_headers() -> None:
    config = parse_config(document(), env=ENV)
    sink = build_sink(config.sinks[0], KafkaParts(config))
    assert isinstance(sink, WebhookSink)
    for shown in (repr(config), repr(config.sinks[0]), repr(sink), str(sink)):
        assert "s3cr3t" not in shown and "tok-42" not in shown and "hooks.example" not in shown
    assert (sink.max_records, sink.max_wait, sink.cooldown, sink.timeout) == (50, 1.0, 60, 5.0)


def readme_examples() -> list[Any]:
    """The YAML blocks of the README's section on the webhook sink."""
    text = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    section = text.split("### Alerts: the webhook sink", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"^```yaml\n(.*?)^```$", section, flags=re.DOTALL | re.MULTILINE)
    return [yaml.safe_load(b) for b in blocks]


def test_the_readme_examples_are_valid() -> None:
    pipeline, template = readme_examples()
    parse_config({**BASE, **pipeline}, env=ENV)
    sink = {"type": "webhook", "url": "https://example.com/x", **template}
    parsed = parse_config({**BASE, "sinks": [sink]}, env={}).sinks[0]
    assert isinstance(parsed, WebhookSinkConfig) and parsed.batch.max_records == 1
    out = {"key": "p-1", "prediction": 0.9712, "input": {}}
    body = Renderer(parsed.template, sink="alerts").body([out])
    assert json.loads(body) == {"text": "Pump p-1: anomaly score 0.97"}


def test_a_window_output_reads_as_a_line_of_slack_text() -> None:
    out = {
        "key": "pump-7",
        "window": {"start": 0.0, "end": 10.0},
        "count": 12,
        "features": {"n": 12},
        "prediction": 0.95,
        "model": {"name": "m", "version": "2", "sha256": None},
        "source": {"topic": "t", "partition": 0},
        "event_time": 10.0,
        "processed_at": 11.0,
    }
    body = json.loads(Renderer("slack", sink="alerts").body([out, out]))
    line = (
        "alerts: pump-7 scored 0.95 (model m version 2, window 1970-01-01T00:00:00Z to "
        "1970-01-01T00:00:10Z, 12 events, 1970-01-01T00:00:10Z)"
    )
    assert body == {"text": f"{line}\n{line}"}
    templated = Renderer("{{ key }}: {{ count }} since {{ window.start }}", sink="alerts")
    assert templated.body([out]) == b"pump-7: 12 since 0.0"
