"""Kafka (and Kafka-protocol services: Redpanda, Azure Event Hubs) on confluent-kafka.

* :mod:`~headrace.connectors.kafka.source`: :class:`KafkaSource`, a consumer group member
  that commits only what the engine says, in step with rebalances;
* :mod:`~headrace.connectors.kafka.producer`: :class:`KafkaProducer`, the worker's one
  producer (and transaction), and :class:`KafkaSink`, which writes through it;
* :mod:`~headrace.connectors.kafka.common`: what both share: the log, settings safe to
  show, :class:`KafkaFatalError`.

confluent-kafka is the ``kafka`` extra: it is imported here first, so that without it
this import fails with one line that says what to install.
"""

from headrace.connectors.extras import MissingExtraError

try:
    import confluent_kafka  # noqa: F401 - only checked here; the modules below use it
except ImportError as exc:
    raise MissingExtraError("Kafka", "confluent-kafka", "kafka", name="confluent_kafka") from exc

from headrace.connectors.kafka.common import SECRET_KEYS, KafkaFatalError, Settings, redacted
from headrace.connectors.kafka.producer import KafkaProducer, KafkaSink
from headrace.connectors.kafka.source import KafkaSource

__all__ = [
    "SECRET_KEYS",
    "KafkaFatalError",
    "KafkaProducer",
    "KafkaSink",
    "KafkaSource",
    "Settings",
    "redacted",
]
