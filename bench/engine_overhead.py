"""Engine overhead, in process: generator -> model -> null sink, against the model alone.

For a light model (NumPy logistic regression on 8 features) and a heavy one (an
IsolationForest of 100 trees, both as ONNX in ONNX Runtime and as the scikit-learn object
itself), it measures records/s through the whole engine and records/s of the model's own
``predict_batch`` called directly on pre-built batches of the same size, in the same run,
and reports the ratio engine/direct and the engine's cost per record.

Each model runs with the settings that suit it on a 2-core machine: ONNX Runtime releases
the GIL, so two batches run at once with one intra-op thread each; scikit-learn's forest
spends much of a call in Python, holding the GIL, so one batch at a time.

The generator delivers its chunks as columns (a ``RecordBatch``), so the engine builds no
record for them. A third figure is the path of a connector that builds a ``Record`` per
event: the engine fed by a source that replays pre-built events as lists of records
(records, batching, featurizing from their values, tracking offsets, the null sink).

The light model runs at batches of 256 with one batch at a time (as before) and with the
default two, and at batches of 1,024 and 2,048: what the engine costs per batch (tasks, a
hand-off to an executor thread, bookkeeping) is most of what remains at 256. The models
that hold the GIL (the light one, the scikit-learn forest) run again with
``model_calls="loop"``: called on the event loop, without the hand-off to a thread and
back.

    python -m bench.engine_overhead [--quick] [--name NAME]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np

from bench.machine import describe
from headrace import (
    CallableModel,
    EngineSettings,
    Featurizer,
    GeneratorSource,
    NullSink,
    OnnxModel,
    Pipeline,
    Record,
    SensorEvents,
    SklearnModel,
    Source,
)
from headrace.connectors.base import DecodedSource
from headrace.models.base import Model
from headrace.record import source_record

BATCH = 256
RESULTS = Path(__file__).parent / "results"


def light_model() -> Model:
    rng = np.random.default_rng(0)
    w = rng.normal(size=8).astype(np.float32)
    b = np.float32(0.1)

    def logistic(x: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-(x @ w + b)))

    return CallableModel(logistic, name="logistic", version="1")


def heavy_sklearn_model() -> Model:
    from sklearn.ensemble import IsolationForest

    _, x, _ = SensorEvents(entities=200, anomaly_rate=0.0, seed=7).features(20_000)
    forest = IsolationForest(n_estimators=100, random_state=7).fit(x.astype(np.float32))
    return SklearnModel(
        forest, method="score_samples", negate=True, name="isolation-forest", version="1"
    )


def heavy_onnx_model(directory: Path) -> Model:
    from headrace.demo import build_demo_model

    path = directory / "isolation-forest.onnx"
    sha256 = build_demo_model(path)
    return OnnxModel.from_file(
        path, sha256=sha256, name="isolation-forest", output="anomaly_score", threads=1
    )


class ReplaySource(DecodedSource):
    """Replays pre-built events as fresh records: the engine's cost without the generator's."""

    def __init__(self, events: list[dict[str, Any]], chunk: int = 512) -> None:
        self.events = events
        self.chunk = chunk

    async def chunks(self) -> AsyncIterator[list[Record]]:
        events, chunk = self.events, self.chunk
        now = time.time()
        for start in range(0, len(events), chunk):
            # Built as the connectors build theirs (source_record: half the cost of
            # Record(...) with keywords), so this figure is the engine's, as before.
            yield [
                source_record(
                    key=e["entity_id"],
                    value=e,
                    event_time=now,
                    topic="replay",
                    partition=0,
                    offset=start + i,
                )
                for i, e in enumerate(events[start : start + chunk])
            ]
            await asyncio.sleep(0)


def through_engine(
    model: Model,
    source: Source,
    n: int,
    concurrency: int,
    batch: int = BATCH,
    calls: Literal["thread", "loop"] = "thread",
) -> float:
    settings = EngineSettings(
        max_batch_size=batch, max_wait=0.005, max_concurrency=concurrency, model_calls=calls
    )
    pipeline = (
        Pipeline("bench")
        .source(source)
        .model(model, featurizer=Featurizer(vector="features"))
        .sink(NullSink())
        .settings(settings)
    )
    started = time.perf_counter()
    summary = pipeline.run(install_signal_handlers=False)
    elapsed = time.perf_counter() - started
    assert summary.records_out == n, summary
    return n / elapsed


def direct(model: Model, n: int, batch: int = BATCH) -> float:
    events, _ = SensorEvents(entities=200, seed=1).make(start_id=0, n=n, ts=0.0)
    x = np.array([e["features"] for e in events], dtype=np.float32)
    batches = [x[i : i + batch] for i in range(0, n, batch)]
    started = time.perf_counter()
    for inputs in batches:
        model.predict_batch(inputs)
    return n / (time.perf_counter() - started)


def median_of(runs: int, fn: Callable[[], float]) -> float:
    return statistics.median(fn() for _ in range(runs))


def measure(
    name: str,
    model: Model,
    n: int,
    runs: int,
    concurrency: int,
    batch: int = BATCH,
    calls: Literal["thread", "loop"] = "thread",
) -> dict[str, Any]:
    def generated() -> float:
        source = GeneratorSource(rate=0, count=n, entities=200, seed=1)
        return through_engine(model, source, n, concurrency, batch, calls)

    direct_rate = median_of(runs, lambda: direct(model, n, batch))
    engine_rate = median_of(runs, generated)
    # Built only now: n live event dicts would slow every earlier run through the garbage
    # collector's passes over them.
    events, _ = SensorEvents(entities=200, seed=1).make(start_id=0, n=n, ts=0.0)
    replay_rate = median_of(
        runs, lambda: through_engine(model, ReplaySource(events), n, concurrency, batch, calls)
    )
    result = {
        "model": name,
        "records": n,
        "batch_size": batch,
        "max_concurrency": concurrency,
        "model_calls": calls,
        "direct_records_per_s": round(direct_rate),
        "engine_records_per_s": round(engine_rate),
        "engine_replay_records_per_s": round(replay_rate),
        "ratio_engine_to_direct": round(engine_rate / direct_rate, 3),
        "overhead_us_per_record": round((1 / engine_rate - 1 / direct_rate) * 1e6, 2),
        "overhead_us_per_record_without_generator": round(
            (1 / replay_rate - 1 / direct_rate) * 1e6, 2
        ),
    }
    print(
        f"{name:>22} b{batch:<5}c{concurrency} {calls:<6}: direct {direct_rate:>10,.0f}/s  "
        f"engine {engine_rate:>10,.0f}/s  "
        f"ratio {result['ratio_engine_to_direct']:.3f}  overhead "
        f"{result['overhead_us_per_record']:.2f} us/record "
        f"({result['overhead_us_per_record_without_generator']:.2f} from lists of records)"
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer records, one run each")
    parser.add_argument(
        "--name", default="engine_overhead", help="the result file's name, before the date"
    )
    args = parser.parse_args()
    runs = 1 if args.quick else 3
    scale = 0.2 if args.quick else 1.0
    with tempfile.TemporaryDirectory() as tmp:
        results = [
            measure("light numpy-lr", light_model(), int(300_000 * scale), runs, 1),
            # The default max_concurrency (2), and larger batches: the engine's cost per
            # batch (tasks, a thread hand-off, bookkeeping) is what remains at 256.
            *(
                measure("light numpy-lr", light_model(), int(600_000 * scale), runs, 2, b)
                for b in (256, 1024, 2048)
            ),
            # On the event loop: no hand-off to a thread and back per batch.
            measure("light numpy-lr", light_model(), int(600_000 * scale), runs, 2, 256, "loop"),
            measure(
                "heavy iforest-onnx", heavy_onnx_model(Path(tmp)), int(60_000 * scale), runs, 2
            ),
            measure("heavy iforest-sklearn", heavy_sklearn_model(), int(40_000 * scale), runs, 1),
            measure(
                "heavy iforest-sklearn",
                heavy_sklearn_model(),
                int(40_000 * scale),
                runs,
                1,
                BATCH,
                "loop",
            ),
        ]
    record = {
        "benchmark": "engine_overhead",
        "machine": describe("numpy", "scikit-learn", "onnxruntime", "msgspec"),
        "results": results,
    }
    RESULTS.mkdir(exist_ok=True)
    day = record["machine"]["date"][:10]
    out = RESULTS / f"{args.name}-{day}{'-quick' if args.quick else ''}.json"
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"results: {out}")


if __name__ == "__main__":
    main()
