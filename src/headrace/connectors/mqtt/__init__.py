"""MQTT (3.1.1 and 5) on paho-mqtt: a persistent session, QoS 1, acknowledged after the fact.

A message is acknowledged (PUBACK) only when the engine commits its position, that is when it
and every message that arrived before it reached a terminal state (written to every sink, or
dead-lettered). Until then the broker keeps it in the client's session and sends it again
when the client reconnects: a crash redelivers instead of losing. The price is that the
broker sends no more than its in-flight window of unacknowledged messages (MQTT 5: the
client's Receive Maximum, here ``max_inflight``; MQTT 3.1.1: the broker's own limit,
mosquitto's ``max_inflight_messages``, 20 by default), so throughput is about that window
divided by the commit interval; past it the broker queues, and past its queue limit
(mosquitto: ``max_queued_messages``) it drops. ``docs/mqtt.md`` says what MQTT can and
cannot guarantee, with measurements.

MQTT has no offsets. Records get a position the engine can track: topic ``mqtt:<client_id>``,
partition 0, and as offset an arrival sequence that starts, at every :meth:`MqttSource.open`,
from the wall clock in microseconds. So positions increase within a run (across reconnects
too, as the offset tracker requires) and differ from every earlier run's, so sinks that
upsert by position never overwrite a previous run's output with a different message.

* :mod:`~headrace.connectors.mqtt.source`: :class:`MqttSource`, what the engine calls;
* :mod:`~headrace.connectors.mqtt.network`: what paho calls on its network thread;
* :mod:`headrace.connectors.mqtt_topics` (outside this package, to need no paho): topic
  filters and protocol limits;
* :mod:`headrace.connectors.mqtt_tls` (outside too, for the same reason): TLS settings,
  the :class:`ssl.SSLContext` they make, and the words for a failed certificate check.

paho-mqtt is the ``mqtt`` extra: it is imported here first, so that without it this
import fails with one line that says what to install.
"""

from headrace.connectors.extras import MissingExtraError

try:
    import paho.mqtt.client  # noqa: F401 - only checked here; the modules below use it
except ImportError as exc:
    raise MissingExtraError("MQTT", "paho-mqtt", "mqtt", name="paho") from exc

from headrace.connectors.mqtt.network import MqttError, Protocol
from headrace.connectors.mqtt.source import CLOSE_BARRIER_TIMEOUT_S, CONNECT_TIMEOUT_S, MqttSource
from headrace.connectors.mqtt_tls import MqttTls
from headrace.connectors.mqtt_topics import (
    MAX_RECEIVE_MAXIMUM,
    MAX_SESSION_EXPIRY_S,
    topic_filter_problem,
)

__all__ = [
    "CLOSE_BARRIER_TIMEOUT_S",
    "CONNECT_TIMEOUT_S",
    "MAX_RECEIVE_MAXIMUM",
    "MAX_SESSION_EXPIRY_S",
    "MqttError",
    "MqttSource",
    "MqttTls",
    "Protocol",
    "topic_filter_problem",
]
