"""The baseline: a plain confluent-kafka scoring loop, as users write it without Headrace.

Consume a batch, decode each value with the standard ``json`` module, build the feature
matrix, predict, produce one JSON output per record (the same shape Headrace writes),
flush the producer, commit the consumer's offsets, repeat.

``--commit sync`` (the default) commits synchronously: at-least-once, offsets are committed
only after the batch's outputs were acknowledged by the broker, and the loop waits for
the commit. ``--commit async`` is the loop most users write: ``commit(asynchronous=True)``
without explicit offsets, which does not wait, and which commits the consumer's *current*
position (issue 13 measured it losing 256-512 records per crash).

    python -m bench.plain_loop -b 127.0.0.1:9092 -i events -o predictions -g plain \\
        --model light
    python -m bench.plain_loop ... --model heavy --onnx-path model.onnx
    python -m bench.plain_loop ... --model sklearn --commit async

Runs until SIGTERM or SIGINT, then finishes the batch in hand, closes and exits 0. It
writes ``assigned ...`` to stderr when partitions are assigned (the benchmark waits for
it) and a one-line summary at the end.
"""

from __future__ import annotations

import argparse
import functools
import json
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from confluent_kafka import Consumer, KafkaException, Producer

Predict = Callable[[np.ndarray], np.ndarray]

# The light model: logistic regression on the 8 features, the weights of
# bench/engine_overhead.py.
_rng = np.random.default_rng(0)
_W = _rng.normal(size=8).astype(np.float32)
_B = np.float32(0.1)


def light(x: np.ndarray) -> np.ndarray:
    """Logistic regression over a (n, 8) float32 batch: one probability per row."""
    result: np.ndarray = 1.0 / (1.0 + np.exp(-(x @ _W + _B)))
    return result


@functools.cache
def _forest() -> Any:
    """The scikit-learn model: an IsolationForest of 100 trees, fitted once per process on
    seeded reference events (about a second; the benchmarks' intervals start at the first
    output, after it)."""
    from sklearn.ensemble import IsolationForest

    from headrace import SensorEvents

    _, x, _ = SensorEvents(entities=200, anomaly_rate=0.0, seed=7).features(20_000)
    return IsolationForest(n_estimators=100, random_state=7).fit(x.astype(np.float32))


def forest(x: np.ndarray) -> np.ndarray:
    """Anomaly scores from the scikit-learn forest: it spends much of a call in Python,
    holding the GIL (the kind of model issue 14 calls HEAVY)."""
    result: np.ndarray = -_forest().score_samples(x)
    return result


def onnx_model(path: str, output: str = "anomaly_score", threads: int = 1) -> Predict:
    """The heavy model: the ONNX IsolationForest, one intra-op thread, ``(n,)`` scores."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def predict(x: np.ndarray) -> np.ndarray:
        result: np.ndarray = session.run([output], {name: x})[0].reshape(-1)
        return result

    return predict


def consumer_settings(bootstrap: str, group: str) -> dict[str, Any]:
    """The settings the benchmark gives Headrace's source too (Tansu needs the short fetch
    wait; a short session timeout makes its group join faster)."""
    return {
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": 6000,
        "fetch.wait.max.ms": 10,
    }


def run(
    bootstrap: str,
    topic: str,
    output_topic: str,
    group: str,
    predict: Predict,
    *,
    model_name: str,
    model_version: str = "1",
    batch: int = 256,
    timeout: float = 1.0,
    commit: str = "sync",
) -> int:
    """Score ``topic`` into ``output_topic`` until SIGTERM/SIGINT; returns records scored."""
    stopping = False

    def stop(_signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    def on_assign(_consumer: Any, partitions: list[Any]) -> None:
        names = ", ".join(f"{p.topic}[{p.partition}]" for p in partitions)
        print(f"assigned {names}", file=sys.stderr, flush=True)

    errors: list[str] = []

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None:
            errors.append(str(err))

    consumer = Consumer(consumer_settings(bootstrap, group))
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    consumer.subscribe([topic], on_assign=on_assign)
    model = {"name": model_name, "version": model_version}
    scored = 0
    started = time.monotonic()
    try:
        while not stopping:
            msgs = consumer.consume(batch, timeout)
            msgs = [m for m in msgs if m.error() is None]
            if not msgs:
                continue
            values = [json.loads(m.value()) for m in msgs]
            x = np.array([v["features"] for v in values], dtype=np.float32)
            preds = predict(x)
            processed_at = time.time()
            for m, v, p in zip(msgs, values, preds.tolist(), strict=True):
                source = {"topic": m.topic(), "partition": m.partition(), "offset": m.offset()}
                out = {
                    "key": v["entity_id"],
                    "input": v,
                    "prediction": p,
                    "model": model,
                    "source": source,
                    "event_time": v["ts"],
                    "processed_at": processed_at,
                }
                while True:
                    try:
                        producer.produce(
                            output_topic, json.dumps(out).encode(), m.key(), on_delivery=on_delivery
                        )
                        break
                    except BufferError:
                        producer.poll(0.05)
            producer.flush()
            if errors:
                raise RuntimeError(f"{len(errors)} deliveries failed: {errors[0]}")
            consumer.commit(asynchronous=commit == "async")
            scored += len(msgs)
    except KafkaException as exc:
        print(f"kafka error: {exc}", file=sys.stderr, flush=True)
        raise
    finally:
        consumer.close()
        producer.flush(10)
    elapsed = time.monotonic() - started
    print(f"plain loop: {scored:,} records scored in {elapsed:.1f}s", file=sys.stderr, flush=True)
    return scored


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-b", "--bootstrap", required=True)
    parser.add_argument("-i", "--topic", required=True)
    parser.add_argument("-o", "--output-topic", required=True)
    parser.add_argument("-g", "--group", required=True)
    parser.add_argument("--model", choices=["light", "heavy", "sklearn"], default="light")
    parser.add_argument("--onnx-path", help="the ONNX model (for --model heavy)")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--commit", choices=["sync", "async"], default="sync")
    args = parser.parse_args()
    if args.model == "heavy":
        if not args.onnx_path:
            parser.error("--model heavy needs --onnx-path")
        predict, name = onnx_model(args.onnx_path), "isolation-forest"
    elif args.model == "sklearn":
        predict, name = forest, "isolation-forest-sklearn"
    else:
        predict, name = light, "logistic"
    run(
        args.bootstrap,
        args.topic,
        args.output_topic,
        args.group,
        predict,
        model_name=name,
        batch=args.batch,
        commit=args.commit,
    )


if __name__ == "__main__":
    main()
