"""The `enrich` section: what it accepts, what it refuses and why, and what it builds."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from headrace.build import configure
from headrace.config import (
    ConfigError,
    LookupCacheConfig,
    PostgresLookupConfig,
    RedisLookupConfig,
    parse_config,
)
from headrace.pipeline import Pipeline

REDIS = {
    "type": "redis",
    "name": "device",
    "url": "${REDIS_URL}",
    "key_field": "device_id",
    "key_prefix": "device:",
}
POSTGRES = {
    "type": "postgres",
    "name": "profile",
    "dsn": "${PG_DSN}",
    "table": "public.profiles",
    "key_column": "customer_id",
    "key_field": "customer",
    "fields": ["age", "tier"],
}
BASE: dict[str, Any] = {
    "source": {"type": "generator", "count": 10},
    "model": {
        "type": "callable",
        "name": "m",
        "version": "1",
        "function": "json:dumps",
        "features": {"fields": ["value", "device.gain", "profile.age"]},
    },
    "sinks": [{"type": "stdout"}],
    "enrich": [REDIS, POSTGRES],
}
ENV = {"REDIS_URL": "redis://:s3cret@cache:6379/0", "PG_DSN": "postgresql://u:s3cret@db/x"}


def config(redis: dict[str, Any] | None = None, postgres: dict[str, Any] | None = None) -> Any:
    """The base document, the two lookups changed by ``redis`` and ``postgres``."""
    data = copy.deepcopy(BASE)
    data["enrich"][0].update(redis or {})
    data["enrich"][1].update(postgres or {})
    return data


def error_of(data: dict[str, Any], env: dict[str, str] = ENV) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(data, env=env)
    return str(info.value)


def test_the_section_parses_with_its_defaults() -> None:
    c = parse_config(config(), env=ENV)
    device, profile = c.enrich
    assert isinstance(device, RedisLookupConfig) and isinstance(profile, PostgresLookupConfig)
    assert (device.kind, device.into, device.fields, device.default) == ("json", None, None, None)
    assert device.cache == LookupCacheConfig(ttl_s=60.0, max_entries=100_000)
    assert device.timeout_ms == 5000.0
    assert profile.fields == ["age", "tier"]
    no_lookups = copy.deepcopy(BASE)
    del no_lookups["enrich"]
    assert parse_config(no_lookups, env=ENV).enrich == []


def test_secrets_are_never_shown() -> None:
    c = parse_config(config(), env=ENV)
    assert "s3cret" not in repr(c.enrich) and "s3cret" not in repr(c)
    message = error_of(config({"url": "http://:s3cret@cache"}))
    assert "at enrich[0].url: expected a redis://" in message and "s3cret" not in message


def test_a_cache_can_be_turned_off_and_the_lookups_are_built() -> None:
    c = parse_config(
        config(
            {"cache": None, "kind": "hash", "fields": ["gain"], "default": {"gain": 1}},
            {"cache": {"ttl_s": 5, "max_entries": 10}, "timeout_ms": 250, "into": "customer"},
        ),
        env=ENV,
    )
    device, profile = configure(Pipeline(), c).spec.lookups
    assert (device.name, device.key_field, device.cache_ttl, device.default) == (
        "device",
        "device_id",
        None,
        {"gain": 1},
    )
    assert (profile.into, profile.cache_ttl, profile.cache_max, profile.timeout) == (
        "customer",
        5.0,
        10,
        0.25,
    )
    assert "s3cret" not in repr(device.store) + repr(profile.store)


@pytest.mark.parametrize(
    ("redis", "postgres", "words"),
    [
        ({"kye_field": "x"}, {}, "at enrich[0]: unknown key 'kye_field'; expected one of: "),
        ({"kind": "list"}, {}, "at enrich[0].kind: Invalid enum value 'list'"),
        ({"type": "memcached"}, {}, "at enrich[0].type: Invalid value 'memcached'"),
        ({}, {"table": "x; drop"}, "at enrich[1].table: Expected `str` matching"),
        ({}, {"key_column": "a b"}, "at enrich[1].key_column: Expected `str` matching"),
        ({}, {"fields": ["age", "ti-er"]}, "at enrich[1].fields: 'ti-er' is not a column"),
        ({}, {"fields": []}, "at enrich[1].fields: Expected `array` of length >= 1"),
        ({"into": "a.b"}, {}, "at enrich[0].into: Expected `str` matching"),
        ({"timeout_ms": 0}, {}, "at enrich[0].timeout_ms: Expected `float` > 0"),
        ({"cache": {"ttl_s": 0}}, {}, "at enrich[0].cache.ttl_s: Expected `float` > 0"),
        ({"cache": {"max_entries": 0}}, {}, "at enrich[0].cache.max_entries: Expected `int` >="),
        ({"cache": {"tll_s": 5}}, {}, "at enrich[0].cache: unknown key 'tll_s'; expected one"),
        ({}, {"key_prefix": "p:"}, "at enrich[1]: unknown key 'key_prefix'; expected one of"),
        ({"default": 3}, {}, "at enrich[0].default: Expected `object | null`, got `int`"),
        ({"name": ""}, {}, "at enrich[0].name: Expected `str` of length >= 1"),
    ],
)
def test_a_wrong_key_is_named(redis: dict[str, Any], postgres: dict[str, Any], words: str) -> None:
    assert words in error_of(config(redis, postgres))


def test_unknown_keys_list_the_keys_of_the_lookups_type() -> None:
    message = error_of(config({}, {"bogus": 1}))
    keys = message.split("expected one of: ")[1].split(", ")
    assert keys == [
        "cache",
        "default",
        "dsn",
        "fields",
        "into",
        "key_column",
        "key_field",
        "name",
        "table",
        "timeout_ms",
    ]


def test_missing_keys_are_named() -> None:
    data = config()
    del data["enrich"][0]["key_field"]
    assert "at enrich[0]: missing required key 'key_field'" in error_of(data)
    data = config()
    del data["enrich"][1]["dsn"]
    assert "at enrich[1]: missing required key 'dsn'" in error_of(data)
    data = config()
    del data["enrich"][1]["type"]
    assert "missing required key 'type'; expected one of: redis, postgres" in error_of(data)


@pytest.mark.parametrize(
    ("redis", "postgres", "words"),
    [
        (
            {"fields": ["gain"], "default": {"gain": 1, "offset": 0}},
            {},
            "at enrich[0].default: 'offset' is not one of fields ['gain']",
        ),
        ({"fields": ["gain", "gain"]}, {}, "at enrich[0].fields: a field is named twice"),
        ({"into": "profile"}, {}, "at enrich[1].into: 'profile' is where lookup 'device'"),
        ({"name": "profile"}, {}, "at enrich[1].name: 'profile' names another lookup too"),
        ({"name": "dev.ice"}, {}, "at enrich[0].name: merged fields are named INTO.FIELD"),
    ],
)
def test_rules_across_keys(redis: dict[str, Any], postgres: dict[str, Any], words: str) -> None:
    assert words in error_of(config(redis, postgres))


def test_a_dotted_name_is_fine_with_an_into() -> None:
    assert parse_config(config({"name": "dev.ice", "into": "d"}), env=ENV).enrich


def test_windows_take_no_lookups() -> None:
    data = config()
    data["windows"] = {"type": "tumbling", "size_s": 10, "features": {"n": {"agg": "count"}}}
    assert "at enrich: lookups apply to events, not windows" in error_of(data)


def test_unset_variables_are_named() -> None:
    message = error_of(config(), env={"PG_DSN": "postgresql://db/x"})
    assert "at enrich[0].url: environment variable REDIS_URL is not set" in message


def test_the_readme_example_is_valid() -> None:
    """The YAML of the README's section on lookups, completed into a pipeline."""
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = text.split("### Feature lookups: enrich", 1)[1].split("\n### ", 1)[0]
    block = re.search(r"^```yaml\n(.*?)^```$", section, flags=re.DOTALL | re.MULTILINE)
    assert block is not None
    example = yaml.safe_load(block.group(1))
    data = copy.deepcopy(BASE)
    data["enrich"] = example["enrich"]
    data["model"]["features"] = example["model"]["features"]
    c = parse_config(data, env=ENV)
    assert [lk.name for lk in c.enrich] == ["device", "profile"]
    device, profile = configure(Pipeline(), c).spec.lookups
    assert device.default == {"gain": 1.0, "offset": 0.0} and profile.default is None
