"""A Kafka source's instance id (static membership): where it comes from (the key, then
HEADRACE_INSTANCE_ID, then none), `hostname`, Kafka's rule for ids, a clash with the
librdkafka settings, and the id reaching the consumer's settings."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest

from headrace.config import ConfigError, KafkaSourceConfig, load_config
from headrace.connectors.kafka import KafkaSource
from headrace.pipeline import Pipeline

PIPELINE = """
kafka:
  bootstrap_servers: 127.0.0.1:9
{kafka}source:
  type: kafka
  topics: [events]
  group_id: scorers
{source}model: {{type: callable, name: m, version: "1", function: "builtins:list"}}
sinks: [{{type: "null"}}]
"""


def write(tmp_path: Path, *, source: str = "", kafka: str = "") -> Path:
    """A Kafka pipeline file; ``source`` and ``kafka`` are extra YAML lines of those
    sections (indented by the caller)."""
    path = tmp_path / "pipeline.yaml"
    path.write_text(PIPELINE.format(source=source, kafka=kafka))
    return path


def instance_id(path: Path, env: dict[str, str]) -> str | None:
    source = load_config(path, env=env).source
    assert isinstance(source, KafkaSourceConfig)
    return source.instance_id


def error(path: Path, env: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, env=env)
    message = str(info.value)
    assert "\n" not in message, "one line"
    return message


# -- where the id comes from ---------------------------------------------------------------


def test_no_key_and_no_variable_is_dynamic_membership(tmp_path: Path) -> None:
    assert instance_id(write(tmp_path), env={}) is None


def test_the_key_wins_over_the_variable(tmp_path: Path) -> None:
    path = write(tmp_path, source="  instance_id: scorer-0\n")
    assert instance_id(path, env={"HEADRACE_INSTANCE_ID": "from-env"}) == "scorer-0"


def test_the_variable_gives_the_id_when_the_key_is_left_out(tmp_path: Path) -> None:
    assert instance_id(write(tmp_path), env={"HEADRACE_INSTANCE_ID": "scorer-1"}) == "scorer-1"


def test_the_key_is_interpolated_like_any_string(tmp_path: Path) -> None:
    path = write(tmp_path, source="  instance_id: scorer-${POD_INDEX:-0}\n")
    assert instance_id(path, env={"POD_INDEX": "3"}) == "scorer-3"
    assert instance_id(path, env={}) == "scorer-0"


def test_the_process_environment_is_read_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HEADRACE_INSTANCE_ID", "scorer-2")
    source = load_config(write(tmp_path)).source
    assert isinstance(source, KafkaSourceConfig) and source.instance_id == "scorer-2"
    monkeypatch.delenv("HEADRACE_INSTANCE_ID")
    source = load_config(write(tmp_path)).source
    assert isinstance(source, KafkaSourceConfig) and source.instance_id is None


def test_hostname_means_the_machines_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """From the key or from the variable: a StatefulSet's pod names are stable."""
    monkeypatch.setattr(socket, "gethostname", lambda: "scorers-2")
    assert instance_id(write(tmp_path, source="  instance_id: hostname\n"), env={}) == "scorers-2"
    assert instance_id(write(tmp_path), env={"HEADRACE_INSTANCE_ID": "hostname"}) == "scorers-2"


def test_the_variable_is_ignored_by_other_sources(tmp_path: Path) -> None:
    path = tmp_path / "pipeline.yaml"
    path.write_text(
        """
source: {type: generator, count: 10}
model: {type: callable, name: m, version: "1", function: "builtins:list"}
sinks: [{type: "null"}]
"""
    )
    load_config(path, env={"HEADRACE_INSTANCE_ID": "not valid!"})


# -- Kafka's rule ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ('""', "is empty"),
        ('"."', "cannot be '.' or '..'"),
        ("scorer 0", "has characters Kafka refuses: ' '"),
        ("scorer/0:1", "has characters Kafka refuses: '/', ':'"),
        ("x" * 250, "is 250 characters long, over 249"),
    ],
)
def test_an_invalid_key_is_one_line_naming_the_file_and_the_key(
    tmp_path: Path, value: str, problem: str
) -> None:
    path = write(tmp_path, source=f"  instance_id: {value}\n")
    message = error(path, env={})
    assert message.startswith(f"{path}: at source.instance_id: ")
    assert problem in message
    assert "a group.instance.id is 1 to 249 of A-Z a-z 0-9 . _ -" in message


def test_249_characters_of_every_allowed_kind_are_accepted(tmp_path: Path) -> None:
    value = ("Az09._-" * 40)[:249]
    assert instance_id(write(tmp_path, source=f"  instance_id: {value}\n"), env={}) == value


def test_an_invalid_variable_is_named(tmp_path: Path) -> None:
    message = error(write(tmp_path), env={"HEADRACE_INSTANCE_ID": "scorer#1"})
    assert message.startswith(
        f"{write(tmp_path)}: at source.instance_id: environment variable HEADRACE_INSTANCE_ID: "
        "'scorer#1' has characters Kafka refuses: '#'"
    )
    assert "is empty" in error(write(tmp_path), env={"HEADRACE_INSTANCE_ID": ""})


def test_an_invalid_hostname_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: "host_with spaces")
    message = error(write(tmp_path, source="  instance_id: hostname\n"), env={})
    assert "at source.instance_id: hostname: this machine's name 'host_with spaces'" in message


# -- the librdkafka settings ---------------------------------------------------------------


@pytest.mark.parametrize("section", ["consumer", "settings"])
def test_another_id_in_the_librdkafka_settings_is_refused_naming_both_keys(
    tmp_path: Path, section: str
) -> None:
    kafka = f"  {section}:\n    group.instance.id: scorer-9\n"
    path = write(tmp_path, source="  instance_id: scorer-0\n", kafka=kafka)
    message = error(path, env={})
    assert re.fullmatch(
        rf"{re.escape(str(path))}: at source\.instance_id: 'scorer-0' differs from "
        rf"kafka\.{section}\.group\.instance\.id 'scorer-9'; set the id in one place .*",
        message,
    ), message
    # From the variable, the clash is refused the same way, naming the variable.
    path = write(tmp_path, kafka=kafka)
    message = error(path, env={"HEADRACE_INSTANCE_ID": "scorer-0"})
    assert "environment variable HEADRACE_INSTANCE_ID: 'scorer-0' differs from" in message


def test_the_same_id_in_the_librdkafka_settings_is_accepted(tmp_path: Path) -> None:
    kafka = "  consumer:\n    group.instance.id: scorer-0\n"
    path = write(tmp_path, source="  instance_id: scorer-0\n", kafka=kafka)
    assert instance_id(path, env={}) == "scorer-0"


# -- the consumer's settings ---------------------------------------------------------------


def built_source(path: Path, env: dict[str, str]) -> KafkaSource:
    """The source a pipeline file builds (nothing connects until it is opened)."""
    engine = Pipeline.from_config(load_config(path, env=env)).build()
    assert isinstance(engine.source, KafkaSource)
    return engine.source


def test_the_id_becomes_group_instance_id(tmp_path: Path) -> None:
    source = built_source(write(tmp_path, source="  instance_id: scorer-0\n"), env={})
    assert source.settings["group.instance.id"] == "scorer-0"
    assert source.instance_id == "scorer-0"
    source = built_source(write(tmp_path), env={"HEADRACE_INSTANCE_ID": "scorer-1"})
    assert source.settings["group.instance.id"] == "scorer-1"


def test_without_an_id_the_consumer_is_a_dynamic_member(tmp_path: Path) -> None:
    source = built_source(write(tmp_path), env={})
    assert "group.instance.id" not in source.settings
    assert source.instance_id is None


def test_the_python_source_takes_the_id_and_checks_it() -> None:
    source = KafkaSource(["events"], group_id="scorers", instance_id="scorer-0")
    assert source.settings["group.instance.id"] == "scorer-0"
    # The settings alone (librdkafka's name) still work, as before.
    passed = KafkaSource(["events"], group_id="g", settings={"group.instance.id": "scorer-1"})
    assert passed.instance_id == "scorer-1"
    with pytest.raises(ValueError, match=r"instance_id 'a b' has characters Kafka refuses"):
        KafkaSource(["events"], group_id="scorers", instance_id="a b")
    with pytest.raises(ValueError, match=r"differs from settings\['group.instance.id'\] 'b'"):
        KafkaSource(["events"], group_id="g", instance_id="a", settings={"group.instance.id": "b"})


def test_each_worker_of_a_supervisor_gets_the_id_with_its_index(tmp_path: Path) -> None:
    """`run --workers N` sets HEADRACE_WORKER: the id in effect, then the index."""
    path = write(tmp_path, source="  instance_id: scorer\n")
    assert instance_id(path, env={"HEADRACE_WORKER": "2"}) == "scorer-2"
    from_env = {"HEADRACE_INSTANCE_ID": "pod-7", "HEADRACE_WORKER": "0"}
    assert instance_id(write(tmp_path), env=from_env) == "pod-7-0"


def test_a_worker_without_an_id_takes_the_machines_name(tmp_path: Path) -> None:
    expected = f"{socket.gethostname()}-1"
    assert instance_id(write(tmp_path), env={"HEADRACE_WORKER": "1"}) == expected
