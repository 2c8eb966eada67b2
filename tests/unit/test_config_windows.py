"""The `windows` section: what it accepts, what it refuses and why, and what it builds."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from headrace.build import build_aggregator, build_assigner, configure
from headrace.config import ConfigError, WindowsConfig, load_config, parse_config
from headrace.pipeline import Pipeline
from headrace.windows import CountsByType, Hopping, LastN, Session, Tumbling

ROOT = Path(__file__).resolve().parents[2]

BASE: dict[str, Any] = {
    "source": {"type": "generator", "count": 10},
    "model": {"type": "callable", "name": "m", "version": "1", "function": "json:dumps"},
    "windows": {
        "type": "tumbling",
        "size_s": 10,
        "key_field": "entity_id",
        "features": {"n": {"agg": "count"}, "avg": {"agg": "mean", "field": "value"}},
    },
    "sinks": [{"type": "stdout"}],
}


def config(windows: dict[str, Any] | None = None, **changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    data["windows"].update(windows or {})
    data.update(copy.deepcopy(changes))
    return data


def error_of(data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(data, env={})
    return str(info.value)


def test_the_example_loads_with_its_eight_features() -> None:
    c = load_config(ROOT / "examples" / "windows.yaml", env={"KAFKA_BOOTSTRAP": "k:9092"})
    assert c.windows is not None
    assert len(c.windows.features) == 8
    assert c.windows.changelog.create and c.windows.changelog.topic is None


def test_defaults() -> None:
    w = parse_config(config(), env={}).windows
    assert isinstance(w, WindowsConfig)
    assert (w.allowed_lateness_s, w.grace_s, w.idle_timeout_s) == (0.0, 0.0, 30.0)
    assert w.time_field is None and w.late_destination is None


@pytest.mark.parametrize(
    ("windows", "message"),
    [
        ({"type": "session"}, "at windows.gap_s: session windows need `gap_s`"),
        ({"type": "hopping"}, "at windows.hop_s: hopping windows need `hop_s`"),
        ({"gap_s": 5}, "at windows.gap_s: tumbling windows take no `gap_s`"),
        ({"type": "hopping", "hop_s": 20}, "at windows.hop_s: 20.0 is more than size_s=10"),
        ({"features": {"s": {"agg": "sum"}}}, "at windows.features.s: `sum` needs a `field`"),
        (
            {"features": {"s": {"agg": "last_n", "field": "v"}}},
            "at windows.features.s.n: `n` goes with last_n",
        ),
        (
            {"features": {"s": {"agg": "max", "field": "v", "types": ["a"]}}},
            "`types` goes with counts_by_type only",
        ),
        ({"features": {}}, "windows.features"),
        ({"size_s": 0}, "windows.size_s"),
    ],
)
def test_window_mistakes_name_the_key(windows: dict[str, Any], message: str) -> None:
    assert message in error_of(config(windows))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"priority": {"field": "priority"}}, "at priority: applies to events, not windows"),
        (
            {"source": {"type": "jsonl", "path": "in.jsonl", "checkpoint": "c"}},
            "at source.checkpoint",
        ),
        (
            {"source": {"type": "mqtt", "topics": ["a"], "client_id": "c"}},
            "MQTT sources have no partitions",
        ),
        (
            {
                "source": {"type": "kafka", "group_id": "g", "topics": ["a", "b"]},
                "kafka": {"bootstrap_servers": "k:9092"},
            },
            "at source.topics: a windowed pipeline reads exactly one topic",
        ),
    ],
)
def test_what_a_windowed_pipeline_refuses(changes: dict[str, Any], message: str) -> None:
    assert message in error_of(config(**changes))


def test_exactly_once_into_postgres_takes_no_late_destination() -> None:
    data = config(
        {"late_destination": {"type": "stdout"}},
        source={"type": "kafka", "group_id": "g", "topics": ["a"]},
        kafka={"bootstrap_servers": "k:9092"},
        sinks=[{"type": "postgres", "dsn": "postgresql://x/y"}],
        delivery="exactly-once",
    )
    assert "shed and late destinations" in error_of(data)


def test_a_late_destination_gets_its_own_name() -> None:
    data = config({"late_destination": {"type": "stdout"}})
    parse_config(data, env={})  # "late" does not clash with the stdout output sink
    data["windows"]["late_destination"]["name"] = "stdout"
    assert "sink name 'stdout' is used twice" in error_of(data)


def test_assigners_and_aggregators_are_built_as_configured() -> None:
    def windows(**kw: Any) -> WindowsConfig:
        return parse_config(config(kw), env={}).windows  # type: ignore[return-value]

    assert isinstance(build_assigner(windows()), Tumbling)
    assert isinstance(build_assigner(windows(type="hopping", hop_s=5)), Hopping)
    assert isinstance(build_assigner(windows(type="session", gap_s=5, size_s=None)), Session)
    w = windows(
        features={
            "last": {"agg": "last_n", "field": "v", "n": 3},
            "kinds": {"agg": "counts_by_type", "field": "t", "types": ["a", "b"]},
        }
    )
    last, kinds = (build_aggregator(f) for f in w.features.values())
    assert isinstance(last, LastN) and last.n == 3
    assert isinstance(kinds, CountsByType) and kinds.types == ["a", "b"]


def test_a_generator_pipeline_scores_windows_end_to_end(capsys: pytest.CaptureFixture[str]) -> None:
    data = config(
        {"size_s": 0.05, "time_field": "ts"},
        source={"type": "generator", "count": 2000, "rate": 0, "entities": 4},
        model={"type": "callable", "name": "m", "version": "1", "function": "builtins:list"},
    )
    pipeline = configure(Pipeline("w"), parse_config(data, env={}))
    summary = pipeline.run(install_signal_handlers=False)
    assert summary.records_in == 2000 and summary.records_out >= 4
    assert summary.committed == {("generator", 0): 2000}
    assert '"window":{"start":' in capsys.readouterr().out


def test_table_sinks_keep_one_row_per_key_window_and_partition(tmp_path: Path) -> None:
    import json
    import sqlite3

    events = tmp_path / "in.jsonl"
    events.write_text(
        "".join(
            json.dumps({"entity_id": f"e{i % 4}", "ts": i * 0.5, "value": i}) + "\n"
            for i in range(200)
        )
    )
    db = tmp_path / "w.db"
    data = config(
        {"time_field": "ts"},
        source={"type": "jsonl", "path": str(events)},
        model={"type": "callable", "name": "m", "version": "1", "function": "builtins:list"},
        sinks=[{"type": "sqlite", "path": str(db)}],
    )
    for _ in range(2):  # the same input twice, as a re-read after a crash would be
        configure(Pipeline("w"), parse_config(data, env={})).run(install_signal_handlers=False)
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT key, window_start, window_end, partition, count, features FROM window_scores"
        ).fetchall()
    assert len(rows) == 4 * 10  # 4 entities, 100 s of events in 10 s windows: upserted once
    assert all(r[4] == 5 and r[2] - r[1] == 10 and json.loads(r[5])["n"] == 5 for r in rows)


def test_exactly_once_into_postgres_keeps_the_state_in_the_database() -> None:
    from headrace.windows.changelog import KafkaChangelog, PostgresChangelog

    kafka = {
        "source": {"type": "kafka", "group_id": "g", "topics": ["a"]},
        "kafka": {"bootstrap_servers": "127.0.0.1:1"},
    }
    pg = {"sinks": [{"type": "postgres", "dsn": "postgresql://x/y"}]}
    eos = configure(
        Pipeline("w"), parse_config(config(**kafka, **pg, delivery="exactly-once"), env={})
    )
    stage = eos.build().windows
    assert stage is not None and isinstance(stage.changelog, PostgresChangelog)
    assert stage.changelog.sink.state_table == "headrace_window_state"
    alos = configure(Pipeline("w"), parse_config(config(**kafka, **pg), env={}))
    stage = alos.build().windows
    assert stage is not None and isinstance(stage.changelog, KafkaChangelog)
    assert stage.changelog.topic == "headrace-state-g-a"


@pytest.mark.parametrize(
    ("feature", "message"),
    [
        (
            {"agg": "mean", "feild": "value"},
            "at windows.features.bad: unknown key 'feild'; expected one of: agg, field, "
            "max_types, n, types",
        ),
        ({"agg": "meen", "field": "value"}, "at windows.features.bad.agg: Invalid enum"),
        ({"agg": "last_n", "field": "value", "n": 0}, "at windows.features.bad.n:"),
    ],
)
def test_a_feature_is_named_by_its_key(feature: dict[str, Any], message: str) -> None:
    """Features are a mapping: an error in one names it (msgspec's own message says only
    `features[...]`), after the good ones before it."""
    features = {"n": {"agg": "count"}, "bad": feature, "avg": {"agg": "mean", "field": "v"}}
    assert message in error_of(config({"features": features}))
