"""JSON-lines files as columns against line by line: a file of reference events -> the
light model -> a null sink, a JSON-lines sink and a SQLite table, the source reading runs
of lines as batches of their bytes (decoded straight into the model's columns) or a
record per line, taking turns.

The line-by-line path is the source with ``read_as_batches`` refused (what every
version before this one did); everything else is the same process, file and model.

    python -m bench.files_columns [--records 200000] [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.engine_overhead import light_model
from bench.machine import describe, source_state
from headrace import (
    EngineSettings,
    Featurizer,
    JsonLinesSink,
    NullSink,
    Pipeline,
    SensorEvents,
    SqliteSink,
)
from headrace.connectors.base import Sink
from headrace.connectors.files import JsonLinesSource
from headrace.runtime.decode import JsonDecoder

RESULTS = Path(__file__).parent / "results"


class LineByLine(JsonLinesSource):
    """The source as it was: a record per line."""

    def read_as_batches(self) -> bool:
        return False


def one_run(path: Path, n: int, source: JsonLinesSource, sink: Sink) -> float:
    pipeline = (
        Pipeline("files")
        .source(source, decoder=JsonDecoder(key_field="entity_id"))
        .model(light_model(), featurizer=Featurizer(vector="features"))
        .sink(sink)
        .settings(EngineSettings(max_batch_size=256))
    )
    started = time.perf_counter()
    summary = pipeline.run(install_signal_handlers=False)
    elapsed = time.perf_counter() - started
    assert summary.records_out == n, summary
    return n / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    n = args.records
    machine = describe("numpy", "msgspec")
    started = time.monotonic()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="headrace-files-") as tmp:
        path = Path(tmp) / "events.jsonl"
        events, _ = SensorEvents(entities=200, seed=1).make(start_id=0, n=n, ts=1.0)
        path.write_text("".join(json.dumps(e) + "\n" for e in events))
        del events
        for sink_name in ("null", "jsonl", "sqlite"):
            rates: dict[str, list[float]] = {"line by line": [], "columns": []}
            for i in range(args.runs):
                for way, kind in (("line by line", LineByLine), ("columns", JsonLinesSource)):
                    out = Path(tmp) / f"out-{sink_name}-{way}-{i}"
                    sink: Sink = (
                        NullSink()
                        if sink_name == "null"
                        else JsonLinesSink(out)
                        if sink_name == "jsonl"
                        else SqliteSink(out)
                    )
                    rates[way].append(one_run(path, n, kind(path), sink))
                    out.unlink(missing_ok=True)
            med = {way: statistics.median(r) for way, r in rates.items()}
            results[sink_name] = {
                "records_per_s": {way: [round(x) for x in r] for way, r in rates.items()},
                "median_records_per_s": {way: round(m) for way, m in med.items()},
                "columns_to_line_by_line": round(med["columns"] / med["line by line"], 3),
            }
            print(
                f"{sink_name:>5} sink: line by line {med['line by line']:>9,.0f}/s, columns "
                f"{med['columns']:>9,.0f}/s ({results[sink_name]['columns_to_line_by_line']:.2f}x)"
            )
    record = {
        "benchmark": "files_columns",
        "machine": machine,
        "source": source_state(),
        "workload": {
            "pipeline": "JSON-lines file of reference events -> light numpy logistic "
            "regression (features declared, key_field entity_id) -> sink",
            "records": n,
            "batch_size": 256,
            "runs": args.runs,
            "note": "the two ways take turns in one process; medians",
        },
        "results": results,
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    if not args.no_save:
        RESULTS.mkdir(exist_ok=True)
        out = RESULTS / f"files_columns-{machine['date'][:10]}.json"
        out.write_text(json.dumps(record, indent=2) + "\n")
        print(f"results: {out}")


if __name__ == "__main__":
    main()
