"""Running `headrace run` workers against a real broker in tests: `from workers import ...`.

A worker is a real process: tests kill it with real signals. Helpers wait on conditions
with timeouts, never on fixed sleeps.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from headrace.connectors.generator import SensorEvents

SLOW_MODEL = """
import os, time

import numpy as np

DELAY = float(os.environ.get("SLOW_MODEL_DELAY", "0.0"))


def score(x):
    if DELAY:
        time.sleep(DELAY)
    return x.sum(axis=1)
"""


def models_env(tmp_path: Path, delay: float = 0.0) -> dict[str, str]:
    """An environment where `workermodels:score` is importable (sums the features, after
    sleeping ``delay`` seconds per batch)."""
    models = tmp_path / "models"
    models.mkdir(exist_ok=True)
    (models / "workermodels.py").write_text(SLOW_MODEL)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(models), env.get("PYTHONPATH", "")])
    env["SLOW_MODEL_DELAY"] = str(delay)
    return env


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
) -> Path:
    """Write a Kafka pipeline YAML: `topic` -> `workermodels:score` -> ``sinks``."""
    path.write_text(
        f"""
name: kafka-test
kafka:
  bootstrap_servers: {bootstrap}
  consumer:
    session.timeout.ms: 6000
    fetch.wait.max.ms: 10
  producer:
    linger.ms: 5
source:
  type: kafka
  topics: [{topic}]
  group_id: {group}
  key_field: entity_id
  time_field: ts
model:
  type: callable
  name: feature-sum
  version: "1"
  function: workermodels:score
  features:
    vector: features
batching:
  max_size: 64
  max_wait_ms: 5
flow:
  max_in_flight: {max_in_flight}
runtime:
  commit_interval_ms: {commit_interval_ms}
  shutdown_timeout_s: 20
delivery: {delivery}
sinks:
{sinks}
{extra}
"""
    )
    return path


def reference_events(n: int, *, seed: int = 5) -> list[dict[str, Any]]:
    events, _ = SensorEvents(entities=64, seed=seed).make(start_id=0, n=n, ts=time.time())
    return events


class Worker:
    """One `headrace run` process."""

    def __init__(self, config: Path, env: dict[str, str], log: Path) -> None:
        self.config = config
        self.env = env
        self.log = log
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
                    "info",
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

    def terminate(self, timeout: float = 60) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def wait(self, timeout: float = 120) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.alive():
            assert self.proc is not None
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

    def read(self) -> int:
        """Take what has arrived; returns how many records were read in all."""
        for m in self.consumer.consume(5000, 0.05):
            if m.error() is None:
                self.values.append(m.value())
                key = m.key()
                self.keys.append(key.decode() if key is not None else None)
                self.partitions.append(m.partition())
        return len(self.values)

    def ids(self) -> list[int]:
        return output_ids(self.values)

    def close(self) -> None:
        self.consumer.close()


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
