"""A model of known, fixed capacity, for the overload benchmark (``bench/overload.py``).

``predict`` scores an ``(n, 8)`` float32 batch with the light logistic regression of
``bench/plain_loop.py`` and then holds a lock for a fixed time per batch plus a fixed time
per record: one device, one batch at a time, whatever the caller's concurrency. Its
capacity at batch size ``n`` is ``n / (per_batch + n * per_record)`` records/s. It
sleeps rather than computes, so it leaves the CPU to the consumer and the broker: what is
measured is how each system copes with a model slower than its input, not CPU contention.

The costs come from the environment (``OVERLOAD_PER_BATCH_MS``, default 5, and
``OVERLOAD_PER_RECORD_MS``, default 1) so that the benchmark, Headrace (which imports
``bench.slow_model:predict``) and the plain loop all use the same figures.

    python -m bench.slow_model -b 127.0.0.1:9092 -i events -o predictions -g plain

runs the plain confluent-kafka loop (``bench.plain_loop.run``) with this model. Kept apart
from ``bench/overload.py`` so that the worker processes import only what they need.
"""

from __future__ import annotations

import argparse
import os
import threading
import time

import numpy as np

from bench.plain_loop import light, run

PER_BATCH_S = float(os.environ.get("OVERLOAD_PER_BATCH_MS", "5")) / 1000.0
PER_RECORD_S = float(os.environ.get("OVERLOAD_PER_RECORD_MS", "1")) / 1000.0

_device = threading.Lock()


def predict(x: np.ndarray) -> np.ndarray:
    """Score a batch, then hold the "device" for its fixed cost."""
    scores = light(x)
    with _device:
        time.sleep(PER_BATCH_S + PER_RECORD_S * len(x))
    return scores


def capacity(batch: int) -> float:
    """Records/s at full batches of ``batch``, at the current costs."""
    return batch / (PER_BATCH_S + PER_RECORD_S * batch)


def main() -> None:
    parser = argparse.ArgumentParser(description="The plain confluent-kafka loop, slow model")
    parser.add_argument("-b", "--bootstrap", required=True)
    parser.add_argument("-i", "--topic", required=True)
    parser.add_argument("-o", "--output-topic", required=True)
    parser.add_argument("-g", "--group", required=True)
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args()
    run(
        args.bootstrap,
        args.topic,
        args.output_topic,
        args.group,
        predict,
        model_name="slow",
        batch=args.batch,
    )


if __name__ == "__main__":
    main()
