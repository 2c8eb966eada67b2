"""The in-process engine, this tree against an earlier commit, taking turns: generator ->
the light model -> null sink, at one batch size and concurrency.

Each run is a fresh process (``python -c`` on ``bench.engine_overhead.through_engine``)
with either this tree's ``src`` or the earlier commit's (checked out from this
repository into a temporary directory) first on ``PYTHONPATH``; the two take turns, so a
slow minute on the machine hits both.

    python -m bench.engine_commits [--before b5c0aa1] [--runs 7] [--batch 256]
        [--concurrency 2] [--records 600064]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.kafka_columns import checkout
from bench.machine import describe, source_state

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"

# Only what both trees have (the light model of bench.engine_overhead, written out).
ONE_RUN = """
import sys, time
import numpy as np
from headrace import (
    CallableModel, EngineSettings, Featurizer, GeneratorSource, NullSink, Pipeline
)
n, batch, concurrency = (int(a) for a in sys.argv[1:4])
rng = np.random.default_rng(0)
w = rng.normal(size=8).astype(np.float32)
b = np.float32(0.1)
model = CallableModel(lambda x: 1.0 / (1.0 + np.exp(-(x @ w + b))), name="logistic")
pipeline = (
    Pipeline("bench")
    .source(GeneratorSource(rate=0, count=n, entities=200, seed=1))
    .model(model, featurizer=Featurizer(vector="features"))
    .sink(NullSink())
    .settings(
        EngineSettings(max_batch_size=batch, max_wait=0.005, max_concurrency=concurrency)
    )
)
started = time.perf_counter()
summary = pipeline.run(install_signal_handlers=False)
elapsed = time.perf_counter() - started
assert summary.records_out == n, summary
print(n / elapsed)
"""


def one_run(src: Path, n: int, batch: int, concurrency: int) -> float:
    env = {**os.environ, "PYTHONPATH": f"{src}:{ROOT}"}
    out = subprocess.run(
        [sys.executable, "-c", ONE_RUN, str(n), str(batch), str(concurrency)],
        env=env,
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return float(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="b5c0aa1", help="the commit to compare with")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--records", type=int, default=600_064)
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    machine = describe("numpy")
    started = time.monotonic()
    rates: dict[str, list[float]] = {args.before: [], "this tree": []}
    with tempfile.TemporaryDirectory(prefix="headrace-engine-") as tmp:
        sources = {args.before: checkout(args.before, Path(tmp)), "this tree": ROOT / "src"}
        for _ in range(args.runs):
            for name, src in sources.items():
                rates[name].append(one_run(src, args.records, args.batch, args.concurrency))
    medians = {name: statistics.median(r) for name, r in rates.items()}
    for name, r in rates.items():
        print(
            f"{name:>10}: median {medians[name]:>12,.0f} records/s, runs "
            f"{', '.join(f'{x:,.0f}' for x in r)}"
        )
    ratio = medians["this tree"] / medians[args.before]
    print(f"this tree / {args.before}: {ratio:.3f}")
    record = {
        "benchmark": "engine_commits",
        "machine": machine,
        "source": source_state(),
        "workload": {
            "pipeline": "generator -> light numpy logistic regression -> null sink",
            "records": args.records,
            "batch_size": args.batch,
            "max_concurrency": args.concurrency,
            "runs": args.runs,
            "note": "a fresh process per run; the two trees take turns",
        },
        "records_per_s": {name: [round(x) for x in r] for name, r in rates.items()},
        "median_records_per_s": {name: round(m) for name, m in medians.items()},
        "ratio_this_tree_to_before": round(ratio, 3),
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    if not args.no_save:
        RESULTS.mkdir(exist_ok=True)
        out = RESULTS / f"engine_commits-{machine['date'][:10]}.json"
        out.write_text(json.dumps(record, indent=2) + "\n")
        print(f"results: {out}")


if __name__ == "__main__":
    main()
