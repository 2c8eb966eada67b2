"""The Event Hubs preset: a connection string becomes SASL_SSL settings, and the secret
never shows up where it should not."""

from __future__ import annotations

import logging

import pytest

from headrace.connectors.eventhubs import ConnectionStringError, eventhubs_settings
from headrace.connectors.kafka import redacted

SECRET = "c2VjcmV0LWtleS12YWx1ZQ=="
CONN = (
    "Endpoint=sb://my-namespace.servicebus.windows.net/;"
    f"SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey={SECRET};"
    "EntityPath=telemetry"
)
IOT_HUB = (
    "Endpoint=sb://ihsuprodam123res.servicebus.windows.net/;SharedAccessKeyName=iothubowner;"
    f"SharedAccessKey={SECRET};EntityPath=iothub-ehub-myhub-1234-abcdef"
)


def test_connection_string_maps_to_sasl_ssl_on_port_9093() -> None:
    settings, hub = eventhubs_settings(CONN)
    assert settings["bootstrap.servers"] == "my-namespace.servicebus.windows.net:9093"
    assert settings["security.protocol"] == "SASL_SSL"
    assert settings["sasl.mechanism"] == "PLAIN"
    assert settings["sasl.username"] == "$ConnectionString"
    assert settings["sasl.password"] == CONN
    assert hub == "telemetry"


def test_iot_hub_built_in_endpoint_maps_the_same_way() -> None:
    settings, hub = eventhubs_settings(IOT_HUB)
    assert settings["bootstrap.servers"] == "ihsuprodam123res.servicebus.windows.net:9093"
    assert hub == "iothub-ehub-myhub-1234-abcdef"


def test_a_namespace_string_without_entity_path_names_no_hub() -> None:
    settings, hub = eventhubs_settings(CONN.rsplit(";", 1)[0])
    assert hub is None and settings["sasl.password"].endswith(SECRET)


@pytest.mark.parametrize(
    ("bad", "hint"),
    [
        ("HostName=x.azure-devices.net;SharedAccessKey=abc", "Endpoint"),
        ("Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=k", "SharedAccessKey"),
        ("Endpoint=sb://ns/;garbage;SharedAccessKey=x", "without '='"),
    ],
)
def test_bad_strings_are_explained_without_repeating_them(bad: str, hint: str) -> None:
    with pytest.raises(ConnectionStringError) as info:
        eventhubs_settings(bad)
    assert hint in str(info.value)
    assert "abc" not in str(info.value) and "garbage" not in str(info.value)


def test_redacted_masks_secret_settings() -> None:
    settings, _ = eventhubs_settings(CONN)
    shown = redacted(settings)
    assert SECRET not in repr(shown)
    assert shown["sasl.password"] == "***"
    assert shown["bootstrap.servers"] == settings["bootstrap.servers"]


def test_the_secret_stays_out_of_validate_and_logs(
    tmp_path: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A pipeline on the preset validates and builds (without connecting) with the
    connection string only in the environment; nothing printed or logged contains it."""
    from typer.testing import CliRunner

    from headrace.cli import app
    from headrace.config import load_config
    from headrace.pipeline import Pipeline

    path = tmp_path / "p.yaml"  # type: ignore[operator]
    path.write_text(
        """
kafka:
  preset: eventhubs
  connection_string_env: EVENTHUB_CONN
source: {type: kafka, group_id: scorers}
model: {type: callable, name: m, version: "1", function: "builtins:list"}
sinks: [{type: stdout}]
"""
    )
    monkeypatch.setenv("EVENTHUB_CONN", CONN)
    caplog.set_level(logging.DEBUG)
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    assert SECRET not in result.output
    pipeline = Pipeline.from_config(load_config(path))
    engine = pipeline.build()
    assert engine.source.topics == ["telemetry"]  # type: ignore[attr-defined]
    assert SECRET not in caplog.text
    # The preset was applied (the secret reached the client settings), and what the
    # connector would log of them masks it.
    settings = engine.source.settings  # type: ignore[attr-defined]
    assert settings["sasl.password"] == CONN
    assert SECRET not in repr(redacted(settings))


def test_a_bad_connection_string_is_a_configuration_error_at_build(
    tmp_path: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection string that is not an Event Hubs one stops the build with one line
    naming the key and the variable (a configuration error: `run` exits 2), never the
    string itself."""
    from headrace.config import ConfigError, load_config
    from headrace.pipeline import Pipeline

    path = tmp_path / "p.yaml"  # type: ignore[operator]
    path.write_text(
        """
kafka:
  preset: eventhubs
  connection_string_env: EVENTHUB_CONN
source: {type: kafka, group_id: scorers}
model: {type: callable, name: m, version: "1", function: "builtins:list"}
sinks: [{type: stdout}]
"""
    )
    monkeypatch.setenv("EVENTHUB_CONN", f"Endpoint=http://x;SharedAccessKey={SECRET}")
    with pytest.raises(ConfigError) as info:
        Pipeline.from_config(load_config(path)).build()
    message = str(info.value)
    assert "at kafka.connection_string_env: EVENTHUB_CONN:" in message
    assert "Endpoint=sb://" in message and SECRET not in message
