"""The same kind of pipeline built in Python, for what YAML cannot express: here a
scikit-learn model trained in-process and a custom post-processing of its scores.

    .venv/bin/python examples/python_pipeline.py
"""

from __future__ import annotations

import numpy as np
from sklearn.ensemble import IsolationForest

from headrace import (
    CallableModel,
    Featurizer,
    GeneratorSource,
    JsonLinesSink,
    Pipeline,
    SensorEvents,
    SqliteSink,
)


def main() -> None:
    # Train on normal events from the same seeded generator the pipeline reads.
    _, x, _ = SensorEvents(entities=50, anomaly_rate=0.0, seed=1).features(10_000)
    forest = IsolationForest(n_estimators=50, random_state=1).fit(x)

    def anomaly_probability(features: np.ndarray) -> np.ndarray:
        # Any batch-level Python is fine here: it runs in an executor thread.
        score = -forest.decision_function(features)
        return 1.0 / (1.0 + np.exp(-20.0 * score))

    summary = (
        Pipeline("python-example")
        .source(GeneratorSource(rate=5000, seconds=3, entities=50, seed=1))
        .model(
            CallableModel(anomaly_probability, name="iforest-prob", version="1"),
            featurizer=Featurizer(vector="features"),
        )
        .batching(max_size=256, max_wait=0.02, max_concurrency=1)
        .sink(SqliteSink("demo-output/python-example.db"))
        .sink(JsonLinesSink("demo-output/python-example-alerts.jsonl"), above=0.9)
        .dead_letter(JsonLinesSink("demo-output/python-example-dead-letters.jsonl"))
        .run()
    )
    print(
        f"scored {summary.records_out:,} events at {summary.records_per_second:,.0f}/s, "
        f"p99 latency {summary.latency_p99 * 1000:.1f} ms, "
        f"{summary.written['jsonl']:,} alerts"
    )


if __name__ == "__main__":
    main()
