"""The pipeline configuration: schema validation, messages that name the key, interpolation."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest

from headrace.config import (
    ConfigError,
    GeneratorSourceConfig,
    JsonLinesSinkConfig,
    JsonLinesSourceConfig,
    NullSinkConfig,
    OnnxModelConfig,
    RegistryModelConfig,
    SkopsModelConfig,
    SqliteSinkConfig,
    load_config,
    parse_config,
)

SHA = "0123456789abcdef" * 4
ROOT = Path(__file__).resolve().parents[2]

BASE: dict[str, Any] = {
    "source": {"type": "jsonl", "path": "in.jsonl"},
    "model": {
        "type": "onnx",
        "name": "m",
        "version": "1",
        "path": "m.onnx",
        "sha256": SHA,
        "features": {"vector": "features"},
    },
    "sinks": [{"type": "sqlite", "path": "out.db"}],
}

FULL_YAML = f"""
name: sensors
source:
  type: generator
  rate: 500
  count: 1000
  entities: 10
  anomaly_rate: 0.05
  seed: 3
model:
  type: skops
  name: iforest
  version: "2"
  path: model.skops
  sha256: {SHA}
  method: score_samples
  negate: true
  trusted_types: [sklearn.tree._tree.Tree]
  features:
    fields: [value]
    vector: features
sinks:
  - type: sqlite
    name: db
    path: out.db
    mode: insert
  - type: jsonl
    name: alerts
    path: alerts.jsonl
    filter:
      above: 0.5
  - type: "null"
dead_letter:
  type: jsonl
  name: dlq
  path: dead.jsonl
batching:
  max_size: 64
  max_wait_ms: 5
  max_concurrency: 4
flow:
  max_in_flight: 100
runtime:
  commit_interval_ms: 250
  shutdown_timeout_s: 5
metrics:
  port: 9200
"""


def config(**changes: Any) -> dict[str, Any]:
    """A fresh copy of the minimal valid document, with top-level sections replaced."""
    data = copy.deepcopy(BASE)
    data.update(copy.deepcopy(changes))
    return data


def error_of(data: Any, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(data, env=env or {})
    return str(info.value)


def expected_keys(message: str) -> list[str]:
    m = re.search(r"expected one of: (.*)$", message)
    assert m is not None, message
    return [k.strip() for k in m.group(1).split(",")]


# -- valid documents -------------------------------------------------------------------


def test_minimal_config_parses_with_defaults() -> None:
    """The smallest valid document gives the documented defaults."""
    cfg = parse_config(config(), env={})
    assert isinstance(cfg.source, JsonLinesSourceConfig)
    assert cfg.source.path == "in.jsonl"
    assert isinstance(cfg.model, OnnxModelConfig)
    assert cfg.model.features is not None and cfg.model.features.vector == "features"
    assert [type(s) for s in cfg.sinks] == [SqliteSinkConfig]
    assert cfg.sinks[0].mode == "upsert"
    assert cfg.batching.max_size == 256
    assert cfg.flow.max_in_flight == 10_000
    assert cfg.dead_letter is None and cfg.metrics is None


def test_full_yaml_config_loads(tmp_path: Path) -> None:
    """Every section, written as YAML, reaches the typed config."""
    path = tmp_path / "pipeline.yaml"
    path.write_text(FULL_YAML)
    cfg = load_config(path, env={})
    assert cfg.name == "sensors"
    assert isinstance(cfg.source, GeneratorSourceConfig)
    assert (cfg.source.rate, cfg.source.count, cfg.source.anomaly_rate) == (500.0, 1000, 0.05)
    assert isinstance(cfg.model, SkopsModelConfig)
    assert cfg.model.method == "score_samples" and cfg.model.negate is True
    assert cfg.model.trusted_types == ["sklearn.tree._tree.Tree"]
    assert [type(s) for s in cfg.sinks] == [SqliteSinkConfig, JsonLinesSinkConfig, NullSinkConfig]
    assert cfg.sinks[1].filter is not None and cfg.sinks[1].filter.above == 0.5
    assert isinstance(cfg.dead_letter, JsonLinesSinkConfig) and cfg.dead_letter.name == "dlq"
    assert (cfg.batching.max_size, cfg.batching.max_concurrency) == (64, 4)
    assert cfg.runtime.commit_interval_ms == 250
    assert cfg.metrics is not None and cfg.metrics.port == 9200


def test_uppercase_sha256_is_accepted() -> None:
    """A digest copied in upper case is still a valid sha256."""
    data = config()
    data["model"]["sha256"] = SHA.upper()
    assert parse_config(data, env={}).model.sha256 == SHA.upper()


# -- unknown keys and types --------------------------------------------------------------


@pytest.mark.parametrize(
    ("where", "path", "keys"),
    [
        (
            (),
            "top level",
            "admin batching dead_letter delivery enrich failures flow kafka metrics model name "
            "priority runtime shedding sinks source updates windows",
        ),
        (("source",), "source", "checkpoint key_field max_bytes path time_field"),
        (
            ("sinks", 0),
            "sinks[0]",
            "failures_table filter mode name path store_input table windows_table",
        ),
        (("model", "features"), "model.features", "allow_nan fields vector"),
        (("model",), "model", "device features name output path sha256 threads version"),
    ],
)
def test_unknown_key_names_its_path_and_the_expected_keys(
    where: tuple[Any, ...], path: str, keys: str
) -> None:
    """A typo anywhere is reported at its path, with the keys that section accepts."""
    data = config()
    node: Any = data
    for seg in where:
        node = node[seg]
    node["bogus_key"] = 1
    message = error_of(data)
    assert f"at {path}: unknown key 'bogus_key'" in message
    assert expected_keys(message) == keys.split()


def test_unknown_key_in_a_nested_filter_and_dead_letter() -> None:
    """Sections reached through unions (a sink's filter, the dead-letter sink) are resolved
    by their type tag to list the right keys."""
    data = config(sinks=[{"type": "jsonl", "path": "a", "filter": {"above": 1, "abvoe": 2}}])
    message = error_of(data)
    assert "at sinks[0].filter: unknown key 'abvoe'" in message
    assert expected_keys(message) == ["above", "below"]

    data = config(dead_letter={"type": "jsonl", "path": "dl", "fsnyc": True})
    message = error_of(data)
    assert "at dead_letter: unknown key 'fsnyc'" in message
    assert expected_keys(message) == ["filter", "fsync", "name", "path"]


SINK_TYPES = {"sqlite", "jsonl", "kafka", "postgres", "stdout", "null", "webhook"}


@pytest.mark.parametrize(
    ("section", "value", "path", "types"),
    [
        (
            "source",
            {"type": "kinesis", "topic": "x"},
            "source.type",
            {"generator", "jsonl", "kafka", "mqtt"},
        ),
        ("sinks", [{"type": "s3"}], "sinks[0].type", SINK_TYPES),
        (
            "model",
            {"type": "torch"},
            "model.type",
            {"onnx", "xgboost", "lightgbm", "skops", "callable", "registry"},
        ),
        ("dead_letter", {"type": "s3"}, "dead_letter.type", SINK_TYPES),
    ],
)
def test_unknown_type_lists_the_valid_types(
    section: str, value: Any, path: str, types: set[str]
) -> None:
    """An unknown `type` names the bad value and every type that section supports."""
    message = error_of(config(**{section: value}))
    assert f"at {path}:" in message
    bad = value[0]["type"] if isinstance(value, list) else value["type"]
    assert repr(bad) in message
    assert set(expected_keys(message)) == types


def test_missing_type_lists_the_valid_types() -> None:
    """A section without its `type` says so and lists the choices."""
    message = error_of(config(source={"path": "in.jsonl"}))
    assert "at source: missing required key 'type'" in message
    assert set(expected_keys(message)) == {"generator", "jsonl", "kafka", "mqtt"}


# -- missing keys, wrong types, ranges ----------------------------------------------------


@pytest.mark.parametrize(
    ("change", "path", "key"),
    [
        ({"source": {"type": "jsonl"}}, "source", "path"),
        ({"sinks": [{"type": "sqlite"}]}, "sinks[0]", "path"),
        (
            {"model": {"type": "onnx", "name": "m", "version": "1", "path": "m.onnx"}},
            "model",
            "sha256",
        ),
        (
            {"model": {"type": "callable", "name": "m", "version": "1"}},
            "model",
            "function",
        ),
    ],
)
def test_missing_required_key_is_named(change: dict[str, Any], path: str, key: str) -> None:
    """A missing required key is named, with the section it belongs in."""
    assert f"at {path}: missing required key {key!r}" in error_of(config(**change))


@pytest.mark.parametrize("section", ["source", "model", "sinks"])
def test_missing_top_level_section_is_named(section: str) -> None:
    """Leaving out a required section names it at the top level."""
    data = config()
    del data[section]
    assert f"at top level: missing required key {section!r}" in error_of(data)


def test_empty_sinks_list_is_rejected() -> None:
    """A pipeline that writes nowhere is a mistake."""
    message = error_of(config(sinks=[]))
    assert "at sinks:" in message and "length >= 1" in message


@pytest.mark.parametrize(
    ("change", "path", "expectation"),
    [
        ({"batching": {"max_size": 0}}, "batching.max_size", ">= 1"),
        ({"batching": {"max_size": -5}}, "batching.max_size", ">= 1"),
        ({"batching": {"max_wait_ms": -1}}, "batching.max_wait_ms", ">= 0"),
        (
            {"source": {"type": "generator", "anomaly_rate": 2}},
            "source.anomaly_rate",
            "<= 1",
        ),
        ({"source": {"type": "generator", "rate": -1}}, "source.rate", ">= 0"),
        ({"source": {"type": "generator", "seconds": 0}}, "source.seconds", "> 0"),
        ({"source": {"type": "generator", "count": 0}}, "source.count", ">= 1"),
        ({"metrics": {"port": 70000}}, "metrics.port", "<= 65535"),
        ({"runtime": {"commit_interval_ms": -1}}, "runtime.commit_interval_ms", ">= 0"),
        ({"flow": {"max_in_flight": 0}}, "flow.max_in_flight", ">= 1"),
    ],
)
def test_out_of_range_number_names_key_and_bound(
    change: dict[str, Any], path: str, expectation: str
) -> None:
    """A number outside its range names the key and the bound it broke."""
    message = error_of(config(**change))
    assert f"at {path}:" in message
    assert expectation in message


@pytest.mark.parametrize(
    ("change", "path", "expectation"),
    [
        ({"batching": {"max_size": "big"}}, "batching.max_size", "Expected `int`"),
        ({"batching": {"max_size": [1]}}, "batching.max_size", "Expected `int`"),
        ({"source": {"type": "jsonl", "path": 5}}, "source.path", "Expected `str`"),
        ({"source": {"type": "generator", "rate": "fast"}}, "source.rate", "Expected `float`"),
        ({"source": "in.jsonl"}, "source", "Expected `object`"),
        ({"sinks": {"type": "null"}}, "sinks", "Expected `array`"),
    ],
)
def test_wrong_type_names_key_and_expected_type(
    change: dict[str, Any], path: str, expectation: str
) -> None:
    """A value of the wrong type names the key and the type it should have."""
    message = error_of(config(**change))
    assert f"at {path}:" in message
    assert expectation in message


def test_wrong_type_in_features_fields() -> None:
    """`fields` must be a list of names, not one name."""
    data = config()
    data["model"]["features"] = {"fields": "value"}
    message = error_of(data)
    assert "at model.features.fields:" in message and "Expected `array`" in message


@pytest.mark.parametrize("key", ["table", "failures_table", "windows_table"])
def test_a_sqlite_table_name_that_is_not_an_identifier_is_named(key: str) -> None:
    """Written into SQL, so refused when the file is checked (it passed `validate` and
    stopped `run` with a traceback); SQLite has no schemas, so no dot either."""
    for bad in ("my table", "a.b", "x;drop"):
        message = error_of(config(sinks=[{"type": "sqlite", "path": "x", key: bad}]))
        assert f"at sinks[0].{key}:" in message


def test_invalid_literal_value_is_named() -> None:
    """An enumerated option outside its values (sink mode, skops method) names the key."""
    message = error_of(config(sinks=[{"type": "sqlite", "path": "x", "mode": "merge"}]))
    assert "at sinks[0].mode:" in message and "'merge'" in message
    data = config()
    data["model"].update(type="skops", method="transform")
    message = error_of(data)
    assert "at model.method:" in message and "'transform'" in message


@pytest.mark.parametrize("digest", ["abc", SHA[:-1], SHA + "0", "g" * 64, SHA[:-1] + " "])
def test_sha256_must_be_64_hex_characters(digest: str) -> None:
    """A truncated, padded or non-hex digest is rejected at model.sha256."""
    data = config()
    data["model"]["sha256"] = digest
    message = error_of(data)
    assert "at model.sha256:" in message
    assert "{64}" in message


def test_callable_function_must_be_module_colon_name() -> None:
    """A callable model's `function` must look like `module:name`."""
    data = config(model={"type": "callable", "name": "m", "version": "1", "function": "nope"})
    assert "at model.function:" in error_of(data)
    data["model"]["function"] = "pkg.mod:score"
    assert parse_config(data, env={}).model.function == "pkg.mod:score"  # type: ignore[union-attr]


def test_non_mapping_document_is_rejected() -> None:
    """A document that is not a mapping of sections says what it got."""
    with pytest.raises(ConfigError, match=r"expected a mapping of sections, got list"):
        parse_config([1, 2], env={})


# -- cross-key rules -----------------------------------------------------------------------


def test_duplicate_default_sink_names_are_rejected() -> None:
    """Two unnamed sinks of the same type share a default name; the second is reported."""
    message = error_of(
        config(sinks=[{"type": "jsonl", "path": "a"}, {"type": "jsonl", "path": "b"}])
    )
    assert "at sinks[1]:" in message and "'jsonl' is used twice" in message


def test_duplicate_explicit_sink_names_are_rejected() -> None:
    """Explicit names must differ too, including the dead-letter sink's."""
    sinks = [{"type": "null", "name": "out"}, {"type": "stdout", "name": "out"}]
    assert "'out' is used twice" in error_of(config(sinks=sinks))
    message = error_of(
        config(
            sinks=[{"type": "null", "name": "out"}],
            dead_letter={"type": "jsonl", "path": "dl", "name": "out"},
        )
    )
    assert "at dead_letter:" in message and "'out' is used twice" in message


def test_distinct_sink_names_are_accepted() -> None:
    """Sinks of one type with distinct names are fine."""
    sinks = [{"type": "jsonl", "path": "a", "name": "a"}, {"type": "jsonl", "path": "b"}]
    cfg = parse_config(config(sinks=sinks), env={})
    assert [s.name for s in cfg.sinks] == ["a", None]


def test_filter_needs_above_or_below() -> None:
    """An empty filter is a mistake; one bound is enough."""
    message = error_of(config(sinks=[{"type": "null", "filter": {}}]))
    assert "at sinks[0].filter: give `above`, `below` or both" in message
    cfg = parse_config(config(sinks=[{"type": "null", "filter": {"below": -1}}]), env={})
    assert cfg.sinks[0].filter is not None and cfg.sinks[0].filter.below == -1


def test_dead_letter_sink_takes_no_filter() -> None:
    """A dead-letter sink must take every failure, so a filter there is rejected."""
    message = error_of(config(dead_letter={"type": "null", "name": "dl", "filter": {"above": 0}}))
    assert "at dead_letter.filter:" in message


def test_features_need_fields_or_vector() -> None:
    """An empty features section would feed the model nothing."""
    data = config()
    data["model"]["features"] = {"allow_nan": True}
    assert "at model.features: give `fields`, `vector` or both" in error_of(data)


# -- interpolation -------------------------------------------------------------------------


def test_variables_are_interpolated_from_env() -> None:
    """${VAR} is replaced, several times in one string and inside list items."""
    data = config(sinks=[{"type": "sqlite", "path": "${DIR}/${NAME}.db"}])
    data["model"]["sha256"] = "${SHA}"
    cfg = parse_config(data, env={"DIR": "/data", "NAME": "preds", "SHA": SHA})
    assert cfg.sinks[0].path == "/data/preds.db"  # type: ignore[union-attr]
    assert cfg.model.sha256 == SHA


def test_default_is_used_only_when_variable_is_unset() -> None:
    """${VAR:-default} falls back to the default, and a set variable wins over it."""
    data = config(source={"type": "jsonl", "path": "${IN:-events.jsonl}"})
    assert parse_config(data, env={}).source.path == "events.jsonl"  # type: ignore[union-attr]
    cfg = parse_config(data, env={"IN": "other.jsonl"})
    assert cfg.source.path == "other.jsonl"  # type: ignore[union-attr]
    data = config(source={"type": "jsonl", "path": "${IN:-}"})
    assert parse_config(data, env={}).source.path == ""  # type: ignore[union-attr]


def test_numbers_can_come_from_variables() -> None:
    """A per-run number arrives through ${VAR} as a string and still validates as a number."""
    data = config(
        source={"type": "generator", "rate": "${RATE:-250.5}", "count": "${N}"},
        batching={"max_size": "${BATCH}"},
    )
    cfg = parse_config(data, env={"N": "10", "BATCH": "32"})
    assert isinstance(cfg.source, GeneratorSourceConfig)
    assert (cfg.source.rate, cfg.source.count, cfg.batching.max_size) == (250.5, 10, 32)
    assert "at batching.max_size:" in error_of(data, env={"N": "10", "BATCH": "0"})


@pytest.mark.parametrize(
    ("change", "path"),
    [
        ({"source": {"type": "jsonl", "path": "${INPUT}"}}, "source.path"),
        ({"sinks": [{"type": "null"}, {"type": "jsonl", "path": "x/${INPUT}"}]}, "sinks[1].path"),
        ({"batching": {"max_size": "${INPUT}"}}, "batching.max_size"),
    ],
)
def test_unset_variable_names_the_variable_and_key(change: dict[str, Any], path: str) -> None:
    """An unset variable without a default is an error at the key that uses it."""
    message = error_of(config(**change))
    assert f"at {path}: environment variable INPUT is not set" in message


def test_env_defaults_to_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without an explicit env, os.environ supplies the variables."""
    monkeypatch.setenv("HEADRACE_TEST_INPUT", "from-env.jsonl")
    cfg = parse_config(config(source={"type": "jsonl", "path": "${HEADRACE_TEST_INPUT}"}))
    assert cfg.source.path == "from-env.jsonl"  # type: ignore[union-attr]
    monkeypatch.delenv("HEADRACE_TEST_INPUT")
    with pytest.raises(ConfigError, match="HEADRACE_TEST_INPUT is not set"):
        parse_config(config(source={"type": "jsonl", "path": "${HEADRACE_TEST_INPUT}"}))


# -- files ---------------------------------------------------------------------------------


def test_load_config_missing_file_names_the_file(tmp_path: Path) -> None:
    """A missing file is a ConfigError that names it, not an OSError."""
    path = tmp_path / "absent.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value) and "cannot read" in str(info.value)


def test_load_config_invalid_yaml_names_the_file(tmp_path: Path) -> None:
    """Broken YAML is a ConfigError that names the file."""
    path = tmp_path / "broken.yaml"
    path.write_text("source: [unclosed\nmodel: {")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value) and "not valid YAML" in str(info.value)


def test_unquoted_null_type_names_the_key(tmp_path: Path) -> None:
    """YAML reads `type: null` as no value; the error still points at the sink's type."""
    path = tmp_path / "pipeline.yaml"
    path.write_text(FULL_YAML.replace('type: "null"', "type: null"))
    with pytest.raises(ConfigError, match=re.escape("at sinks[2].type:")):
        load_config(path, env={})


def test_load_config_empty_file_is_rejected(tmp_path: Path) -> None:
    """An empty file parses to nothing, which is not a pipeline."""
    path = tmp_path / "empty.yaml"
    path.write_text("")
    with pytest.raises(ConfigError, match="expected a mapping of sections"):
        load_config(path)


def test_load_config_errors_are_prefixed_with_the_file(tmp_path: Path) -> None:
    """Schema and variable errors from a file say which file they are in."""
    path = tmp_path / "pipeline.yaml"
    path.write_text(FULL_YAML.replace("max_size: 64", "max_size: 0"))
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert str(info.value).startswith(f"{path}: at batching.max_size:")
    path.write_text(FULL_YAML.replace("path: out.db", "path: ${OUT_DIR}/out.db"))
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert str(info.value).startswith(f"{path}: at sinks[0].path: environment variable OUT_DIR")


def shipped_configs() -> list[Path]:
    """Example pipelines under examples/ and those packaged with headrace (the demo)."""
    found = {
        p
        for base in (ROOT / "examples", ROOT / "src" / "headrace")
        for pattern in ("*.yaml", "*.yml")
        for p in base.rglob(pattern)
    }
    return sorted(found)


@pytest.mark.parametrize(
    "path", shipped_configs() or [None], ids=lambda p: str(p.relative_to(ROOT)) if p else "none"
)
def test_shipped_example_configs_validate(path: Path | None) -> None:
    """Every shipped example validates; variables without a default get a placeholder that
    fits any field they are used in (a 64-digit string)."""
    if path is None:
        pytest.skip("no example configs shipped yet")
    text = path.read_text()
    required = {m.group(1) for m in re.finditer(r"\$\{(\w+)\}", text)}
    env = dict.fromkeys(required, "0" * 64)
    load_config(path, env=env)


# -- flow, priorities, shedding, failures --------------------------------------------------

LOAD_YAML = """
source: {type: generator}
model: {type: callable, name: m, version: "1", function: "mod:score"}
sinks:
  - {type: "null"}
flow:
  max_in_flight: 5000
  max_in_flight_bytes: 1048576
  resume_at: 0.25
priority:
  field: urgency
  levels: [critical, high, normal, low]
  default: normal
shedding:
  destination: {type: jsonl, path: shed.jsonl}
  in_flight_above: 0.8
  max_event_age_s: 30
  priorities: [normal, low]
failures:
  retries: 4
  backoff_ms: 20
  max_backoff_ms: 2000
  model_timeout_ms: 500
"""

SHED_TO = {"type": "jsonl", "path": "shed.jsonl"}


def test_flow_priority_shedding_and_failures_sections_parse(tmp_path: Path) -> None:
    path = tmp_path / "load.yaml"
    path.write_text(LOAD_YAML)
    cfg = load_config(path, env={})
    assert (cfg.flow.max_in_flight, cfg.flow.max_in_flight_bytes, cfg.flow.resume_at) == (
        5000,
        1 << 20,
        0.25,
    )
    assert cfg.priority is not None
    assert (cfg.priority.field, cfg.priority.default) == ("urgency", "normal")
    assert cfg.priority.levels == ["critical", "high", "normal", "low"]
    assert cfg.shedding is not None
    assert isinstance(cfg.shedding.destination, JsonLinesSinkConfig)
    assert (cfg.shedding.in_flight_above, cfg.shedding.max_event_age_s) == (0.8, 30)
    assert cfg.shedding.priorities == ["normal", "low"]
    f = cfg.failures
    assert (f.retries, f.backoff_ms, f.max_backoff_ms, f.model_timeout_ms) == (4, 20, 2000, 500)


def test_load_sections_default_to_off_or_documented_values() -> None:
    cfg = parse_config(config(), env={})
    assert cfg.priority is None and cfg.shedding is None
    assert (cfg.flow.max_in_flight_bytes, cfg.flow.resume_at) == (64 << 20, 0.5)
    f = cfg.failures
    assert (f.retries, f.backoff_ms, f.max_backoff_ms, f.model_timeout_ms) == (2, 10, 5000, None)
    # Shedding without a `priority` section may shed every record.
    cfg = parse_config(config(shedding={"destination": SHED_TO, "max_event_age_s": 5}), env={})
    assert cfg.shedding is not None and cfg.shedding.priorities is None


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            {
                "priority": {"levels": ["high", "normal", "low"]},
                "shedding": {
                    "destination": SHED_TO,
                    "in_flight_above": 0.5,
                    "priorities": ["low", "high"],
                },
            },
            "at shedding.priorities: 'high' is the highest priority, which is never shed",
        ),
        (
            {
                "priority": {"levels": ["high", "normal", "low"]},
                "shedding": {
                    "destination": SHED_TO,
                    "in_flight_above": 0.5,
                    "priorities": ["lowest"],
                },
            },
            "at shedding.priorities: 'lowest' is not one of the levels",
        ),
        (
            {"shedding": {"destination": SHED_TO}},
            "at shedding: give in_flight_above, max_event_age_s or both",
        ),
        (
            {
                "shedding": {
                    "destination": {**SHED_TO, "filter": {"above": 1}},
                    "in_flight_above": 0.5,
                }
            },
            "at shedding.destination.filter: the shed destination takes every shed record",
        ),
        (
            {"shedding": {"destination": SHED_TO, "in_flight_above": 0.5, "priorities": ["low"]}},
            "at shedding.priorities: there are no priority levels; add a `priority` section",
        ),
        (
            {"failures": {"backoff_ms": 100, "max_backoff_ms": 50}},
            "at failures.max_backoff_ms: 50.0 is below backoff_ms=100.0",
        ),
        (
            {"priority": {"levels": ["a", "b", "a"]}},
            "at priority.levels: a level is named twice",
        ),
        (
            {"priority": {"levels": ["a", "b"], "default": "c"}},
            "at priority.default: 'c' is not one of the levels",
        ),
        (
            {
                "sinks": [{"type": "null", "name": "shed"}],
                "shedding": {"destination": SHED_TO, "in_flight_above": 0.5},
            },
            "at shedding.destination: sink name 'shed' is used twice",
        ),
    ],
    ids=[
        "sheds-highest",
        "unknown-level",
        "no-rule",
        "destination-filter",
        "no-priority-section",
        "max-backoff-below-backoff",
        "duplicate-level",
        "unknown-default",
        "shed-name-taken",
    ],
)
def test_load_section_rules_name_the_key(change: dict[str, Any], expected: str) -> None:
    assert expected in error_of(config(**change))


@pytest.mark.parametrize(
    ("change", "path", "expectation"),
    [
        ({"flow": {"resume_at": 1}}, "flow.resume_at", "< 1"),
        ({"flow": {"max_in_flight_bytes": 0}}, "flow.max_in_flight_bytes", ">= 1"),
        ({"priority": {"levels": ["only"]}}, "priority.levels", "length >= 2"),
        (
            {"shedding": {"destination": SHED_TO, "in_flight_above": 1}},
            "shedding.in_flight_above",
            "< 1",
        ),
        (
            {"shedding": {"destination": SHED_TO, "max_event_age_s": 0}},
            "shedding.max_event_age_s",
            "> 0",
        ),
        ({"failures": {"retries": -1}}, "failures.retries", ">= 0"),
        ({"failures": {"retries": 101}}, "failures.retries", "<= 100"),
        ({"failures": {"backoff_ms": 0}}, "failures.backoff_ms", "> 0"),
        ({"failures": {"model_timeout_ms": 0}}, "failures.model_timeout_ms", "> 0"),
    ],
)
def test_load_section_ranges_name_the_key(
    change: dict[str, Any], path: str, expectation: str
) -> None:
    message = error_of(config(**change))
    assert f"at {path}:" in message
    assert expectation in message


@pytest.mark.parametrize(
    ("section", "value", "keys"),
    [
        ("flow", {}, "max_in_flight max_in_flight_bytes resume_at"),
        ("priority", {}, "default field levels"),
        (
            "shedding",
            {"destination": SHED_TO, "in_flight_above": 0.5},
            "destination in_flight_above max_event_age_s priorities",
        ),
        ("failures", {}, "backoff_ms max_backoff_ms max_hung_calls model_timeout_ms retries"),
    ],
)
def test_unknown_key_in_a_load_section_lists_its_keys(
    section: str, value: dict[str, Any], keys: str
) -> None:
    message = error_of(config(**{section: {**value, "retires": 1}}))
    assert f"at {section}: unknown key 'retires'" in message
    assert expected_keys(message) == keys.split()


def test_exactly_once_refuses_shedding_outside_the_transaction() -> None:
    """Shed records are committed with the rest: under exactly-once the shed destination
    must be a Kafka topic in the same transaction, and one-database pipelines cannot shed."""
    base = {
        "source": {"type": "kafka", "topics": ["in"], "group_id": "g"},
        "kafka": {"bootstrap_servers": "127.0.0.1:9092"},
        "delivery": "exactly-once",
        "sinks": [{"type": "kafka", "topic": "out"}],
    }
    rule = {"in_flight_above": 0.5}
    message = error_of(config(**base, shedding={"destination": SHED_TO, **rule}))
    assert "at delivery: exactly-once needs every sink" in message
    assert "shed and late destinations" in message

    kafka_shed = {"destination": {"type": "kafka", "topic": "shed"}, **rule}
    cfg = parse_config(config(**base, shedding=kafka_shed), env={})
    assert cfg.shedding is not None

    pg = {"type": "postgres", "dsn": "postgresql://u@h/db"}
    message = error_of(config(**{**base, "sinks": [pg]}, shedding=kafka_shed))
    assert "at delivery: exactly-once needs" in message
    assert parse_config(config(**{**base, "sinks": [pg]}), env={}).delivery == "exactly-once"


def test_a_kafka_shed_destination_needs_the_kafka_section() -> None:
    shedding = {"destination": {"type": "kafka", "topic": "shed"}, "max_event_age_s": 1}
    assert "at kafka: a Kafka source or sink needs" in error_of(config(shedding=shedding))


# -- registry models, live updates, admin ----------------------------------------------------

REGISTRY_MODEL: dict[str, Any] = {
    "type": "registry",
    "ref": "registry:fraud@production",
    "features": {"vector": "features"},
}
SHADOW: dict[str, Any] = {
    "ref": "registry:fraud@candidate",
    "destination": {"type": "jsonl", "path": "shadow.jsonl"},
}


def test_registry_model_with_updates_and_admin_parses() -> None:
    data = config(
        model={**REGISTRY_MODEL, "root": "/srv/models", "latency_budget_ms": 50},
        updates={
            "poll_interval_s": 2,
            "probation": {"seconds": 30, "max_error_rate": 0.2, "min_records": 10},
            "shadow": {**SHADOW, "tolerance": 0.01, "max_batches_in_flight": 3},
            "canary": {"ref": "registry:fraud/7", "fraction": 0.1},
        },
        admin={"token_env": "HEADRACE_ADMIN_TOKEN"},
        metrics={"port": 0},
    )
    cfg = parse_config(data, env={})
    m = cfg.model
    assert isinstance(m, RegistryModelConfig)
    assert (m.ref, m.root, m.latency_budget_ms, m.allow_pickle) == (
        "registry:fraud@production",
        "/srv/models",
        50,
        False,
    )
    assert (m.name, m.version) == ("fraud", "production")
    u = cfg.updates
    assert u is not None and u.poll_interval_s == 2
    assert (u.probation.seconds, u.probation.max_error_rate, u.probation.min_records) == (
        30,
        0.2,
        10,
    )
    assert u.probation.max_latency_ratio == 3.0  # the default
    assert u.shadow is not None and isinstance(u.shadow.destination, JsonLinesSinkConfig)
    assert (u.shadow.tolerance, u.shadow.max_batches_in_flight) == (0.01, 3)
    assert u.shadow.timeout_ms == 30_000
    assert u.canary is not None and (u.canary.ref, u.canary.fraction) == ("registry:fraud/7", 0.1)
    assert cfg.admin is not None and cfg.admin.token_env == "HEADRACE_ADMIN_TOKEN"


def test_registry_model_defaults() -> None:
    cfg = parse_config(config(model={"type": "registry", "ref": "registry:fraud/12"}), env={})
    m = cfg.model
    assert isinstance(m, RegistryModelConfig)
    assert (m.name, m.version, m.root) == ("fraud", "12", "model-registry")
    assert cfg.updates is None and cfg.admin is None


@pytest.mark.parametrize(
    "ref",
    [
        "fraud@production",  # no scheme
        "registry:fraud",  # no alias or version
        "registry:fraud@",
        "registry:@production",
        "registry:../fraud@production",
        "registry:fraud@prod/1",
        "registry:fraud@pro duction",
        "s3:fraud@production",
    ],
)
@pytest.mark.parametrize("where", ["model.ref", "updates.canary.ref", "updates.shadow.ref"])
def test_bad_model_references_are_named(ref: str, where: str) -> None:
    data = config(model=dict(REGISTRY_MODEL))
    if where == "model.ref":
        data["model"]["ref"] = ref
    elif where == "updates.canary.ref":
        data["updates"] = {"canary": {"ref": ref, "fraction": 0.1}}
    else:
        data["updates"] = {"shadow": {**SHADOW, "ref": ref}}
    assert f"at {where}:" in error_of(data)


def test_updates_need_a_registry_model() -> None:
    message = error_of(config(updates={"poll_interval_s": 5}))
    assert "at updates: live updates need a model of type registry" in message
    assert parse_config(config(model=REGISTRY_MODEL, updates={}), env={}).updates is not None


def test_admin_calls_need_the_metrics_server() -> None:
    admin = {"token_env": "TOKEN"}
    message = error_of(config(model=REGISTRY_MODEL, admin=admin))
    assert "at admin: admin calls are served by the metrics server" in message
    cfg = parse_config(config(model=REGISTRY_MODEL, admin=admin, metrics={}), env={})
    assert cfg.admin is not None and cfg.metrics is not None
    assert cfg.metrics.host == "127.0.0.1"  # loopback unless told otherwise
    message = error_of(config(model=REGISTRY_MODEL, admin={"token_env": "not-a-var"}, metrics={}))
    assert "at admin.token_env:" in message


def test_the_shadow_destination_takes_every_output() -> None:
    shadow = {**SHADOW, "destination": {**SHADOW["destination"], "filter": {"above": 0.5}}}
    message = error_of(config(model=REGISTRY_MODEL, updates={"shadow": shadow}))
    assert "at updates.shadow.destination.filter: the shadow destination takes every" in message


def test_the_shadow_destination_name_must_not_clash() -> None:
    """Unnamed, the shadow destination is called "shadow"; it shares the name space of the
    other sinks."""
    sinks = [{"type": "null", "name": "shadow"}]
    message = error_of(config(model=REGISTRY_MODEL, sinks=sinks, updates={"shadow": SHADOW}))
    assert "at updates.shadow.destination: sink name 'shadow' is used twice" in message

    named = {**SHADOW, "destination": {**SHADOW["destination"], "name": "out"}}
    sinks = [{"type": "null", "name": "out"}]
    message = error_of(config(model=REGISTRY_MODEL, sinks=sinks, updates={"shadow": named}))
    assert "at updates.shadow.destination: sink name 'out' is used twice" in message

    # A jsonl sink and an unnamed jsonl shadow destination do not clash: "jsonl", "shadow".
    sinks = [{"type": "jsonl", "path": "out.jsonl"}]
    data = config(model=REGISTRY_MODEL, sinks=sinks, updates={"shadow": SHADOW})
    cfg = parse_config(data, env={})
    assert cfg.updates is not None and cfg.updates.shadow is not None


@pytest.mark.parametrize(
    ("updates", "path"),
    [
        ({"poll_interval_s": 0}, "updates.poll_interval_s"),
        ({"probation": {"seconds": -1}}, "updates.probation.seconds"),
        ({"probation": {"max_error_rate": 1.5}}, "updates.probation.max_error_rate"),
        ({"probation": {"max_latency_ratio": 0}}, "updates.probation.max_latency_ratio"),
        ({"probation": {"min_records": 0}}, "updates.probation.min_records"),
        ({"canary": {"ref": "registry:fraud@c", "fraction": 0}}, "updates.canary.fraction"),
        ({"canary": {"ref": "registry:fraud@c", "fraction": 1}}, "updates.canary.fraction"),
        ({"shadow": {**SHADOW, "max_batches_in_flight": 0}}, "updates.shadow.max_batches"),
        ({"shadow": {**SHADOW, "timeout_ms": 0}}, "updates.shadow.timeout_ms"),
        ({"shadow": {**SHADOW, "tolerance": -1}}, "updates.shadow.tolerance"),
        ({"shadow": {"ref": "registry:fraud@c"}}, "updates.shadow"),
        ({"canary": {"fraction": 0.1}}, "updates.canary"),
    ],
)
def test_updates_ranges_and_required_keys_name_the_key(updates: dict[str, Any], path: str) -> None:
    assert f"at {path}" in error_of(config(model=REGISTRY_MODEL, updates=updates))


def test_a_kafka_shadow_destination_needs_the_kafka_section() -> None:
    """Without the rule the configuration passed, and building the pipeline failed on a
    bare assertion."""
    shadow = {**SHADOW, "destination": {"type": "kafka", "topic": "shadow"}}
    message = error_of(config(model=REGISTRY_MODEL, updates={"shadow": shadow}))
    assert "at kafka: a Kafka source or sink needs" in message
    kafka = {"bootstrap_servers": "127.0.0.1:9092"}
    data = config(model=REGISTRY_MODEL, updates={"shadow": shadow}, kafka=kafka)
    cfg = parse_config(data, env={})
    assert cfg.updates is not None and cfg.updates.shadow is not None


def test_exactly_once_refuses_a_kafka_shadow_destination() -> None:
    """The shadow writes outside the write order, so it cannot share Kafka transactions;
    another sink type is fine."""
    base = {
        "source": {"type": "kafka", "topics": ["in"], "group_id": "g"},
        "kafka": {"bootstrap_servers": "127.0.0.1:9092"},
        "delivery": "exactly-once",
        "sinks": [{"type": "kafka", "topic": "out"}],
        "model": REGISTRY_MODEL,
    }
    kafka_shadow = {**SHADOW, "destination": {"type": "kafka", "topic": "shadow"}}
    message = error_of(config(**base, updates={"shadow": kafka_shadow}))
    assert "at updates.shadow.destination: with exactly-once" in message
    assert parse_config(config(**base, updates={"shadow": SHADOW}), env={}).updates is not None
    at_least_once = {**base, "delivery": "at-least-once"}
    assert parse_config(config(**at_least_once, updates={"shadow": kafka_shadow}), env={})


# -- source.start ----------------------------------------------------------------------

KAFKA_SOURCE = {"type": "kafka", "topics": ["in"], "group_id": "g"}
KAFKA_SECTION = {"bootstrap_servers": "127.0.0.1:9092"}


def kafka_start(start: Any) -> dict[str, Any]:
    return config(source={**KAFKA_SOURCE, "start": start}, kafka=KAFKA_SECTION)


def test_source_start_takes_earliest_latest_or_a_timestamp_with_a_zone() -> None:
    from datetime import UTC, datetime

    from headrace.config import KafkaSourceConfig, StartConfig

    for start in ("earliest", "latest"):
        src = parse_config(kafka_start(start), env={}).source
        assert isinstance(src, KafkaSourceConfig) and src.start == start
    when = datetime(2026, 12, 1, tzinfo=UTC)
    for written in ("2026-12-01T00:00:00Z", "2026-12-01T01:00:00+01:00", when):
        src = parse_config(kafka_start({"timestamp": written}), env={}).source
        assert isinstance(src, KafkaSourceConfig)
        assert src.start == StartConfig(timestamp=when)
    data = yaml_config(
        "source: {type: kafka, topics: [in], group_id: g, start: {timestamp: 2026-12-01T00:00:00Z}}"
    )
    src = parse_config(data, env={}).source
    assert isinstance(src, KafkaSourceConfig) and src.start == StartConfig(timestamp=when)


def yaml_config(source_line: str) -> dict[str, Any]:
    import yaml

    data = config(kafka=KAFKA_SECTION)
    data.update(yaml.safe_load(source_line))
    return data


@pytest.mark.parametrize(
    ("start", "expected"),
    [
        ("yesterday", "at source.start: Invalid enum value 'yesterday'; expected one of: "),
        ({"timestamp": "yesterday"}, "at source.start.timestamp: Invalid RFC3339"),
        (
            {"timestamp": "2026-12-01T00:00:00"},
            "at source.start.timestamp: 2026-12-01T00:00:00 has no time zone",
        ),
        ({"timestamp": "1969-12-31T23:59:59Z"}, "at source.start.timestamp: 1969-12-31"),
        ({}, "at source.start: missing required key 'timestamp'"),
        ({"timestamp": "2026-12-01T00:00:00Z", "at": 1}, "at source.start: unknown key 'at'"),
    ],
)
def test_a_bad_source_start_is_one_error_naming_the_key(start: Any, expected: str) -> None:
    assert expected in error_of(kafka_start(start))


def test_start_timestamps_given_on_the_command_line_are_checked_alike() -> None:
    from headrace.config import parse_start_timestamp

    assert parse_start_timestamp("2026-12-01T00:00:00Z").year == 2026
    for bad, why in (("2026-12-01T00:00:00", "no time zone"), ("2026-12-01", "not an RFC 3339")):
        with pytest.raises(ValueError, match=why):
            parse_start_timestamp(bad)


def test_a_value_in_a_settings_map_is_named_by_its_key() -> None:
    """librdkafka settings are a mapping of names with dots in them: an error names the
    key as written, not msgspec's `[...]`."""
    data = config(
        kafka={
            "bootstrap_servers": "k:9092",
            "consumer": {"fetch.wait.max.ms": 10, "session.timeout.ms": [6000]},
        }
    )
    message = error_of(data)
    assert "at kafka.consumer['session.timeout.ms']: Expected `bool | int | float | str`" in (
        message
    ), message


def test_model_calls_on_the_loop_refuse_a_model_timeout() -> None:
    """A call on the event loop cannot be interrupted: the two settings together are one
    clear line naming the key, and an unknown value names its choices."""
    loop = config(batching={"model_calls": "loop"})
    assert parse_config(loop).batching.model_calls == "loop"
    message = error_of(config(batching={"model_calls": "loop"}, failures={"model_timeout_ms": 50}))
    assert "at batching.model_calls:" in message and "failures.model_timeout_ms" in message
    process = config(batching={"model_calls": "process"}, failures={"model_timeout_ms": 50})
    assert parse_config(process).batching.model_calls == "process"
    message = error_of(config(batching={"model_calls": "inline"}))
    assert "at batching.model_calls:" in message and "'inline'" in message


def test_the_kafka_consumer_prefetches_256_kib_unless_told_otherwise() -> None:
    """A pause drops a partition's prefetch, which the broker then sends again: the cap
    (and the short back-off a small queue needs) are defaults a user's setting overrides.
    """
    from headrace.build import KafkaParts

    kafka_source = {
        "source": {"type": "kafka", "topics": ["in"], "group_id": "g"},
        "kafka": {"bootstrap_servers": "127.0.0.1:9092"},
    }
    settings = KafkaParts(parse_config(config(**kafka_source), env={})).consumer_settings()
    assert settings["queued.max.messages.kbytes"] == 256
    assert settings["fetch.queue.backoff.ms"] == 10
    assert settings["bootstrap.servers"] == "127.0.0.1:9092"
    kafka_source["kafka"]["consumer"] = {"queued.max.messages.kbytes": 4096}
    settings = KafkaParts(parse_config(config(**kafka_source), env={})).consumer_settings()
    assert settings["queued.max.messages.kbytes"] == 4096
