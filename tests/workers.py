"""Running `headrace run` workers against a real broker in tests: `from workers import ...`.

A worker is a real process: tests kill it with real signals. Helpers wait on conditions
with timeouts, never on fixed sleeps.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec

from headrace.connectors.generator import SensorEvents

SLOW_MODEL = """
import os, time

import numpy as np

DELAY = float(os.environ.get("SLOW_MODEL_DELAY", "0.0"))
ROW_DELAY = float(os.environ.get("MODEL_ROW_DELAY", "0.0"))
SLOW_WHILE = os.environ.get("MODEL_SLOW_WHILE", "")
DOWN_WHILE = os.environ.get("MODEL_DOWN_WHILE", "")
POISON = float(os.environ.get("MODEL_POISON", "999.0"))
HANG = float(os.environ.get("MODEL_HANG", "-999.0"))


def score(x):
    if DELAY:
        time.sleep(DELAY)
    return x.sum(axis=1)


def slow(x):
    # ROW_DELAY seconds per row: the model's capacity does not depend on batch sizes.
    if ROW_DELAY and (not SLOW_WHILE or os.path.exists(SLOW_WHILE)):
        time.sleep(ROW_DELAY * len(x))
    return score(x)


def poisoned(x):
    bad = x[:, 0] == POISON
    if bad.any():
        raise ValueError(f"cannot score feature 0 = {POISON}: {int(bad.sum())} of {len(x)} rows")
    return slow(x)


def flaky(x):
    if DOWN_WHILE and os.path.exists(DOWN_WHILE):
        raise ConnectionError("model server unavailable")
    return slow(x)


def hangs(x):
    # A call with a row whose feature 0 is HANG never returns (a deadlock in the model).
    if (x[:, 0] == HANG).any():
        import threading

        threading.Event().wait()
    return slow(x)
"""

#: A feature value ``workermodels:poisoned`` raises for (in feature 0).
POISON = 999.0
#: A feature value ``workermodels:hangs`` never returns for (in feature 0).
HANG = -999.0


def models_env(
    tmp_path: Path,
    delay: float = 0.0,
    *,
    row_delay: float = 0.0,
    slow_while: Path | None = None,
    down_while: Path | None = None,
) -> dict[str, str]:
    """An environment where the models of ``workermodels`` are importable. Each sums the
    features:

    * ``score`` after sleeping ``delay`` seconds per batch;
    * ``slow`` after sleeping ``row_delay`` seconds per row (only while the file
      ``slow_while`` exists, when given);
    * ``poisoned`` like ``slow``, but raises for a batch with a row whose feature 0 is
      :data:`POISON`;
    * ``flaky`` like ``slow``, but raises for every call while the file ``down_while``
      exists;
    * ``hangs`` like ``slow``, but a call with a row whose feature 0 is :data:`HANG` never
      returns.
    """
    models = tmp_path / "models"
    models.mkdir(exist_ok=True)
    (models / "workermodels.py").write_text(SLOW_MODEL)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(models), env.get("PYTHONPATH", "")])
    env["SLOW_MODEL_DELAY"] = str(delay)
    env["MODEL_ROW_DELAY"] = str(row_delay)
    env["MODEL_SLOW_WHILE"] = str(slow_while or "")
    env["MODEL_DOWN_WHILE"] = str(down_while or "")
    env["MODEL_POISON"] = str(POISON)
    env["MODEL_HANG"] = str(HANG)
    return env


def _yaml_map(settings: Mapping[str, Any], indent: int) -> str:
    pad = " " * indent
    return "".join(f"{pad}{k}: {v}\n" for k, v in settings.items())


def kafka_pipeline(
    path: Path,
    bootstrap: str,
    *,
    sinks: str,
    group: str = "scorers",
    topic: str = "events",
    delivery: str = "at-least-once",
    extra: str = "",
    commit_interval_ms: int = 100,
    max_in_flight: int = 2000,
    max_in_flight_bytes: int | None = None,
    function: str = "workermodels:score",
    consumer: Mapping[str, Any] | None = None,
    source: Mapping[str, Any] | None = None,
    batching: Mapping[str, Any] | None = None,
    model: str | None = None,
    producer: Mapping[str, Any] | None = None,
    shutdown_timeout_s: float = 20,
    runtime: Mapping[str, Any] | None = None,
) -> Path:
    """Write a Kafka pipeline YAML: `topic` -> ``function`` -> ``sinks``. ``consumer``,
    ``source`` and ``batching`` add (or override) keys of those sections;
    ``max_in_flight_bytes`` None keeps the default byte bound. ``model``, YAML text
    starting ``model:``, replaces the callable model (e.g. a ``registry`` one);
    ``producer`` adds librdkafka producer settings; ``runtime`` more runtime keys."""
    producer_settings = {"linger.ms": 5, **(producer or {})}
    consumer_settings = {"session.timeout.ms": 6000, "fetch.wait.max.ms": 10, **(consumer or {})}
    batching_settings = {"max_size": 64, "max_wait_ms": 5, **(batching or {})}
    flow = {"max_in_flight": max_in_flight}
    if max_in_flight_bytes is not None:
        flow["max_in_flight_bytes"] = max_in_flight_bytes
    path.write_text(
        f"""
name: kafka-test
kafka:
  bootstrap_servers: {bootstrap}
  consumer:
{_yaml_map(consumer_settings, 4)}  producer:
{_yaml_map(producer_settings, 4)}source:
  type: kafka
  topics: [{topic}]
  group_id: {group}
  key_field: entity_id
  time_field: ts
{_yaml_map(source or {}, 2)}{model or _callable_model(function)}
batching:
{_yaml_map(batching_settings, 2)}flow:
{_yaml_map(flow, 2)}runtime:
  commit_interval_ms: {commit_interval_ms}
  shutdown_timeout_s: {shutdown_timeout_s}
{_yaml_map(runtime or {}, 2)}delivery: {delivery}
sinks:
{sinks}
{extra}
"""
    )
    return path


def _callable_model(function: str) -> str:
    return f"""model:
  type: callable
  name: feature-sum
  version: "1"
  function: {function}
  features:
    vector: features"""


def reference_events(n: int, *, seed: int = 5) -> list[dict[str, Any]]:
    events, _ = SensorEvents(entities=64, seed=seed).make(start_id=0, n=n, ts=time.time())
    return events


class Worker:
    """One `headrace run` process."""

    def __init__(
        self, config: Path, env: dict[str, str], log: Path, args: Sequence[str] = ()
    ) -> None:
        self.config = config
        self.env = env
        self.log = log
        self.args = list(args)  # more `headrace run` options, e.g. --workers
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Worker:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "headrace.cli",
                    "run",
                    str(self.config),
                    "--no-progress",
                    "--log-level",
                    os.environ.get("HEADRACE_TEST_LOG_LEVEL", "info"),
                    *self.args,
                ],
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=out,
            )
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def pause(self) -> None:
        """SIGSTOP: the process stands still (no heartbeats, no commits) until resumed."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM, and its exit code. One that does not stop in ``timeout`` seconds
        fails with every thread's stack (SIGUSR1; a supervisor passes it on to its
        workers): what it waits for, where a test run's logs are gone afterwards."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            before = self._stacks()
            self.proc.send_signal(signal.SIGUSR1)
            deadline = time.monotonic() + 10
            while self._stacks() == before and time.monotonic() < deadline:
                time.sleep(0.1)
            text = self.log.read_text(errors="replace")
            raise AssertionError(
                f"{self.log.name}: no exit within {timeout}s of SIGTERM; its end, with "
                f"the stacks of its threads:\n{text[-20_000:]}"
            ) from None

    def _stacks(self) -> int:
        return self.log.read_bytes().count(b"most recent call first") if self.log.exists() else 0

    def wait(self, timeout: float = 120) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        """Kill it, and its children (a supervisor's workers), so that a failed test
        leaves no worker running on."""
        if self.alive():
            assert self.proc is not None
            import psutil

            with contextlib.suppress(psutil.Error):
                for child in psutil.Process(self.proc.pid).children(recursive=True):
                    child.kill()
            self.proc.kill()
            self.proc.wait(10)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


def wait_until(
    condition: Callable[[], bool], timeout: float, what: str, workers: tuple[Worker, ...] = ()
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        for w in workers:
            if not w.alive():
                raise AssertionError(f"worker exited early while waiting for {what}:\n{w.tail()}")
        if time.monotonic() > deadline:
            logs = "\n".join(w.tail() for w in workers)
            raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{logs}")
        time.sleep(0.05)


def output_ids(values: list[bytes]) -> list[int]:
    decode = msgspec.json.Decoder().decode
    return [decode(v)["input"]["id"] for v in values]


class TopicReader:
    """Reads a topic's every partition from the start, as records arrive (no group)."""

    def __init__(self, bootstrap: str, topic: str, partitions: int) -> None:
        from confluent_kafka import Consumer, TopicPartition

        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": "test-topic-reader",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 10,
            }
        )
        self.consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        self.values: list[bytes] = []
        self.keys: list[str | None] = []
        self.partitions: list[int] = []
        self.headers: list[dict[str, bytes]] = []

    def read(self) -> int:
        """Take what has arrived; returns how many records were read in all."""
        for m in self.consumer.consume(5000, 0.05):
            if m.error() is None:
                self.values.append(m.value())
                key = m.key()
                self.keys.append(key.decode() if key is not None else None)
                self.partitions.append(m.partition())
                self.headers.append(dict(m.headers() or []))
        return len(self.values)

    def ids(self) -> list[int]:
        return output_ids(self.values)

    def close(self) -> None:
        self.consumer.close()


def insert_only_table(dsn: str, table: str = "predictions") -> None:
    """The sink's predictions table without its primary key: a duplicate would show."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            f"""CREATE TABLE {table} (topic text, partition integer, "offset" bigint,
            key text, prediction jsonb, model_name text, model_version text, model_sha256 text,
            event_time double precision, processed_at double precision, input jsonb)"""
        )


def pg_rows(dsn: str, table: str = "predictions") -> list[int]:
    """The input ids of every row of a predictions table, duplicates included."""
    import psycopg

    with psycopg.connect(dsn) as conn:
        try:
            rows = conn.execute(f"SELECT (input->>'id')::bigint FROM {table}").fetchall()
        except psycopg.errors.UndefinedTable:
            return []
    return [r[0] for r in rows]


def pg_count(dsn: str, table: str = "predictions") -> int:
    import psycopg

    with psycopg.connect(dsn) as conn:
        try:
            row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
        except psycopg.errors.UndefinedTable:
            return 0
    return int(row[0]) if row else 0


def committed(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        parts = c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
    finally:
        c.close()
    return {tp.partition: tp.offset for tp in parts}


def worker_metrics(port: int) -> dict[str, float]:
    """A worker's Prometheus metrics, ``name{labels}`` -> value; empty while its endpoint
    does not answer (not started yet, or gone)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def log_text(worker: Worker) -> str:
    """Everything the worker logged so far."""
    return worker.log.read_text(errors="replace") if worker.log.exists() else ""


def metrics_port(worker: Worker, timeout: float = 30) -> int:
    """The port a worker with ``metrics: {port: 0}`` serves /metrics on (it logs it once
    listening)."""
    import re

    found: list[int] = []

    def listening() -> bool:
        m = re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", log_text(worker))
        if m:
            found.append(int(m.group(1)))
        return bool(found)

    wait_until(listening, timeout, "the metrics endpoint", (worker,))
    return found[0]


def admin_post(port: int, path: str, token: str | None) -> int:
    """POST an admin call to a worker's metrics server; returns the HTTP status."""
    import urllib.error
    import urllib.request

    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=b"", method="POST", headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def memory_kib(pid: int) -> dict[str, int]:
    """``VmRSS`` (resident now) and ``VmHWM`` (the peak resident size) of a live process,
    in KiB, from /proc."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


class PacedProducer:
    """Produces reference events to ``topic`` at ``rate`` per second in a thread, each
    stamped (``ts``) with the time it was produced and keyed by its entity; ids count
    from 0. ``produced`` is how many were handed to the producer so far."""

    def __init__(
        self, bootstrap: str, topic: str, *, rate: float, count: int, seed: int = 7
    ) -> None:
        import threading

        self.bootstrap = bootstrap
        self.topic = topic
        self.rate = rate
        self.count = count
        self.seed = seed
        self.produced = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="paced-producer", daemon=True)

    def start(self) -> PacedProducer:
        self._thread.start()
        return self

    def _run(self) -> None:
        from confluent_kafka import Producer

        producer = Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 5})
        encode = msgspec.json.Encoder().encode
        events = SensorEvents(entities=64, seed=self.seed)

        def delivered(err: Any, _msg: Any) -> None:
            if err is not None:
                self.errors.append(str(err))

        start = time.monotonic()
        while self.produced < self.count and not self._stop.is_set():
            due = min(self.count, int((time.monotonic() - start) * self.rate)) - self.produced
            if due <= 0:
                time.sleep(0.002)  # pacing, not synchronisation
                continue
            batch, _ = events.make(start_id=self.produced, n=due, ts=time.time())
            for e in batch:
                producer.produce(
                    self.topic, encode(e), e["entity_id"].encode(), on_delivery=delivered
                )
            self.produced += due
            producer.poll(0)
        if producer.flush(30):
            self.errors.append("not every record was delivered within 30 s")

    def stop(self) -> None:
        """Produce no more (before ``count``); :meth:`join` still waits for deliveries."""
        self._stop.set()

    def join(self, timeout: float) -> int:
        """Wait for the last record to be delivered; returns how many were produced."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError(f"the producer did not finish within {timeout}s")
        if self.errors:
            raise AssertionError(f"{len(self.errors)} deliveries failed: {self.errors[0]}")
        return self.produced
