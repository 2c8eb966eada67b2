"""Azure Event Hubs and IoT Hub's built-in endpoint, through their Kafka endpoint."""

from __future__ import annotations

from typing import Any

from headrace.errors import HeadraceError


class ConnectionStringError(HeadraceError, ValueError):
    """A connection string that is not an Event Hubs one. The message never repeats it."""


def parse_connection_string(connection_string: str) -> dict[str, str]:
    parts: dict[str, str] = {}
    for item in connection_string.strip().split(";"):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep:
            raise ConnectionStringError(
                "the Event Hubs connection string has an item without '=' (expected "
                "Endpoint=sb://...;SharedAccessKeyName=...;SharedAccessKey=...)"
            )
        parts[key.strip()] = value.strip()
    return parts


def eventhubs_settings(connection_string: str) -> tuple[dict[str, Any], str | None]:
    """librdkafka settings for an Event Hubs namespace (or an IoT Hub's Event Hub-compatible
    endpoint), and the event hub named by ``EntityPath``, if the string names one.

    Event Hubs speaks Kafka on port 9093 over TLS with SASL PLAIN, user
    ``$ConnectionString`` and the whole connection string as password.

    >>> s, hub = eventhubs_settings(
    ...     "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=k;"
    ...     "SharedAccessKey=abc=;EntityPath=telemetry")
    >>> s["bootstrap.servers"], s["security.protocol"], s["sasl.username"], hub
    ('ns.servicebus.windows.net:9093', 'SASL_SSL', '$ConnectionString', 'telemetry')
    """
    parts = parse_connection_string(connection_string)
    endpoint = parts.get("Endpoint")
    if not endpoint or not endpoint.startswith("sb://"):
        raise ConnectionStringError(
            "the Event Hubs connection string has no Endpoint=sb://<namespace>/ item"
        )
    if "SharedAccessKey" not in parts and "SharedAccessSignature" not in parts:
        raise ConnectionStringError(
            "the Event Hubs connection string has neither SharedAccessKey nor SharedAccessSignature"
        )
    host = endpoint[len("sb://") :].strip("/")
    settings: dict[str, Any] = {
        "bootstrap.servers": f"{host}:9093",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "PLAIN",
        "sasl.username": "$ConnectionString",
        "sasl.password": connection_string.strip(),
        # Event Hubs' recommendations for Kafka clients (settings both clients take).
        "metadata.max.age.ms": 180000,
        "connections.max.idle.ms": 180000,
        "socket.keepalive.enable": True,
    }
    return settings, parts.get("EntityPath") or None
