"""Event-time windows end to end: real `headrace run` workers, Kafka in and out, window
state in a changelog topic, crashes and rebalances.

Oracle: a batch recomputation of every (entity, window) from the same input. The workers'
distinct (key, window) outputs must equal it exactly: same windows, same counts (a record
counted twice in the state, or lost with it, shows as a wrong count), same features (floats
within a tolerance). At-least-once may write a window twice, but a duplicate must be
identical to the first. Event times are synthetic (a fixed epoch, 0.1 s apart, jittered by
less than ``allowed_lateness`` within each partition), so no record of the data is late and
the result does not depend on when anything ran.

The final windows close on per-partition *sentinels*: one event per partition, far ahead in
event time, with a key the data never uses (left out of every comparison).
"""

from __future__ import annotations

import math
import os
import random
import re
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from confluent_kafka import Producer

from kafka_helpers import TansuBroker
from pg_helpers import PgSchema
from workers import (
    TopicReader,
    Worker,
    committed,
    kafka_pipeline,
    log_text,
    metrics_port,
    wait_until,
    worker_metrics,
)

PARTITIONS = 3
SIZE = 10.0  # tumbling windows, seconds
LATENESS = 2.0
T0 = 1_700_000_000.0  # event time of the first window's start (a multiple of SIZE)
ENTITIES = [f"e{i:02d}" for i in range(20)]
SILENT = ENTITIES[-1]  # only a few events, all in the first window
SENTINEL = "zz-sentinel-"
GROUP = "windowers"
CHANGELOG = f"headrace-state-{GROUP}-events"

WINDOW_MODEL = '''
import os
import time

STALL = os.environ.get("WINDOW_MODEL_STALL", "")


def score(windows):
    """The window's record count: a prediction the test can check. Blocks while the file
    WINDOW_MODEL_STALL exists (closed windows then wait in the worker)."""
    while STALL and os.path.exists(STALL):
        time.sleep(0.01)
    return [w["n"] for w in windows]
'''

WINDOWS = f"""
windows:
  type: tumbling
  size_s: {SIZE}
  key_field: entity_id
  time_field: ts
  allowed_lateness_s: {LATENESS}
  features:
    n: {{agg: count}}
    total: {{agg: sum, field: value}}
    mean: {{agg: mean, field: value}}
    low: {{agg: min, field: value}}
    high: {{agg: max, field: value}}
  late_destination:
    type: kafka
    topic: late
"""

MODEL = """model:
  type: callable
  name: window-count
  version: "7"
  function: windowmodels:score"""

CLOSED = "headrace_windows_closed_total"
# Fault tests: events fed at RATE per second (25 s of event time a second) until the test
# has done its faults; LONG is more than any of them needs.
RATE = 250
LONG = 60_000
FEATURES = ("n", "total", "mean", "low", "high")
Window = tuple[str, float, float]  # key, start, end (seconds)


def partition_of(entity: str) -> int:
    """Where an entity's events go: keys must not move between partitions, since window
    state is kept per partition. A sentinel names its partition."""
    if entity.startswith(SENTINEL):
        return int(entity[len(SENTINEL) :])
    return int(entity[1:]) % PARTITIONS


def make_events(n: int, *, seed: int) -> list[dict[str, Any]]:
    """``n`` events 0.1 s apart in nominal event time (from T0 + 2 s), each jittered back
    by up to 0.9 x the allowed lateness: out of order, but never late. The silent entity
    has four events in the first window and none after."""
    rng = random.Random(seed)
    out = []
    for j in range(n):
        nominal = T0 + 2.0 + j * 0.1
        entity = SILENT if j < 80 and j % 20 == 0 else rng.choice(ENTITIES[:-1])
        ts = round(nominal - rng.uniform(0.0, 0.9 * LATENESS), 3)
        out.append(
            {"id": j, "entity_id": entity, "ts": ts, "value": round(rng.uniform(-50, 50), 3)}
        )
    return out


def end_of(events: list[dict[str, Any]]) -> float:
    return float(max(e["ts"] for e in events))


def sentinels(at: float) -> list[dict[str, Any]]:
    """One event per partition far ahead of ``at``: every data window closes on them."""
    return [
        {"id": -1 - p, "entity_id": f"{SENTINEL}{p}", "ts": at + 1000.0, "value": 0.0}
        for p in range(PARTITIONS)
    ]


def produce(tansu: TansuBroker, events: list[dict[str, Any]]) -> dict[int, int]:
    """Produce keyed events, each to its entity's partition (sentinels to theirs); how many
    went to each partition."""
    parts: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for e in events:
        parts[partition_of(e["entity_id"])].append(e)
    return {
        p: tansu.produce_json("events", values, "entity_id", partition=p)
        for p, values in parts.items()
    }


def expected(events: Iterable[dict[str, Any]]) -> dict[Window, dict[str, Any]]:
    """Batch recomputation: per (entity, tumbling window), the count and features."""
    groups: dict[Window, list[float]] = defaultdict(list)
    size_ms = round(SIZE * 1000)
    for e in events:
        t_ms = round(e["ts"] * 1000)
        start = t_ms - t_ms % size_ms
        groups[(e["entity_id"], start / 1000, (start + size_ms) / 1000)].append(e["value"])
    return {
        w: {
            "n": len(vs),
            "total": math.fsum(vs),
            "mean": math.fsum(vs) / len(vs),
            "low": min(vs),
            "high": max(vs),
        }
        for w, vs in groups.items()
    }


def outputs(reader: TopicReader) -> list[dict[str, Any]]:
    """Every windowed output read so far, sentinels left out."""
    decode = msgspec.json.Decoder().decode
    return [o for o in map(decode, reader.values) if not str(o["key"]).startswith(SENTINEL)]


def windowed_outputs(values: list[bytes]) -> list[dict[str, Any]]:
    """The windowed outputs among ``values``, sentinels left out."""
    decode = msgspec.json.Decoder().decode
    return [o for o in map(decode, values) if not str(o["key"]).startswith(SENTINEL)]


def window_of(o: dict[str, Any]) -> Window:
    return (o["key"], o["window"]["start"], o["window"]["end"])


def distinct(reader: TopicReader) -> int:
    reader.read()
    return len({window_of(o) for o in outputs(reader)})


def assert_matches(outs: list[dict[str, Any]], events: list[dict[str, Any]]) -> int:
    """The outputs equal the recomputation from ``events``: no window missing, none extra,
    counts exact, features within float tolerance; duplicates identical to the first.
    Returns how many outputs were duplicates."""
    want = expected(events)
    first: dict[Window, dict[str, Any]] = {}
    duplicates = 0
    for o in outs:
        w = window_of(o)
        if w in first:
            duplicates += 1
            seen = first[w]
            assert (o["count"], o["features"]) == (seen["count"], seen["features"]), (
                f"a window written twice differs: {seen} vs {o}"
            )
        else:
            first[w] = o
    missing = sorted(set(want) - set(first))
    extra = sorted(set(first) - set(want))
    assert not missing and not extra, f"missing {missing[:5]} ({len(missing)}), extra {extra[:5]}"
    wrong: list[tuple[Any, ...]] = []
    for w, o in first.items():
        f = o["features"]
        exp = want[w]
        if o["count"] != exp["n"] or f["n"] != exp["n"]:
            wrong.append((w, "count", o["count"], f["n"], exp["n"]))
            continue
        for name in FEATURES[1:]:
            if not math.isclose(f[name], exp[name], rel_tol=1e-9, abs_tol=1e-9):
                wrong.append((w, name, f[name], exp[name]))
    assert not wrong, f"{len(wrong)} windows differ from the recomputation: {wrong[:5]}"
    for o in first.values():
        key = o["key"]
        assert o["source"] == {"topic": "events", "partition": partition_of(key)}
        assert o["model"]["name"] == "window-count" and o["model"]["version"] == "7"
        assert o["prediction"] == o["count"]
        assert o["event_time"] == o["window"]["end"]
    return duplicates


def windowed(tmp_path: Path, bootstrap: str, *, name: str = "p.yaml", **kw: Any) -> Path:
    extra = kw.pop("extra", "")
    return kafka_pipeline(
        tmp_path / name,
        bootstrap,
        sinks="  - type: kafka\n    topic: outputs",
        group=GROUP,
        model=MODEL,
        extra=WINDOWS + extra,
        **kw,
    )


def model_env(tmp_path: Path, stall: Path | None = None) -> dict[str, str]:
    """An environment where ``windowmodels:score`` is importable; it blocks while the file
    ``stall`` exists."""
    models = tmp_path / "models"
    models.mkdir(exist_ok=True)
    (models / "windowmodels.py").write_text(WINDOW_MODEL)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(models), env.get("PYTHONPATH", "")])
    env["WINDOW_MODEL_STALL"] = str(stall or "")
    return env


def topics(tansu: TansuBroker) -> None:
    tansu.create_topic("events", PARTITIONS)
    tansu.create_topic("outputs", PARTITIONS)
    tansu.create_topic("late", 1)


def consumed(tansu: TansuBroker, counts: dict[int, int]) -> bool:
    """Whether the group committed every partition through ``counts`` records."""
    done = committed(tansu.bootstrap, GROUP, "events", PARTITIONS)
    return all(done.get(p, -1) >= n for p, n in counts.items())


def anything_committed(tansu: TansuBroker) -> bool:
    return any(o > 0 for o in committed(tansu.bootstrap, GROUP, "events", PARTITIONS).values())


def restored_windows(worker: Worker) -> list[int]:
    """How many open windows each restore of this worker brought back."""
    found = re.findall(
        r"restored window state of partitions .*?\((\d+) windows open\)", log_text(worker)
    )
    return [int(n) for n in found]


def happens_within(condition: Callable[[], bool], seconds: float) -> bool:
    """Whether ``condition`` becomes true within ``seconds``: for what must *not* happen,
    given the time it would take to."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)  # polling
    return condition()


class Feeder:
    """Produces ``events`` in a thread, in order, each to its entity's partition, at
    ``rate`` per second (pacing, not synchronisation) until :meth:`stop`: input keeps
    arriving through whatever the test does meanwhile, however long it takes. What was
    produced is :attr:`sent`, the input to judge the outputs by."""

    def __init__(self, bootstrap: str, events: list[dict[str, Any]], rate: float) -> None:
        self.bootstrap = bootstrap
        self.events = events
        self.rate = rate
        self.produced = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="window-feeder", daemon=True)

    def start(self) -> Feeder:
        self._thread.start()
        return self

    @property
    def sent(self) -> list[dict[str, Any]]:
        return self.events[: self.produced]

    def _run(self) -> None:
        producer = Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 5})
        encode = msgspec.json.Encoder().encode

        def delivered(err: Any, _msg: Any) -> None:
            if err is not None:
                self.errors.append(str(err))

        start = time.monotonic()
        n = len(self.events)
        while self.produced < n and not self._stop.is_set():
            due = min(n, int((time.monotonic() - start) * self.rate))
            if due <= self.produced:
                self._stop.wait(0.01)  # pacing
                continue
            for e in self.events[self.produced : due]:
                producer.produce(
                    "events",
                    encode(e),
                    e["entity_id"].encode(),
                    partition=partition_of(e["entity_id"]),
                    on_delivery=delivered,
                )
            self.produced = due
            producer.poll(0)
        if producer.flush(30):
            self.errors.append("not every event was delivered within 30 s")

    def stop(self, timeout: float = 60) -> None:
        """Produce no more; returns once everything produced was delivered."""
        self._stop.set()
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the feeder did not finish"
        assert not self.errors, self.errors[:3]


# -- a clean run ---------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_windows_kafka_to_kafka_match_a_batch_recomputation(
    tansu: TansuBroker, tmp_path: Path
) -> None:
    """One worker: every (entity, window) scored once with the recomputed count and
    features and the model's name and version; the entity that falls silent after its first
    window still gets it scored; records far behind the watermark go to the late topic,
    counted; the changelog topic is partitioned like the input."""
    topics(tansu)
    events = make_events(3000, seed=1)
    counts = produce(tansu, events)
    config = windowed(tmp_path, tansu.bootstrap, extra="metrics:\n  port: 0\n")
    worker = Worker(config, model_env(tmp_path), tmp_path / "w.log").start()
    reader = TopicReader(tansu.bootstrap, "outputs", PARTITIONS)
    late_reader = TopicReader(tansu.bootstrap, "late", 1)
    # Far behind the watermark: each in the first window of its entity's partition.
    late = [
        {"id": 10_000 + i, "entity_id": ENTITIES[i], "ts": T0 + 1.0 + i, "value": 1.0}
        for i in range(PARTITIONS * 2)
    ]
    want = expected(events)
    try:
        port = metrics_port(worker)
        # Only once every data record is in (and committed): the watermark has moved past
        # the late records' windows in every partition.
        wait_until(lambda: consumed(tansu, counts), 60, "the data consumed", (worker,))
        produce(tansu, late + sentinels(end_of(events)))
        wait_until(lambda: distinct(reader) >= len(want), 30, "every window", (worker,))
        wait_until(lambda: late_reader.read() >= len(late), 30, "the late records", (worker,))
        rejected = 'headrace_window_records_rejected_total{reason="late"}'
        wait_until(
            lambda: worker_metrics(port).get(rejected) == len(late),
            10,
            "the late records counted",
            (worker,),
        )
        assert worker.terminate() == 0, worker.tail()
        reader.read()
        late_reader.read()
    finally:
        worker.stop()
        reader.close()
        late_reader.close()

    outs = outputs(reader)
    assert assert_matches(outs, events) == 0, "a clean run writes each window once"
    silent = [o for o in outs if o["key"] == SILENT]
    assert [(o["window"]["start"], o["count"]) for o in silent] == [(T0, 4)]

    decode = msgspec.json.Decoder().decode
    assert sorted(decode(v)["id"] for v in late_reader.values) == [e["id"] for e in late]
    for h in late_reader.headers:
        assert h["headrace-stage"] == b"window"
        assert h["headrace-error-type"] == b"late"

    assert tansu.partitions(CHANGELOG) == list(range(PARTITIONS))
    first_start = restored_windows(worker)
    assert first_start and not any(first_start), "a first start restores nothing"


# -- faults --------------------------------------------------------------------------------


def _finish(
    tansu: TansuBroker, feeder: Feeder, reader: TopicReader, worker: Worker
) -> list[dict[str, Any]]:
    """Stop the input, send the sentinels, wait for every window; the input sent."""
    feeder.stop()
    events = feeder.sent
    produce(tansu, sentinels(end_of(events)))
    want = expected(events)
    try:
        wait_until(lambda: distinct(reader) >= len(want), 30, "every window", (worker,))
    except AssertionError as exc:
        late = TopicReader(tansu.bootstrap, "late", 1)
        try:
            # Whatever arrived by now: enough to say why windows are missing.
            wait_until(lambda: late.read() > 0, 2, "late records")
        except AssertionError:
            pass
        finally:
            late.close()
        got = {window_of(o) for o in outputs(reader)}
        missing = sorted(set(want) - got)
        raise AssertionError(
            f"{len(missing)} of {len(want)} windows missing, e.g. {missing[:3]}; "
            f"{len(late.values)} data records went to the late topic, e.g. "
            f"{late.values[:2]} {late.headers[:1]}"
        ) from exc
    assert worker.terminate() == 0, worker.tail()
    reader.read()
    return events


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_worker_killed_mid_run_restarts_from_its_window_state(
    tansu: TansuBroker, tmp_path: Path
) -> None:
    """SIGKILL while input arrives, after outputs and commits, with closed windows still
    waiting for the (stalled) model: no commit covers those windows meanwhile, and a new
    worker restores the state from the changelog and resumes at the offsets it covers.
    Every window comes out with its exact count and features; a duplicate is identical."""
    topics(tansu)
    config = windowed(
        tmp_path, tansu.bootstrap, commit_interval_ms=300, extra="metrics:\n  port: 0\n"
    )
    stall = tmp_path / "stall"
    env = model_env(tmp_path, stall)
    reader = TopicReader(tansu.bootstrap, "outputs", PARTITIONS)
    feeder = Feeder(tansu.bootstrap, make_events(LONG, seed=2), rate=RATE).start()
    first = Worker(config, env, tmp_path / "first.log").start()
    second = Worker(config, env, tmp_path / "second.log")
    try:
        port = metrics_port(first)
        wait_until(
            lambda: anything_committed(tansu) and distinct(reader) >= 100,
            60,
            "outputs and a commit",
            (first,),
        )
        stall.touch()
        closed = worker_metrics(port)[CLOSED]
        wait_until(
            lambda: worker_metrics(port).get(CLOSED, 0) > closed,
            30,
            "windows closed while the model stalls",
            (first,),
        )
        # Those windows have left the state and have no output yet: a commit now would
        # lose them in a crash. One commit may still land (it took its snapshot before
        # they closed); a worker that committed around them would commit again and again.
        offsets = [committed(tansu.bootstrap, GROUP, "events", PARTITIONS)]

        def committed_again() -> bool:
            now = committed(tansu.bootstrap, GROUP, "events", PARTITIONS)
            if now != offsets[-1]:
                offsets.append(now)
            return len(offsets) > 2

        assert not happens_within(committed_again, 1.5), (
            f"offsets committed while closed windows were still being scored: {offsets}"
        )
        first.kill()
        stall.unlink()
        second.start()
        wait_until(lambda: bool(restored_windows(second)), 60, "the restore", (second,))
        events = _finish(tansu, feeder, reader, second)
    finally:
        feeder.stop()
        stall.unlink(missing_ok=True)
        first.stop()
        second.stop()
        reader.close()
    assert_matches(outputs(reader), events)  # duplicates allowed: they must be identical
    assert sum(restored_windows(second)) > 0, "the state should have held open windows"


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_deleted_changelog_resumes_at_the_committed_offsets_with_empty_windows(
    tansu: TansuBroker, tmp_path: Path
) -> None:
    """README, Guarantees: state whose changelog records were deleted is gone, and the
    partition resumes from its committed offset with empty windows. A worker reads the
    first half of the input, commits all of it and stops with windows open (their state
    in the changelog); the changelog topic is deleted; a second worker reads the rest.
    Its windows are exactly those of the rest alone: nothing read again (a window would
    count the first half too), nothing restored, the changelog created again."""
    topics(tansu)
    events = make_events(4000, seed=3)
    first_half, rest = events[:2000], events[2000:]
    config = windowed(tmp_path, tansu.bootstrap, extra="metrics:\n  port: 0\n")
    env = model_env(tmp_path)
    reader = TopicReader(tansu.bootstrap, "outputs", PARTITIONS)
    first = Worker(config, env, tmp_path / "first.log")
    second = Worker(config, env, tmp_path / "second.log")
    try:
        counts = produce(tansu, first_half)
        first.start()
        port = metrics_port(first)
        wait_until(lambda: consumed(tansu, counts), 60, "the first half committed", (first,))
        # The state the first worker left: records to delete.
        assert worker_metrics(port).get("headrace_changelog_records_total", 0) > 0
        assert first.terminate() == 0, first.tail()
        reader.read()
        before = len(reader.values)
        for future in tansu.admin.delete_topics([CHANGELOG], operation_timeout=10).values():
            future.result(10)
        for p, n in produce(tansu, rest + sentinels(end_of(events))).items():
            counts[p] = counts.get(p, 0) + n
        second.start()
        want = expected(rest)

        def second_windows() -> int:
            reader.read()
            return len({window_of(o) for o in windowed_outputs(reader.values[before:])})

        wait_until(lambda: second_windows() >= len(want), 60, "the rest's windows", (second,))
        wait_until(lambda: consumed(tansu, counts), 30, "the rest committed", (second,))
        assert second.terminate() == 0, second.tail()
        reader.read()
    finally:
        first.stop()
        second.stop()
        reader.close()
    # Windows the first worker closed: each with the first half's count.
    first_want = expected(first_half)
    firsts = windowed_outputs(reader.values[:before])
    assert firsts and all(o["count"] == first_want[window_of(o)]["n"] for o in firsts)
    assert assert_matches(windowed_outputs(reader.values[before:]), rest) == 0
    assert restored_windows(second) == [0], log_text(second)
    assert tansu.partitions(CHANGELOG) == list(range(PARTITIONS))


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_window_state_moves_with_partitions_when_workers_join_and_leave(
    tansu: TansuBroker, tmp_path: Path
) -> None:
    """A second worker joins (partitions move to it with their state), then the first
    leaves gracefully (the second takes everything): every window exactly as recomputed,
    none written twice."""
    topics(tansu)
    config = windowed(tmp_path, tansu.bootstrap)
    env = model_env(tmp_path)
    reader = TopicReader(tansu.bootstrap, "outputs", PARTITIONS)
    feeder = Feeder(tansu.bootstrap, make_events(LONG, seed=3), rate=RATE).start()
    first = Worker(config, env, tmp_path / "first.log").start()
    second = Worker(config, env, tmp_path / "second.log")
    try:
        wait_until(
            lambda: anything_committed(tansu) and distinct(reader) >= 50,
            60,
            "the first worker's outputs",
            (first,),
        )
        second.start()
        wait_until(
            lambda: re.search(r"assigned events\[", log_text(second)) is not None,
            60,
            "the join",
            (first, second),
        )
        seen = distinct(reader)
        wait_until(
            lambda: distinct(reader) >= seen + 50, 60, "outputs after the join", (first, second)
        )
        assert "revoking" in log_text(first), "the join should have moved partitions"
        assert first.terminate() == 0, first.tail()
        events = _finish(tansu, feeder, reader, second)
    finally:
        feeder.stop()
        first.stop()
        second.stop()
        reader.close()
    assert assert_matches(outputs(reader), events) == 0, "graceful moves write no window twice"
    assert len(restored_windows(second)) >= 2, "the second worker restored twice"


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_windows_with_exactly_once_delivery_clean_run(tansu: TansuBroker, tmp_path: Path) -> None:
    """State, outputs and offsets in Kafka transactions: a clean run gives the same windows
    (a crash cannot be judged on Tansu, whose read_committed shows aborted records)."""
    topics(tansu)
    events = make_events(2000, seed=4)
    counts = produce(tansu, events)
    config = windowed(tmp_path, tansu.bootstrap, delivery="exactly-once")
    worker = Worker(config, model_env(tmp_path), tmp_path / "w.log").start()
    reader = TopicReader(tansu.bootstrap, "outputs", PARTITIONS)
    try:
        wait_until(lambda: consumed(tansu, counts), 60, "the data consumed", (worker,))
        produce(tansu, sentinels(end_of(events)))
        want = len(expected(events))
        wait_until(lambda: distinct(reader) >= want, 30, "every window", (worker,))
        assert worker.terminate() == 0, worker.tail()
        reader.read()
    finally:
        worker.stop()
        reader.close()
    assert assert_matches(outputs(reader), events) == 0


def pg_windows(dsn: str) -> list[dict[str, Any]]:
    """The windows table as outputs (the shape ``assert_matches`` takes)."""
    import psycopg

    with psycopg.connect(dsn) as conn:
        try:
            rows = conn.execute(
                "SELECT key, window_start, window_end, partition, count, prediction, "
                "model_name, model_version, features FROM window_scores"
            ).fetchall()
        except psycopg.errors.UndefinedTable:
            return []  # the worker has not created it yet
    return [
        {
            "key": key,
            "window": {"start": start, "end": end},
            "source": {"topic": "events", "partition": partition},
            "count": count,
            "prediction": prediction,
            "model": {"name": name, "version": version},
            "features": features,
            "event_time": end,
        }
        for key, start, end, partition, count, prediction, name, version, features in rows
        if not key.startswith(SENTINEL)
    ]


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_exactly_once_into_postgres_survives_sigkill_with_each_window_once(
    tansu: TansuBroker, tmp_path: Path, pg_dsn: PgSchema
) -> None:
    """Window state, outputs and offsets in one PostgreSQL transaction: a worker killed
    with SIGKILL mid-run, and its successor, write every window exactly once (the table
    takes inserts only: a second write of a window would fail the worker) with the
    recomputed counts and features."""
    topics(tansu)
    dsn = pg_dsn.dsn
    config = kafka_pipeline(
        tmp_path / "pg.yaml",
        tansu.bootstrap,
        sinks=f"  - type: postgres\n    dsn: {dsn}\n    mode: insert",
        group=GROUP,
        model=MODEL,
        delivery="exactly-once",
        commit_interval_ms=300,
        extra=WINDOWS.split("  late_destination:")[0]
        + f"dead_letter:\n  type: postgres\n  dsn: {dsn}\n",
    )
    env = model_env(tmp_path)
    feeder = Feeder(tansu.bootstrap, make_events(LONG, seed=5), rate=RATE).start()
    first = Worker(config, env, tmp_path / "first.log").start()
    second = Worker(config, env, tmp_path / "second.log")
    try:
        wait_until(lambda: len(pg_windows(dsn)) >= 100, 60, "windows committed", (first,))
        first.kill()
        second.start()
        wait_until(lambda: bool(restored_windows(second)), 60, "the restore", (second,))
        feeder.stop()
        events = feeder.sent
        produce(tansu, sentinels(end_of(events)))
        want = expected(events)
        wait_until(lambda: len(pg_windows(dsn)) >= len(want), 30, "every window", (second,))
        assert second.terminate() == 0, second.tail()
    finally:
        feeder.stop()
        first.stop()
        second.stop()
    assert assert_matches(pg_windows(dsn), events) == 0
    assert sum(restored_windows(second)) > 0, "the state should have held open windows"


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_two_supervised_workers_and_a_kill_give_the_recomputed_windows(
    tansu: TansuBroker, tmp_path: Path
) -> None:
    """`headrace run --workers 2`: one worker SIGKILLed mid-run, started again by the
    supervisor, restores its partitions' state: every window exactly as recomputed (a
    window written twice is identical)."""
    import psutil

    topics(tansu)
    config = windowed(tmp_path, tansu.bootstrap)
    env = model_env(tmp_path)
    reader = TopicReader(tansu.bootstrap, "outputs", PARTITIONS)
    feeder = Feeder(tansu.bootstrap, make_events(LONG, seed=4), rate=RATE).start()
    supervisor = Worker(config, env, tmp_path / "supervisor.log", ["--workers", "2"]).start()

    def children() -> list[psutil.Process]:
        assert supervisor.proc is not None
        return psutil.Process(supervisor.proc.pid).children()

    try:
        wait_until(
            lambda: anything_committed(tansu) and distinct(reader) >= 50,
            60,
            "outputs and a commit",
            (supervisor,),
        )
        victim = children()[0]
        victim.kill()
        victim.wait(10)
        wait_until(
            lambda: len(children()) == 2 and victim.pid not in {c.pid for c in children()},
            30,
            "the killed worker started again",
            (supervisor,),
        )
        events = _finish(tansu, feeder, reader, supervisor)
        assert supervisor.terminate() == 0, supervisor.tail()
    finally:
        feeder.stop()
        supervisor.stop()
        reader.close()
    assert_matches(outputs(reader), events)
