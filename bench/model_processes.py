"""Models that hold the GIL, in process: on an inference thread (the default), on the
event loop (``model_calls: loop``) and in processes of their own (``model_calls:
process``), against the model's own ``predict_batch`` on pre-built batches.

generator -> model -> null sink, batches of 256, for the scikit-learn forest of
``bench.engine_overhead`` (100 trees, ``score_samples``: most of a call in Python) and a
logistic regression written in pure Python (a loop per row). Records/s are counted from
the first batch written to the last, so the processes' start (about a second: each
imports NumPy, scikit-learn and Headrace) is left out and reported on its own, as the
time from the start of the run to the first batch written. The settings take turns
within each repeat.

    python -m bench.model_processes [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np

from bench.engine_overhead import direct, heavy_sklearn_model
from bench.machine import describe, source_state
from headrace import (
    CallableModel,
    EngineSettings,
    Featurizer,
    GeneratorSource,
    NullSink,
    Pipeline,
)
from headrace.models.base import Model
from headrace.runtime.outputs import ScoredBatch

RESULTS = Path(__file__).parent / "results"
BATCH = 256
WEIGHTS = [0.3, -0.2, 0.5, 0.1, -0.4, 0.25, -0.15, 0.05]


def pure_python(x: np.ndarray) -> list[float]:
    """Logistic regression, a Python loop per row: holds the GIL throughout."""
    out = []
    for row in x.tolist():
        z = 0.1
        for v, w in zip(row, WEIGHTS, strict=True):
            z += v * w
        out.append(1.0 / (1.0 + math.exp(-z)))
    return out


class TimedSink(NullSink):
    """A null sink that notes when the first and the last batch came."""

    def __init__(self) -> None:
        super().__init__()
        self.first: float | None = None
        self.first_n = 0
        self.last = 0.0

    async def write(self, batch: ScoredBatch) -> None:
        now = time.perf_counter()
        if self.first is None:
            self.first, self.first_n = now, len(batch)
        self.last = now
        await super().write(batch)


Calls = Literal["thread", "loop", "process"]
SETTINGS: list[tuple[Calls, int]] = [
    ("thread", 1),
    ("thread", 2),
    ("loop", 1),
    ("process", 1),
    ("process", 2),
]


def run(model: Model, n: int, calls: Calls, concurrency: int) -> dict[str, float]:
    sink = TimedSink()
    pipeline = (
        Pipeline("bench")
        .source(GeneratorSource(rate=0, count=n, entities=200, seed=1))
        .model(model, featurizer=Featurizer(vector="features"))
        .sink(sink)
        .settings(
            EngineSettings(
                max_batch_size=BATCH,
                max_wait=0.005,
                max_concurrency=concurrency,
                model_calls=calls,
            )
        )
    )
    started = time.perf_counter()
    summary = pipeline.run(install_signal_handlers=False)
    assert summary.records_out == n, summary
    assert sink.first is not None
    return {
        "records_per_s": round((n - sink.first_n) / (sink.last - sink.first)),
        "first_output_s": round(sink.first - started, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    # By its module's name: run with -m, this file is __main__, which the model's
    # process cannot import.
    from bench import model_processes

    pure = CallableModel(model_processes.pure_python, name="pure", version="1")
    models: dict[str, tuple[Model, int]] = {
        "sklearn forest": (heavy_sklearn_model(), 100_000),
        "pure-Python logistic": (pure, 200_000),
    }
    results: dict[str, Any] = {}
    for name, (model, n) in models.items():
        runs: dict[str, list[dict[str, float]]] = {f"{c} x{k}": [] for c, k in SETTINGS}
        directs = []
        for _ in range(args.repeats):
            directs.append(round(direct(model, min(n, 50_000))))
            for calls, concurrency in SETTINGS:
                r = run(model, n, calls, concurrency)
                runs[f"{calls} x{concurrency}"].append(r)
                print(f"{name:>22} {calls:>7} x{concurrency}: {r}", flush=True)
        direct_rate = statistics.median(directs)
        results[name] = {
            "records": n,
            "direct_records_per_s": directs,
            "runs": runs,
            "median_to_direct": {
                k: round(statistics.median(r["records_per_s"] for r in rs) / direct_rate, 3)
                for k, rs in runs.items()
            },
        }
        print(name, results[name]["median_to_direct"], flush=True)
    machine = describe("numpy", "scikit-learn", "msgspec")
    record = {
        "benchmark": "model_processes",
        "machine": machine,
        "source": source_state(),
        "command": f"python -m bench.model_processes --repeats {args.repeats}",
        "workload": {
            "batch": BATCH,
            "note": "records/s from the first batch written to the last; first_output_s "
            "from the run's start; direct: predict_batch on pre-built batches, same run",
        },
        "results": results,
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"model_processes-{machine['date'][:10]}.json"
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"results: {out}")


if __name__ == "__main__":
    main()
