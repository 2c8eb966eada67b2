"""Building goes one way: configuration -> builder -> spec -> engine, with one set of
defaults, and connectors built from one table keyed by type."""

from __future__ import annotations

import dataclasses
import inspect
import typing
from typing import Any

import pytest

from headrace import config as cfg
from headrace import defaults
from headrace.build import SINKS, SOURCES, build_failure_policy, build_settings
from headrace.builder import PipelineBuilder
from headrace.connectors.files import NullSink
from headrace.connectors.generator import GeneratorSource
from headrace.models.base import CallableModel
from headrace.runtime.engine import Engine, EngineSettings
from headrace.runtime.manager import Probation
from headrace.runtime.scoring import FailurePolicy
from headrace.runtime.spec import PipelineSpec

MINIMAL: dict[str, Any] = {
    "source": {"type": "generator", "count": 1},
    "model": {"type": "callable", "name": "m", "version": "1", "function": "builtins:list"},
    "sinks": [{"type": "null"}],
}


def test_the_engine_takes_a_spec_and_nothing_else() -> None:
    arguments = [p for p in inspect.signature(Engine.__init__).parameters if p != "self"]
    assert arguments == ["spec"]


def test_the_engine_is_what_its_spec_says() -> None:
    sink = NullSink()
    spec = PipelineSpec(
        source=GeneratorSource(rate=0, count=1),
        model=CallableModel(list, name="m"),
        sinks=(sink,),
        settings=EngineSettings(max_batch_size=7),
        name="spec",
    )
    engine = Engine(spec)
    assert engine.name == "spec" and engine.settings.max_batch_size == 7
    assert [b.sink for b in engine.sinks] == [sink]
    with pytest.raises(ValueError, match="no source"):
        Engine(dataclasses.replace(spec, source=None))
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.name = "changed"  # type: ignore[misc]


def test_the_builder_edits_a_spec() -> None:
    source, sink = GeneratorSource(rate=0, count=1), NullSink()
    builder = PipelineBuilder("b").source(source).sink(sink, above=0.5).batching(max_size=3)
    spec = builder.spec
    assert spec.source is source and spec.name == "b"
    assert len(spec.sinks) == 1 and spec.settings.max_batch_size == 3
    assert spec.settings.max_wait == defaults.MAX_WAIT
    builder.name = "renamed"
    assert builder.spec.name == "renamed" and spec.name == "b"  # the earlier spec is kept


def test_defaults_agree_everywhere() -> None:
    """A pipeline configured in YAML and one built in code tune alike by default."""
    config = cfg.parse_config(MINIMAL, env={})
    assert build_settings(config) == EngineSettings()
    assert PipelineBuilder().batching().flow().spec.settings == EngineSettings()
    assert build_failure_policy(config.failures) == FailurePolicy()
    p = cfg.ProbationConfig()
    assert Probation(p.seconds, p.max_error_rate, p.max_latency_ratio, p.min_records) == (
        Probation()
    )
    assert cfg.UpdatesConfig().poll_interval_s == defaults.POLL_INTERVAL
    assert config.name == defaults.NAME == PipelineBuilder().name


def _tags(union: Any) -> set[str]:
    return {str(t.__struct_config__.tag) for t in typing.get_args(union)}


def test_every_source_and_sink_type_has_a_builder() -> None:
    assert set(SOURCES) == _tags(cfg.SourceConfig)
    assert set(SINKS) == _tags(cfg.SinkConfig)


def test_the_commit_interval_is_left_to_the_source_unless_given() -> None:
    assert build_settings(cfg.parse_config(MINIMAL, env={})).commit_interval is None
    data = {**MINIMAL, "runtime": {"commit_interval_ms": 250}}
    assert build_settings(cfg.parse_config(data, env={})).commit_interval == 0.25


def test_model_calls_reach_the_engine_from_yaml_and_from_code() -> None:
    data = {**MINIMAL, "batching": {"model_calls": "loop"}}
    assert build_settings(cfg.parse_config(data, env={})).model_calls == "loop"
    assert PipelineBuilder().batching(model_calls="loop").spec.settings.model_calls == "loop"
    data = {**MINIMAL, "batching": {"model_calls": "process"}}
    assert build_settings(cfg.parse_config(data, env={})).model_calls == "process"
    with pytest.raises(ValueError, match="model_calls must be 'thread', 'loop' or 'process'"):
        EngineSettings(model_calls="inline")  # type: ignore[arg-type]
