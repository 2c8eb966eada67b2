"""A connector whose client library (an optional extra) is missing fails on import with
one line that names the extra to install, and the CLI prints that line, not a traceback.

"Missing" is simulated the way Python itself allows: ``sys.modules[name] = None`` makes
``import name`` raise ModuleNotFoundError.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

import headrace
from headrace.connectors.extras import MissingExtraError
from headrace.errors import HeadraceError

CONNECTORS = [
    (
        "headrace.connectors.kafka",
        "confluent_kafka",
        "the Kafka connector needs confluent-kafka: pip install 'headrace[kafka]'",
    ),
    (
        "headrace.connectors.mqtt",
        "paho",
        "the MQTT connector needs paho-mqtt: pip install 'headrace[mqtt]'",
    ),
    (
        "headrace.connectors.postgres",
        "psycopg",
        "the PostgreSQL connector needs psycopg: pip install 'headrace[postgres]'",
    ),
]


def hide(monkeypatch: pytest.MonkeyPatch, package: str, connector: str) -> None:
    """Make ``package`` (and whatever of it is imported) unimportable, and forget the
    ``connector`` package, so that the next import runs it afresh. Undone after the test."""
    for name in list(sys.modules):
        if name.split(".")[0] == package:
            monkeypatch.setitem(sys.modules, name, None)
        elif name == connector or name.startswith(connector + "."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, package, None)


@pytest.mark.parametrize(("module", "package", "message"), CONNECTORS)
def test_importing_a_connector_without_its_library_is_one_line_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch, module: str, package: str, message: str
) -> None:
    hide(monkeypatch, package, module)
    with pytest.raises(MissingExtraError) as info:
        importlib.import_module(module)
    assert str(info.value) == message
    assert info.value.name == package
    # Caught as what it is, by code that expects either.
    assert isinstance(info.value, ModuleNotFoundError)
    assert isinstance(info.value, HeadraceError)


def test_configurations_are_checked_without_the_extras(monkeypatch: pytest.MonkeyPatch) -> None:
    """An MQTT source's topic filters are checked by the configuration, without paho."""
    from headrace.config import ConfigError, parse_config

    hide(monkeypatch, "paho", "headrace.connectors.mqtt")
    with pytest.raises(ConfigError, match="'#' must be the last level"):
        parse_config(
            {
                "source": {"type": "mqtt", "topics": ["a/#/b"], "client_id": "c"},
                "model": {"type": "callable", "name": "m", "version": "1", "function": "m:f"},
                "sinks": [{"type": "stdout"}],
            }
        )


PIPELINE = """
kafka: {{bootstrap_servers: "127.0.0.1:1"}}
source: {{type: kafka, topics: [t], group_id: g}}
model: {{type: callable, name: m, version: "1", function: "model:predict"}}
delivery: {delivery}
sinks:
  - {{type: kafka, topic: out}}
"""


@pytest.mark.parametrize(
    ("command", "hidden", "delivery", "line"),
    [
        (
            ["run"],
            "confluent_kafka",
            "at-least-once",
            "the Kafka connector needs confluent-kafka: pip install 'headrace[kafka]'",
        ),
        (
            ["validate", "--load-model"],
            "confluent_kafka",
            "at-least-once",
            "p.yaml: the Kafka connector needs confluent-kafka: pip install 'headrace[kafka]'",
        ),
        # Exactly-once into Kafka keeps its offsets in Kafka: no PostgreSQL needed.
        (["validate", "--load-model"], "psycopg", "exactly-once", "p.yaml: valid"),
    ],
)
def test_the_cli_prints_the_line_and_exits_2(
    tmp_path: Path, command: list[str], hidden: str, delivery: str, line: str
) -> None:
    (tmp_path / "model.py").write_text("def predict(xs):\n    return [0.0] * len(xs)\n")
    (tmp_path / "p.yaml").write_text(PIPELINE.format(delivery=delivery))
    code = (
        f"import sys\nsys.modules[{hidden!r}] = None\n"
        "from headrace.cli import main\n"
        "sys.argv = ['headrace', *sys.argv[1:]]\nmain()\n"
    )
    src = str(Path(headrace.__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)
    done = subprocess.run(
        [sys.executable, "-c", code, *command, "p.yaml"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": path},
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = done.stdout + done.stderr
    assert line in output.splitlines()
    if line.endswith("valid"):
        assert done.returncode == 0, output
    else:
        assert done.returncode == 2, output
        assert "Traceback" not in output and len(output.strip().splitlines()) == 1
