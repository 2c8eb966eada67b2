"""MicroBatcher under closed-loop clients: how close it gets to the model's batch limit.

Each of N clients sends one request, awaits its answer, and sends the next, for a fixed
time. The model stands in for an accelerator: a plain function that holds a thread (not
the GIL) for ``base + per_item * n`` seconds per batch of ``n`` (``time.sleep``), as a
GPU call that waits for its kernels does, one batch at a time. Measured in one run, same machine:

- **limit**: the model called back to back on full batches (``max_size``): items/s; and
  at the batch that N closed-loop clients can fill at most (``min(N, max_size)``);
- **headrace**: :class:`headrace.MicroBatcher` (fires at once while the model is idle;
  ``max_wait`` bounds waiting for a fuller batch only while a call is in flight);
- **max-wait batcher**: the previous design, kept here as the baseline: a batch fires when
  full or ``max_wait`` after its oldest item arrived, with a future per item.

Figures: requests/s (and its ratio to the limit), per-request latency p50/p99, mean batch.

    python -m bench.micro_batcher [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from bench.machine import describe
from headrace import MicroBatcher
from headrace.runtime.batcher import Batcher

RESULTS = Path(__file__).parent / "results"


class SimulatedModel:
    """``base + per_item * n`` seconds per batch, in the calling thread, GIL released; one
    batch at a time, as on one device (a second call queues behind the first, so a
    ``max_concurrency`` of 2 pipelines calls and cannot run two at once)."""

    def __init__(self, base: float, per_item: float) -> None:
        self.base = base
        self.per_item = per_item
        self.batches: list[int] = []
        self.device = threading.Lock()

    def __call__(self, xs: Sequence[Any]) -> list[Any]:
        with self.device:
            self.batches.append(len(xs))
            time.sleep(self.base + self.per_item * len(xs))
        return list(xs)


class MaxWaitBatcher:
    """The previous MicroBatcher: the engine's Batcher with one future per item."""

    def __init__(
        self,
        predict: Callable[[list[Any]], list[Any]],
        *,
        max_size: int,
        max_wait: float,
        max_concurrency: int,
        executor: ThreadPoolExecutor,
    ) -> None:
        self.predict = predict
        self.executor = executor
        self.batcher: Batcher[tuple[Any, asyncio.Future[Any]]] = Batcher(
            self._score, max_size=max_size, max_wait=max_wait, max_concurrency=max_concurrency
        )
        self.runner: asyncio.Task[None] | None = None

    async def __aenter__(self) -> MaxWaitBatcher:
        self.runner = asyncio.create_task(self.batcher.run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.batcher.close()
        assert self.runner is not None
        await self.runner

    async def infer(self, item: Any) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.batcher.put([(item, future)])
        return await future

    async def _score(self, batch: list[tuple[Any, asyncio.Future[Any]]]) -> None:
        inputs = [x for x, _ in batch]
        loop = asyncio.get_running_loop()
        outputs = await loop.run_in_executor(self.executor, self.predict, inputs)
        for (_, future), out in zip(batch, outputs, strict=True):
            if not future.done():
                future.set_result(out)


def limit(model: SimulatedModel, max_size: int, seconds: float) -> float:
    n, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        model(list(range(max_size)))
        n += max_size
    return n / (time.perf_counter() - started)


async def closed_loop(
    batcher: Any,
    clients: int,
    seconds: float,
    item: Callable[[int, int], Any] = lambda c, i: (c, i),
) -> tuple[float, np.ndarray]:
    """Requests/s and the latencies of ``clients`` closed-loop clients; client ``c``'s
    ``i``-th request is ``item(c, i)``."""
    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds
    warm_until = time.perf_counter() + min(1.0, seconds / 5)

    async def client(c: int) -> None:
        i = 0
        while True:
            sent = time.perf_counter()
            if sent >= stop_at:
                return
            await batcher.infer(item(c, i))
            if sent >= warm_until:
                latencies.append(time.perf_counter() - sent)
            i += 1

    async with batcher:
        await asyncio.gather(*(client(c) for c in range(clients)))
    return len(latencies) / (stop_at - warm_until), np.array(latencies)


def run_one(
    kind: str,
    *,
    clients: int,
    seconds: float,
    max_size: int,
    max_wait: float,
    concurrency: int,
    base: float,
    per_item: float,
) -> dict[str, Any]:
    model = SimulatedModel(base, per_item)
    with ThreadPoolExecutor(max_workers=concurrency + 1) as executor:
        batcher: Any
        if kind == "headrace":
            batcher = MicroBatcher(
                model,
                max_size=max_size,
                max_wait=max_wait,
                max_concurrency=concurrency,
                executor=executor,
            )
        else:
            batcher = MaxWaitBatcher(
                model,
                max_size=max_size,
                max_wait=max_wait,
                max_concurrency=concurrency,
                executor=executor,
            )
        rate, lat = asyncio.run(closed_loop(batcher, clients, seconds))
    return {
        "batcher": kind,
        "clients": clients,
        "max_concurrency": concurrency,
        "requests_per_s": round(rate),
        "latency_ms_p50": round(float(np.percentile(lat, 50)) * 1e3, 2),
        "latency_ms_p99": round(float(np.percentile(lat, 99)) * 1e3, 2),
        "mean_batch": round(statistics.fmean(model.batches), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 s per run instead of 6")
    parser.add_argument("--clients", default="64,1024")
    parser.add_argument("--max-size", type=int, default=256)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--base-ms", type=float, default=2.0, help="model time per batch")
    parser.add_argument("--per-item-us", type=float, default=10.0, help="model time per item")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    seconds = 2.0 if args.quick else 6.0
    base, per_item = args.base_ms / 1e3, args.per_item_us / 1e6
    ceiling = limit(SimulatedModel(base, per_item), args.max_size, seconds)
    print(
        f"model: {args.base_ms} ms + {args.per_item_us} us/item per batch; limit at batches "
        f"of {args.max_size}: {ceiling:,.0f} items/s"
    )
    ceilings = {args.max_size: ceiling}
    results = []
    for clients in (int(c) for c in args.clients.split(",")):
        for concurrency in (1, 2):
            for kind in ("headrace", "max-wait"):
                runs = [
                    run_one(
                        kind,
                        clients=clients,
                        seconds=seconds,
                        max_size=args.max_size,
                        max_wait=args.max_wait_ms / 1e3,
                        concurrency=concurrency,
                        base=base,
                        per_item=per_item,
                    )
                    for _ in range(args.repeats)
                ]
                rates = [r["requests_per_s"] for r in runs]
                best = max(runs, key=lambda r: r["requests_per_s"])
                fill = min(clients, args.max_size)
                if fill not in ceilings:
                    ceilings[fill] = limit(SimulatedModel(base, per_item), fill, seconds)
                row = {
                    **best,
                    "requests_per_s_runs": rates,
                    "ratio_to_limit": round(statistics.median(rates) / ceiling, 3),
                    "ratio_to_limit_at_batch_of_clients": round(
                        statistics.median(rates) / ceilings[fill], 3
                    ),
                    "latency_ms_p99_runs": [r["latency_ms_p99"] for r in runs],
                }
                results.append(row)
                p99 = row["latency_ms_p99_runs"]
                print(
                    f"{kind:>9} clients {clients:>5} concurrency {concurrency}: "
                    f"{min(rates):>8,}-{max(rates):>8,} req/s "
                    f"({row['ratio_to_limit']:.2f} of the limit, "
                    f"{row['ratio_to_limit_at_batch_of_clients']:.2f} at batch {fill})  "
                    f"p50 {best['latency_ms_p50']:6.2f} ms  "
                    f"p99 {min(p99):6.2f}-{max(p99):6.2f} ms  "
                    f"mean batch {best['mean_batch']}",
                    flush=True,
                )
    record = {
        "benchmark": "micro_batcher",
        "machine": describe("numpy"),
        "model": {
            "kind": "simulated accelerator (time.sleep in a thread)",
            "base_ms": args.base_ms,
            "per_item_us": args.per_item_us,
        },
        "max_size": args.max_size,
        "max_wait_ms": args.max_wait_ms,
        "seconds_per_run": seconds,
        "limit_items_per_s": round(ceiling),
        "limit_items_per_s_by_batch": {str(k): round(v) for k, v in ceilings.items()},
        "results": results,
    }
    RESULTS.mkdir(exist_ok=True)
    day = record["machine"]["date"][:10]
    out = RESULTS / f"micro_batcher-{day}{'-quick' if args.quick else ''}.json"
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"results: {out}")


if __name__ == "__main__":
    main()
