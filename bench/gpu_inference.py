"""Engine throughput with a PyTorch model on a GPU, against the model called directly.

A GPU model scores a batch in a millisecond or two, so the question is whether the engine
keeps the GPU fed: records/s through the engine (replayed events -> featurizer -> model ->
null sink, two batches in flight, since PyTorch releases the GIL while CUDA works) against
records/s of the same ``predict_batch`` called in a loop on pre-built batches of the same
size (the model alone, one batch at a time). Both include the host-to-device copy of the
inputs and the copy of the scores back.

Models: multi-layer perceptrons on the 8 features of the reference events, in bfloat16,
of three sizes, so the per-batch GPU time spans well below to well above the engine's
per-batch CPU cost.

    python -m bench.gpu_inference [--quick]

Needs PyTorch; on a machine without CUDA it runs on the CPU (a smoke test, not a figure).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.engine_overhead import ReplaySource
from bench.machine import describe
from headrace import CallableModel, EngineSettings, Featurizer, NullSink, Pipeline, SensorEvents

RESULTS = Path(__file__).parent / "results"

SIZES = {  # name: (width, hidden layers)
    "small": (512, 2),
    "medium": (4096, 6),
    "large": (8192, 16),
}


def mlp_model(width: int, depth: int, device: str, sync: str = "event") -> CallableModel:
    import torch

    torch.manual_seed(0)
    layers: list[Any] = [torch.nn.Linear(8, width), torch.nn.GELU()]
    for _ in range(depth):
        layers += [torch.nn.Linear(width, width), torch.nn.GELU()]
    layers.append(torch.nn.Linear(width, 1))
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    net = torch.nn.Sequential(*layers).to(device=device, dtype=dtype).eval()

    @torch.inference_mode()
    def predict(x: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(x).to(device, non_blocking=True).to(dtype)
        y = net(t).float().squeeze(1)
        if sync == "event" and device == "cuda":
            # Wait for the GPU on an event: its synchronize() lets go of the GIL, so the
            # event loop goes on reading and batching while the GPU computes.
            done = torch.cuda.Event()
            done.record()
            done.synchronize()
        out: np.ndarray = y.cpu().numpy()
        return out

    return CallableModel(predict, name=f"mlp-{width}x{depth}", version="1")


def direct(model: CallableModel, x: np.ndarray, batch: int) -> float:
    batches = [x[i : i + batch] for i in range(0, len(x), batch)]
    model.predict_batch(batches[0])  # warm-up: kernels, allocator
    started = time.perf_counter()
    for b in batches:
        model.predict_batch(b)
    return len(x) / (time.perf_counter() - started)


def engine(
    model: CallableModel, events: list[dict[str, Any]], batch: int, concurrency: int
) -> tuple[float, float]:
    pipeline = (
        Pipeline("bench-gpu")
        .source(ReplaySource(events, chunk=batch))
        .model(model, featurizer=Featurizer(vector="features"))
        .sink(NullSink())
        .settings(
            EngineSettings(
                max_batch_size=batch,
                max_wait=0.005,
                max_concurrency=concurrency,
                max_in_flight=batch * (concurrency + 2),
            )
        )
    )
    started = time.perf_counter()
    summary = pipeline.run(install_signal_handlers=False)
    elapsed = time.perf_counter() - started
    assert summary.records_out == len(events), summary
    return len(events) / elapsed, summary.mean_batch_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, few records")
    parser.add_argument("--out", type=Path, default=None, help="results file")
    parser.add_argument("--sizes", default=",".join(SIZES), help="comma-separated model sizes")
    parser.add_argument(
        "--concurrency", default="2", help="comma-separated max_concurrency values to try"
    )
    parser.add_argument(
        "--sync",
        default="event",
        help="comma-separated: 'event' (wait on a CUDA event, GIL released) and/or "
        "'implicit' (let .cpu() wait)",
    )
    parser.add_argument(
        "--switch-interval",
        type=float,
        default=None,
        help="sys.setswitchinterval in seconds (Python's default is 0.005)",
    )
    args = parser.parse_args()
    import torch

    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else None
    names = ["small"] if args.quick else args.sizes.split(",")
    sizes = {name: SIZES[name] for name in names}
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    n = 20_000 if args.quick else 400_000
    batch = 1024
    events, _ = SensorEvents(entities=200, seed=1).make(start_id=0, n=n, ts=0.0)
    x = np.array([e["features"] for e in events], dtype=np.float32)
    rows = []
    for name, (width, depth) in sizes.items():
        for sync in args.sync.split(","):
            model = mlp_model(width, depth, device, sync)
            direct_rate = max(direct(model, x, batch) for _ in range(2))
            for concurrency in concurrencies:
                engine_rate, mean_batch = max(
                    (engine(model, events, batch, concurrency) for _ in range(2)),
                    key=lambda r: r[0],
                )
                row = {
                    "model": name,
                    "width": width,
                    "hidden_layers": depth,
                    "batch_size": batch,
                    "max_concurrency": concurrency,
                    "sync": sync,
                    "records": n,
                    "gpu_ms_per_batch_direct": round(batch / direct_rate * 1000, 3),
                    "direct_records_per_s": round(direct_rate),
                    "engine_records_per_s": round(engine_rate),
                    "engine_mean_batch": round(mean_batch, 1),
                    "ratio_engine_to_direct": round(engine_rate / direct_rate, 3),
                }
                rows.append(row)
                print(
                    f"{name:>7} ({width}x{depth}) {sync} c={concurrency}: "
                    f"direct {direct_rate:>12,.0f}/s "
                    f"({row['gpu_ms_per_batch_direct']} ms/batch)  engine {engine_rate:>12,.0f}/s  "
                    f"ratio {row['ratio_engine_to_direct']:.3f}",
                    flush=True,
                )
    result = {
        "benchmark": "gpu_inference",
        "machine": describe("torch", "numpy", "msgspec"),
        "device": device,
        "gpu": gpu,
        "quick": args.quick,
        "switch_interval_s": sys.getswitchinterval(),
        "results": rows,
    }
    out = args.out or RESULTS / f"gpu_inference-{result['machine']['date'][:10]}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
