"""Headrace on one GPU, in one run: the engine against the model alone, and MicroBatcher
against the model's batch limit.

1. **engine**: replayed events -> featurizer -> model -> null sink, records/s, against the
   same model's ``predict_batch`` called in a loop on pre-built batches of the same size
   (the model alone, one batch at a time). Models: multi-layer perceptrons on the 8
   features of the reference events, in bfloat16, of three sizes, so that the GPU time per
   batch spans well below to well above the engine's CPU time per batch. Both run them as
   Headrace's ``TorchModel`` does (a CUDA stream and pinned buffers per calling thread,
   waiting on an event with the GIL released), copies to and from the device included.
2. **encoder**: a MiniLM-shaped encoder (6 layers, width 384, 12 heads, sequences of 64
   token ids, bfloat16, random weights: nothing is downloaded) behind
   :class:`headrace.MicroBatcher`, driven by closed-loop clients (64 and 1,024), each
   sending one sequence and awaiting its pooled vector before sending the next. Against
   the limit measured in the same run: the encoder called back to back on full batches.
   The previous max-wait batcher (``bench.micro_batcher.MaxWaitBatcher``) runs beside it.
3. With ``--profile`` (CUDA only): the torch profiler over one engine run of the medium
   MLP: how busy the device was, its operator table and a timeline (Chrome trace) saved
   beside the results, to see where the engine's time and the GPU's add up rather than
   overlap.

    python -m bench.gpu_inference [--quick] [--profile] [--sections engine,encoder]

Needs PyTorch; without CUDA it runs on the CPU with small sizes (a smoke test, not a
figure).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from bench.engine_overhead import ReplaySource
from bench.machine import describe
from bench.micro_batcher import MaxWaitBatcher, closed_loop
from headrace import EngineSettings, Featurizer, MicroBatcher, NullSink, Pipeline, SensorEvents
from headrace.models.pytorch import TorchModel

RESULTS = Path(__file__).parent / "results"

SIZES = {  # name: (width, hidden layers)
    "small": (512, 2),
    "medium": (4096, 6),
    "large": (8192, 16),
}

# The encoder issue 14 names: MiniLM's shape (all-MiniLM-L6-v2), random weights.
ENCODER = {"layers": 6, "width": 384, "heads": 12, "seq": 64, "vocab": 30522}


def mlp_model(torch: Any, width: int, depth: int, device: str) -> TorchModel:
    torch.manual_seed(0)
    layers: list[Any] = [torch.nn.Linear(8, width), torch.nn.GELU()]
    for _ in range(depth):
        layers += [torch.nn.Linear(width, width), torch.nn.GELU()]
    layers.append(torch.nn.Linear(width, 1))
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    net = torch.nn.Sequential(*layers).to(device=device, dtype=dtype)
    return TorchModel(net, torch=torch, name=f"mlp-{width}x{depth}", version="1", device=device)


def encoder_model(torch: Any, device: str, *, layers: int, width: int, heads: int) -> TorchModel:
    """Token ids ``(n, seq)`` in, one mean-pooled, normalised vector per sequence out."""
    seq, vocab = ENCODER["seq"], ENCODER["vocab"]

    class MiniLMShaped(torch.nn.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.tokens = torch.nn.Embedding(vocab, width)
            self.positions = torch.nn.Embedding(seq, width)
            layer = torch.nn.TransformerEncoderLayer(
                width, heads, 4 * width, batch_first=True, activation="gelu"
            )
            self.encoder = torch.nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
            self.norm = torch.nn.LayerNorm(width)

        def forward(self, ids: Any) -> Any:
            positions = torch.arange(ids.shape[1], device=ids.device)
            h = self.encoder(self.tokens(ids) + self.positions(positions))
            return self.norm(h.mean(dim=1))

    torch.manual_seed(0)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    net = MiniLMShaped().to(device=device, dtype=dtype)
    return TorchModel(
        net, torch=torch, name="minilm-shaped", version="1", device=device, dtype="int64"
    )


# -- 1. the engine against the model alone ---------------------------------------------


def direct(model: TorchModel, x: np.ndarray, batch: int) -> float:
    batches = [x[i : i + batch] for i in range(0, len(x), batch)]
    model.predict_batch(batches[0])  # warm-up: kernels, allocator, pinned buffers
    started = time.perf_counter()
    for b in batches:
        model.predict_batch(b)
    return len(x) / (time.perf_counter() - started)


def engine(
    model: TorchModel, events: list[dict[str, Any]], batch: int, concurrency: int
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


def engine_section(
    torch: Any, device: str, sizes: dict[str, tuple[int, int]], concurrencies: list[int], n: int
) -> list[dict[str, Any]]:
    batch = 1024
    events, _ = SensorEvents(entities=200, seed=1).make(start_id=0, n=n, ts=0.0)
    x = np.array([e["features"] for e in events], dtype=np.float32)
    rows = []
    for name, (width, depth) in sizes.items():
        model = mlp_model(torch, width, depth, device)
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
                "records": n,
                "gpu_ms_per_batch_direct": round(batch / direct_rate * 1000, 3),
                "direct_records_per_s": round(direct_rate),
                "engine_records_per_s": round(engine_rate),
                "engine_mean_batch": round(mean_batch, 1),
                "ratio_engine_to_direct": round(engine_rate / direct_rate, 3),
            }
            rows.append(row)
            print(
                f"{name:>7} ({width}x{depth}) c={concurrency}: "
                f"direct {direct_rate:>12,.0f}/s ({row['gpu_ms_per_batch_direct']} ms/batch)  "
                f"engine {engine_rate:>12,.0f}/s  ratio {row['ratio_engine_to_direct']:.3f}",
                flush=True,
            )
    return rows


def profile_engine(torch: Any, n: int, out: Path) -> dict[str, Any]:
    """One engine run of the medium MLP under the torch profiler, recording the device's
    activity (CUPTI sees every thread's kernels and copies; the CPU side of the model
    calls runs in the engine's pool threads, which the profiler does not follow): how busy
    the GPU was, its operator table and a Chrome trace (timeline) saved beside the
    results."""
    from torch.profiler import ProfilerActivity, profile

    width, depth = SIZES["medium"]
    model = mlp_model(torch, width, depth, "cuda")
    events, _ = SensorEvents(entities=200, seed=1).make(start_id=0, n=n, ts=0.0)
    engine(model, events[: 4 * 1024], 1024, 2)  # warm-up
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        started = time.perf_counter()
        rate, _ = engine(model, events, 1024, 2)
        elapsed = time.perf_counter() - started
    averages = prof.key_averages()
    device_us = sum(getattr(e, "self_device_time_total", 0.0) for e in averages)
    table = out.with_suffix(".profile.txt")
    table.write_text(averages.table(sort_by="self_device_time_total", row_limit=40) + "\n")
    trace = out.with_suffix(".trace.json")
    prof.export_chrome_trace(str(trace))
    return {
        "model": "medium",
        "records": n,
        "engine_records_per_s": round(rate),
        "elapsed_s": round(elapsed, 3),
        # Kernels and copies summed: above 1 where streams overlap.
        "device_busy_fraction": round(device_us / 1e6 / elapsed, 3),
        "table": table.name,
        "trace": trace.name,
    }


# -- 2. MicroBatcher against the encoder's batch limit ---------------------------------


class Counted:
    """The encoder as MicroBatcher calls it (a list of sequences in, a list of vectors
    out), counting batch sizes."""

    def __init__(self, model: TorchModel) -> None:
        self.model = model
        self.batches: list[int] = []

    def __call__(self, items: list[np.ndarray]) -> list[np.ndarray]:
        self.batches.append(len(items))
        return list(self.model.predict_batch(np.stack(items)))


def encoder_limit(model: TorchModel, tokens: np.ndarray, batch: int, seconds: float) -> float:
    """Sequences/s of the encoder called back to back on batches of ``batch``."""
    x = np.resize(tokens, (batch, tokens.shape[1]))
    model.predict_batch(x)  # warm-up
    n, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        model.predict_batch(x)
        n += batch
    return n / (time.perf_counter() - started)


def encoder_run(
    kind: str,
    model: TorchModel,
    tokens: np.ndarray,
    *,
    clients: int,
    seconds: float,
    max_size: int,
    max_wait: float,
    concurrency: int,
) -> dict[str, Any]:
    counted = Counted(model)
    k = len(tokens)
    with ThreadPoolExecutor(max_workers=concurrency + 1) as executor:
        batcher: Any
        if kind == "headrace":
            batcher = MicroBatcher(
                counted,
                max_size=max_size,
                max_wait=max_wait,
                max_concurrency=concurrency,
                executor=executor,
            )
        else:
            batcher = MaxWaitBatcher(
                counted,
                max_size=max_size,
                max_wait=max_wait,
                max_concurrency=concurrency,
                executor=executor,
            )
        rate, lat = asyncio.run(
            closed_loop(batcher, clients, seconds, item=lambda c, i: tokens[(c * 7919 + i) % k])
        )
    return {
        "batcher": kind,
        "clients": clients,
        "max_concurrency": concurrency,
        "sequences_per_s": round(rate),
        "latency_ms_p50": round(float(np.percentile(lat, 50)) * 1e3, 2),
        "latency_ms_p99": round(float(np.percentile(lat, 99)) * 1e3, 2),
        "mean_batch": round(statistics.fmean(counted.batches), 1),
    }


def encoder_section(
    torch: Any,
    device: str,
    *,
    shape: dict[str, int],
    clients: list[int],
    seconds: float,
    max_size: int,
    max_wait: float,
    repeats: int,
) -> dict[str, Any]:
    model = encoder_model(
        torch, device, layers=shape["layers"], width=shape["width"], heads=shape["heads"]
    )
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, ENCODER["vocab"], size=(4096, ENCODER["seq"]), dtype=np.int64)
    limits = {max_size: encoder_limit(model, tokens, max_size, seconds)}
    print(f"encoder limit at batches of {max_size}: {limits[max_size]:,.0f} sequences/s")
    rows = []
    for n_clients in clients:
        fill = min(n_clients, max_size)
        if fill not in limits:
            limits[fill] = encoder_limit(model, tokens, fill, seconds)
        for concurrency in (1, 2):
            for kind in ("headrace", "max-wait"):
                runs = [
                    encoder_run(
                        kind,
                        model,
                        tokens,
                        clients=n_clients,
                        seconds=seconds,
                        max_size=max_size,
                        max_wait=max_wait,
                        concurrency=concurrency,
                    )
                    for _ in range(repeats)
                ]
                rates = [r["sequences_per_s"] for r in runs]
                p99s = [r["latency_ms_p99"] for r in runs]
                row = {
                    **max(runs, key=lambda r: r["sequences_per_s"]),
                    "sequences_per_s_runs": rates,
                    "latency_ms_p99_runs": p99s,
                    "ratio_to_limit": round(statistics.median(rates) / limits[max_size], 3),
                    "ratio_to_limit_at_batch_of_clients": round(
                        statistics.median(rates) / limits[fill], 3
                    ),
                }
                rows.append(row)
                print(
                    f"{kind:>9} clients {n_clients:>5} concurrency {concurrency}: "
                    f"{min(rates):>8,}-{max(rates):>8,} seq/s ({row['ratio_to_limit']:.2f} of "
                    f"the limit)  p50 {row['latency_ms_p50']:6.2f} ms  "
                    f"p99 {min(p99s):6.2f}-{max(p99s):6.2f} ms  mean batch {row['mean_batch']}",
                    flush=True,
                )
    return {
        "shape": {**shape, "seq": ENCODER["seq"], "vocab": ENCODER["vocab"]},
        "max_size": max_size,
        "max_wait_ms": max_wait * 1e3,
        "seconds_per_run": seconds,
        "limit_sequences_per_s": round(limits[max_size]),
        "limit_sequences_per_s_by_batch": {str(k): round(v) for k, v in limits.items()},
        "results": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, short runs")
    parser.add_argument("--out", type=Path, default=None, help="results file")
    parser.add_argument("--sections", default="engine,encoder", help="engine and/or encoder")
    parser.add_argument("--sizes", default=",".join(SIZES), help="comma-separated MLP sizes")
    parser.add_argument(
        "--concurrency", default="2", help="engine: comma-separated max_concurrency values"
    )
    parser.add_argument("--clients", default="64,1024", help="encoder: closed-loop clients")
    parser.add_argument("--max-size", type=int, default=256, help="encoder: MicroBatcher max_size")
    parser.add_argument("--max-wait-ms", type=float, default=5.0, help="encoder: max_wait")
    parser.add_argument("--seconds", type=float, default=6.0, help="encoder: seconds per run")
    parser.add_argument("--repeats", type=int, default=2, help="encoder: runs per setting")
    parser.add_argument("--profile", action="store_true", help="torch profiler, medium MLP")
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
    small = args.quick or device == "cpu"
    sections = set(args.sections.split(","))
    machine = describe("torch", "numpy", "msgspec")
    out = (
        args.out
        or RESULTS / f"gpu_inference-{machine['date'][:10]}{'-quick' if small else ''}.json"
    )
    result: dict[str, Any] = {
        "benchmark": "gpu_inference",
        "machine": machine,
        "device": device,
        "gpu": gpu,
        "quick": small,
        "switch_interval_s": sys.getswitchinterval(),
    }
    if "engine" in sections:
        names = ["small"] if small else args.sizes.split(",")
        result["engine"] = engine_section(
            torch,
            device,
            {name: SIZES[name] for name in names},
            [int(c) for c in args.concurrency.split(",")],
            20_000 if small else 400_000,
        )
    if "encoder" in sections:
        shape = (
            {"layers": 2, "width": 64, "heads": 4}
            if small
            else {k: ENCODER[k] for k in ("layers", "width", "heads")}
        )
        result["encoder"] = encoder_section(
            torch,
            device,
            shape=shape,
            clients=[int(c) for c in args.clients.split(",")],
            seconds=1.0 if small else args.seconds,
            max_size=args.max_size,
            max_wait=args.max_wait_ms / 1e3,
            repeats=1 if small else args.repeats,
        )
    if args.profile:
        if device == "cuda":
            result["profile"] = profile_engine(torch, 100_000, out)
            print(f"profile: {result['profile']}")
        else:
            print("profile: skipped, no CUDA device (it records the device's activity)")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
