"""MQTT -> the light model -> JSON lines: Headrace against the paho subscribers users write.

A private mosquitto (``max_queued_messages 0``: the broker's default of 1,000 queued
messages per session would drop most of a backlog) on a free loopback port. Per run, a
fresh topic and session: the subscriber subscribes once (creating its persistent
session), a backlog of reference events is published into the session at QoS 1, and the
subscriber starts again and drains it. Systems, taking turns:

- ``paho, per message``: scores each message in ``on_message``; paho acknowledges it when
  the callback returns (before the output reaches the disk: a crash loses it);
- ``paho, batches``: ``on_message`` queues, the main thread scores up to 256 at once,
  writes, flushes, then acknowledges (at-least-once, as Headrace);
- ``headrace``: an ``mqtt`` source, the model's features declared, a ``jsonl`` sink,
  batches of 256, everything else default.

Records/s from the first output to the last (Headrace's counted by its
``headrace_records_out`` metric, read every 0.1 s), the worker's and the broker's CPU per
record over that span, and an audit of the output file: every input id once.

    python -m bench.mqtt_throughput [--records 100000] [--repeats 3]
        [--setting SECTION:KEY=VALUE ...] [--name mqtt_throughput] [--no-save]

``--setting runtime:commit_interval_ms=1000`` adds Headrace with that one setting.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec
import paho.mqtt.client as paho
import psutil
from paho.mqtt.enums import CallbackAPIVersion

from bench.kafka_throughput import RESULTS, cpu_seconds, stop, tail
from bench.machine import ROOT, describe, source_state
from bench.paced_latency import parse_setting
from headrace.connectors.generator import SensorEvents
from kafka_helpers import free_port  # tests/ is on the path

SYSTEMS = ("paho, per message", "paho, batches of 256", "headrace")
SECTIONS_HEADRACE = ("source", "batching", "runtime")


@contextmanager
def mosquitto(workdir: Path) -> Iterator[tuple[int, psutil.Process]]:
    """A private broker that queues without limit; yields its port and process."""
    binary = shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.path.exists(p)),
        None,
    )
    if binary is None:
        raise SystemExit("mosquitto is not installed (apt install mosquitto)")
    port = free_port()
    conf = workdir / "mosquitto.conf"
    # As root, mosquitto drops to its own user unless told to stay.
    user = pwd.getpwuid(os.geteuid()).pw_name
    conf.write_text(
        f"user {user}\nlistener {port} 127.0.0.1\nallow_anonymous true\n"
        "persistence false\nmax_queued_messages 0\nmax_queued_bytes 0\n"
    )
    log = (workdir / "mosquitto.log").open("wb")
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with paho_connected(port, "bench-probe"):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    why = tail(workdir / "mosquitto.log")
                    raise SystemExit(f"mosquitto did not start: {why}") from None
                time.sleep(0.05)
        yield port, psutil.Process(proc.pid)
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


@contextmanager
def paho_connected(port: int, client_id: str) -> Iterator[paho.Client]:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
    client.max_inflight_messages_set(1000)  # for publishing; set before connecting
    client.connect("127.0.0.1", port, 30)
    client.loop_start()
    try:
        yield client
    finally:
        client.disconnect()
        client.loop_stop()


def publish(port: int, topic: str, n: int) -> None:
    """``n`` reference events (ids 0..n-1) at QoS 1; returns once the broker has them all."""
    acked = 0
    lock = threading.Condition()

    def on_publish(*_: Any) -> None:
        nonlocal acked
        with lock:
            acked += 1
            lock.notify()

    events = SensorEvents(entities=100, anomaly_rate=0.01, seed=5)
    encode = msgspec.json.encode
    with paho_connected(port, f"bench-pub-{uuid.uuid4().hex[:8]}") as client:
        client.on_publish = on_publish
        for start in range(0, n, 1000):
            chunk, _ = events.make(start_id=start, n=min(1000, n - start), ts=time.time())
            for event in chunk:
                client.publish(topic, encode(event), qos=1)
            sent = start + len(chunk)
            with lock:  # paho's own queue kept short: at most 5,000 awaiting a PUBACK
                lock.wait_for(lambda sent=sent: sent - acked <= 5000, timeout=60)
        with lock:
            if not lock.wait_for(lambda: acked >= n, timeout=120):
                raise RuntimeError(f"published {n}, the broker acknowledged {acked}")


def audit(path: Path, n: int) -> dict[str, int]:
    """Input ids in the output file against 0..n-1."""
    ids: list[int] = []
    with path.open("rb") as f:
        for line in f:
            if line.strip():
                ids.append(int(json.loads(line)["input"]["id"]))
    seen = set(ids)
    return {
        "outputs": len(ids),
        "missing": len(set(range(n)) - seen),
        "duplicated": len(ids) - len(seen),
    }


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests"), e.get("PYTHONPATH", "")])
    return e


def run_paho(port: int, broker: psutil.Process, workdir: Path, mode: str, n: int) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:8]
    topic, client_id, out = f"bench/{tag}", f"bench-sub-{tag}", workdir / f"{tag}.jsonl"
    cmd = [sys.executable, "-m", "bench.mqtt_subscriber", "--port", str(port), "--topic", topic]
    cmd += ["--client-id", client_id, "--out", str(out), "--mode", mode]
    subprocess.run([*cmd, "--count", "0"], check=True, env=env(), timeout=60)
    publish(port, topic, n)
    proc = subprocess.Popen([*cmd, "--count", str(n)], stdout=subprocess.PIPE, env=env(), text=True)
    assert proc.stdout is not None
    marks: dict[str, list[str]] = {}
    broker_cpu: list[float] = []
    for line in proc.stdout:
        word, *rest = line.split()
        marks[word] = rest
        broker_cpu.append(cpu_seconds(broker))
        if word == "done":
            break
    if proc.wait(60) != 0 or "done" not in marks:
        raise RuntimeError(f"paho {mode}: exited {proc.returncode} with {marks}")
    t0, c0 = map(float, marks["first"])
    t1, c1 = map(float, marks["done"][:2])
    return measure(n, t1 - t0, c1 - c0, broker_cpu[-1] - broker_cpu[0], audit(out, n))


def run_headrace(
    port: int,
    broker: psutil.Process,
    workdir: Path,
    n: int,
    settings: dict[str, tuple[tuple[str, Any], ...]] | None = None,
) -> dict[str, Any]:
    """Headrace with defaults, or with ``settings`` ({section: ((key, value), ...)}) more."""
    more = dict.fromkeys(SECTIONS_HEADRACE, "")
    for section, pairs in (settings or {}).items():
        more[section] += "".join(f"  {k}: {json.dumps(v)}\n" for k, v in pairs)
    runtime = f"runtime:\n{more['runtime']}" if more["runtime"] else ""
    tag = uuid.uuid4().hex[:8]
    topic, out, metrics = f"bench/{tag}", workdir / f"{tag}.jsonl", free_port()
    config = workdir / f"{tag}.yaml"
    config.write_text(
        f"""\
name: bench-mqtt
source:
  type: mqtt
  port: {port}
  topics: [{topic}]
  client_id: bench-headrace-{tag}
{more["source"]}model:
  type: callable
  name: logistic
  version: "1"
  function: bench.plain_loop:light
  features:
    vector: features
batching:
  max_size: 256
{more["batching"]}{runtime}metrics:
  port: {metrics}
sinks:
  - type: jsonl
    path: {out}
"""
    )
    headrace = Path(sys.executable).parent / "headrace"
    cli = [str(headrace)] if headrace.exists() else [sys.executable, "-m", "headrace.cli"]
    cmd = [*cli, "run", str(config), "--no-progress"]
    log = workdir / f"{tag}.log"

    def start() -> subprocess.Popen[bytes]:
        with log.open("ab") as f:
            return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env())

    def scraped(proc: subprocess.Popen[bytes]) -> tuple[int, float] | None:
        """(records out, when) from the metrics endpoint; None until it answers."""
        if proc.poll() is not None:
            raise RuntimeError(f"headrace exited {proc.returncode}: {tail(log)}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5) as r:
                text = r.read().decode()
        except OSError:
            return None
        now = time.time()
        for line in text.splitlines():
            if line.startswith("headrace_records_out_total "):
                return int(float(line.split()[1])), now
        return None

    # First start: subscribe (the session is created), then stop.
    proc = start()
    deadline = time.monotonic() + 60
    while scraped(proc) is None:
        if time.monotonic() > deadline:
            raise RuntimeError(f"headrace did not start: {tail(log)}")
        time.sleep(0.1)
    stop(proc)
    out.unlink(missing_ok=True)
    publish(port, topic, n)
    proc = start()
    process = psutil.Process(proc.pid)
    first: tuple[float, float, float] | None = None
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            got = scraped(proc)
            if got is not None and got[0] > 0:
                count, when = got
                if first is None:
                    first = (when, cpu_seconds(process), cpu_seconds(broker))
                if count >= n:
                    wall, cpu, broker_cpu = (
                        when - first[0],
                        cpu_seconds(process) - first[1],
                        cpu_seconds(broker) - first[2],
                    )
                    break
            time.sleep(0.1)
        else:
            raise RuntimeError(f"headrace: not all {n} scored in 600 s: {tail(log)}")
    finally:
        stop(proc)
    return measure(n, wall, cpu, broker_cpu, audit(out, n))


def measure(
    n: int, wall: float, cpu: float, broker_cpu: float, checked: dict[str, int]
) -> dict[str, Any]:
    if checked["missing"] or checked["outputs"] < n:
        raise RuntimeError(f"outputs missing: {checked}")
    return {
        "records_per_s": round(n / wall),
        "worker_cpu_us_per_record": round(cpu / n * 1e6, 1),
        "broker_cpu_us_per_record": round(broker_cpu / n * 1e6, 1),
        **checked,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--name", default="mqtt_throughput")
    parser.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="SECTION:KEY=VALUE",
        help="also Headrace with this one setting (SECTION: source, batching or runtime); "
        "repeatable, a worker each",
    )
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    n = args.records
    variants = {
        f"headrace, {text.partition(':')[2]}": parse_setting(text, SECTIONS_HEADRACE)
        for text in args.setting
    }
    systems = (*SYSTEMS, *variants)
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in systems}
    with tempfile.TemporaryDirectory(prefix="headrace-mqtt-") as tmp:
        workdir = Path(tmp)
        with mosquitto(workdir) as (port, broker):
            for repeat in range(args.repeats):
                order = systems if repeat % 2 == 0 else systems[::-1]
                for system in order:
                    if system.startswith("headrace"):
                        result = run_headrace(port, broker, workdir, n, variants.get(system))
                    else:
                        mode = "message" if "per message" in system else "batch"
                        result = run_paho(port, broker, workdir, mode, n)
                    print(f"  {system:<24} {result}", flush=True)
                    runs[system].append(result)
    medians = {
        s: {
            k: statistics.median(r[k] for r in rs)
            for k in ("records_per_s", "worker_cpu_us_per_record", "broker_cpu_us_per_record")
        }
        for s, rs in runs.items()
    }
    print()
    for s, m in medians.items():
        each = ", ".join(f"{r['records_per_s']:,}" for r in runs[s])
        print(
            f"{s:<24} {each} records/s; worker {m['worker_cpu_us_per_record']} us/record, "
            f"broker {m['broker_cpu_us_per_record']} us/record"
        )
    if args.no_save:
        return
    record = {
        "benchmark": "mqtt_throughput",
        "machine": describe("headrace", "paho-mqtt", "numpy"),
        "workload": {
            "records": n,
            "repeats": args.repeats,
            "model": "light (bench.plain_loop:light)",
            "settings": args.setting,
            "note": "a backlog published at QoS 1 into each subscriber's persistent session "
            "on a private mosquitto, then drained; records/s from the first output to the "
            "last; CPU per record over the same span; every output file audited",
        },
        "source": source_state(),
        "runs": runs,
        "medians": medians,
    }
    day = record["machine"]["date"][:10]
    path = RESULTS / f"{args.name}-{day}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"results: {path}")


if __name__ == "__main__":
    main()
