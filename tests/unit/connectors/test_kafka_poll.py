"""The Kafka source's poll, with a scripted consumer (the logic of slicing; the real
broker's behaviour is in tests/integration/kafka): commits handed over during a poll are
sent before it ends, and a rebalance during a poll drops what was read of partitions
that left."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from headrace.connectors.kafka import source as kafka_source
from headrace.connectors.kafka.source import KafkaSource, _lasts
from headrace.record import source_record


class Message:
    def __init__(self, topic: str, partition: int, offset: int) -> None:
        self._where = (topic, partition, offset)

    def topic(self) -> str:
        return self._where[0]

    def partition(self) -> int:
        return self._where[1]

    def offset(self) -> int:
        return self._where[2]


class ScriptedConsumer:
    """Each consume runs the next step of the script (which may act as the event loop or
    a rebalance callback would) and returns its messages; past the script, nothing. It
    keeps the poll's clock: a consume that returns nothing took its whole timeout."""

    def __init__(self, steps: list[tuple[Callable[[], None] | None, list[Message]]]) -> None:
        self.steps = steps
        self.consumes: list[float] = []
        self.commits: list[dict[tuple[str, int], int]] = []
        self.polls: list[float] = []  # waits for a first record
        self.paused: set[tuple[str, int]] = set()
        self.seeks: list[tuple[str, int, int]] = []
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def consume(self, n: int, timeout: float) -> list[Message]:
        self.consumes.append(timeout)
        if not self.steps:
            self.now += timeout
            return []
        action, messages = self.steps.pop(0)
        if action is not None:
            action()
        return messages[:n]

    def poll(self, timeout: float) -> Message | None:
        """A wait for the first record: nothing came, it took its whole timeout."""
        self.polls.append(timeout)
        self.now += timeout
        return None

    def pause(self, partitions: list[Any]) -> None:
        self.paused |= {(tp.topic, tp.partition) for tp in partitions}

    def resume(self, partitions: list[Any]) -> None:
        self.paused -= {(tp.topic, tp.partition) for tp in partitions}

    def seek(self, tp: Any) -> None:
        self.seeks.append((tp.topic, tp.partition, tp.offset))

    def commit(self, *, offsets: list[Any], asynchronous: bool) -> None:
        assert asynchronous
        self.commits.append({(tp.topic, tp.partition): tp.offset for tp in offsets})


def source(
    consumer: ScriptedConsumer,
    assigned: set[tuple[str, int]],
    monkeypatch: pytest.MonkeyPatch,
) -> KafkaSource:
    monkeypatch.setattr(kafka_source, "time", consumer)
    s = KafkaSource(["t"], group_id="g", max_records=1000, poll_timeout=0.05)
    s.consumer = consumer
    s._assigned = frozenset(assigned)
    return s


def test_a_commit_handed_over_during_a_poll_is_sent_before_it_ends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    parts = {("t", 0)}
    s: KafkaSource
    # A poll's worth of partition 0 is in flight (read up to 1003) and one commit was sent
    # before.
    consumer = ScriptedConsumer(
        [(None, []), (lambda: s.commit_soon({("t", 0): 7}), []), (None, [])]
    )
    s = source(consumer, parts, monkeypatch)
    s._soon.add({("t", 0): 3})
    s._soon.take(parts)
    s._soon.done([("t", 0, 3, True)])
    s._next[("t", 0)] = 1003
    assert s._poll(consumer) == []
    assert consumer.commits == [{("t", 0): 7}]
    # It listened in short slices, not one consume for the whole poll.
    assert max(consumer.consumes) <= kafka_source.SLICE


def test_with_less_than_a_poll_in_flight_a_poll_is_one_consume(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    parts = {("t", 0)}
    # 7 records read past the last position handed over, and no commit waiting or sent:
    # at a moderate rate, slicing costs more than the few milliseconds it saves a commit.
    consumer = ScriptedConsumer([])
    s = source(consumer, parts, monkeypatch)
    s._soon.add({("t", 0): 3})
    s._soon.take(parts)
    s._soon.done([("t", 0, 3, True)])
    s._next[("t", 0)] = 10
    assert s._poll(consumer) == []
    assert consumer.consumes == [0.05]


def test_with_no_commit_due_a_poll_is_one_consume_then_a_wait_in_the_poll_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An empty poll waits once more for a first record before it hands back nothing: an
    idle worker hands an empty poll to the event loop ten times a second, not a hundred."""
    consumer = ScriptedConsumer([])
    s = source(consumer, {("t", 0)}, monkeypatch)
    assert s._poll(consumer) == []
    assert consumer.consumes == [0.05]
    assert consumer.polls == [kafka_source.IDLE_WAIT]


class ArrivingConsumer(ScriptedConsumer):
    """Nothing within the poll's consume; a record arrives 30 ms into the wait that
    follows, and one more by the next consume."""

    def poll(self, timeout: float) -> Message | None:
        self.polls.append(timeout)
        self.now += 0.03
        self.steps = [(None, [Message("t", 0, 11)])]
        return Message("t", 0, 10)


def test_a_record_that_arrives_during_the_wait_starts_a_poll_of_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The wait returns at the first record; what follows it within a poll's window
    comes with it (a record is held no longer than a poll by the wait)."""
    consumer = ArrivingConsumer([])
    s = source(consumer, {("t", 0)}, monkeypatch)
    got = s._poll(consumer)
    assert [m.offset() for m in got] == [10, 11]
    assert consumer.polls == [kafka_source.IDLE_WAIT]
    assert consumer.now <= 0.05 + 0.03 + 0.05 + 1e-9


class RebalancingConsumer(ScriptedConsumer):
    """A rebalance during the wait takes partition 1 away; the record that ends the wait
    is of ``partition``."""

    def __init__(self, source: Callable[[], KafkaSource], partition: int) -> None:
        super().__init__([])
        self.source = source
        self.partition = partition

    def poll(self, timeout: float) -> Message | None:
        self.polls.append(timeout)
        self.source()._forget([("t", 1)])
        return Message("t", self.partition, 10)


@pytest.mark.parametrize("partition", [0, 1])
def test_a_rebalance_during_the_wait_drops_only_a_record_of_a_partition_that_left(
    monkeypatch: pytest.MonkeyPatch, partition: int
) -> None:
    """Dropping a record of a partition still assigned would leave a gap its commits
    would pass over: a loss."""
    s: KafkaSource
    consumer = RebalancingConsumer(lambda: s, partition)
    s = source(consumer, {("t", 0), ("t", 1)}, monkeypatch)
    got = s._poll(consumer)
    assert [(m.partition(), m.offset()) for m in got] == ([(0, 10)] if partition == 0 else [])


class PausedMeanwhile(ScriptedConsumer):
    """The engine asks for a pause (``how``) while the poll thread waits for a first
    record, which then arrives: an operator's pause answered before the records came."""

    def __init__(self, source: Callable[[], KafkaSource], how: str) -> None:
        super().__init__([])
        self.source, self.how = source, how

    def poll(self, timeout: float) -> Message | None:
        self.polls.append(timeout)
        if self.how == "paused":
            self.source().set_paused(True)
        else:
            self.source().pause_partitions([("t", 0)], True)
        return Message("t", 0, 10)


@pytest.mark.parametrize("how", ["paused", "held"])
def test_a_record_that_ends_a_wait_during_which_reading_paused_is_not_handed_out(
    monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """Seen in the dashboard's browser test: paused by the admin call, a worker scored the
    600 records produced after the call was answered. The record goes back (librdkafka
    sent back to it, and the resume seeks to it): not lost, not read early."""
    s: KafkaSource
    consumer = PausedMeanwhile(lambda: s, how)
    s = source(consumer, {("t", 0)}, monkeypatch)
    assert s._poll(consumer) == []
    assert consumer.seeks == [("t", 0, 10)]
    assert consumer.paused == {("t", 0)}
    assert s._next[("t", 0)] == 10
    # Resumed: reading starts again at that record.
    if how == "paused":
        s.set_paused(False)
    else:
        s.pause_partitions([("t", 0)], False)
    s._apply_pause(consumer)
    assert consumer.paused == set()
    assert consumer.seeks[-1] == ("t", 0, 10)


@pytest.mark.parametrize("why", ["held", "paused", "commit-waiting"])
def test_no_wait_for_a_first_record_while_a_resume_or_a_commit_could_need_the_thread(
    monkeypatch: pytest.MonkeyPatch, why: str
) -> None:
    """A resume (or a pause), or a commit handed over meanwhile, would wait for the next
    record: with one of them possible the poll ends after its consume, as before."""
    consumer = ScriptedConsumer([])
    s = source(consumer, {("t", 0), ("t", 1)}, monkeypatch)
    if why == "held":  # one partition held at its share of the flow bound
        s._held = s._paused = frozenset({("t", 1)})
    elif why == "paused":  # every partition: the flow bound
        s._want_paused = True
        s._paused = frozenset(s._assigned)
    else:  # records read past the last position handed over for commit
        s._soon.add({("t", 0): 3})
        s._soon.take({("t", 0)})
        s._soon.done([("t", 0, 3, True)])
        s._next[("t", 0)] = 10
    assert s._poll(consumer) == []
    assert consumer.polls == []


def test_records_of_a_partition_revoked_mid_poll_are_dropped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    parts = {("t", 0), ("t", 1)}
    s: KafkaSource
    first = [Message("t", 0, 10), Message("t", 1, 20)]
    later = [Message("t", 1, 21)]
    consumer = ScriptedConsumer([(None, first), (lambda: s._forget([("t", 0)]), later)])
    s = source(consumer, parts, monkeypatch)
    s._soon.add({("t", 0): 5, ("t", 1): 5})  # commits are on their way: slices
    got = s._poll(consumer)
    assert [(m.partition(), m.offset()) for m in got] == [(1, 20), (1, 21)]


def test_a_poll_with_records_returns_soon_while_commits_are_due(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    parts = {("t", 0)}
    consumer = ScriptedConsumer([(None, [Message("t", 0, 10)])] + [(None, [])] * 1000)
    s = source(consumer, parts, monkeypatch)
    s._soon.add({("t", 0): 10})
    got = s._poll(consumer)
    assert [m.offset() for m in got] == [10]
    # Returned after COMMITTING_WAIT, in slices, not at the 50 ms poll timeout.
    assert consumer.now == pytest.approx(kafka_source.COMMITTING_WAIT)
    assert max(consumer.consumes) <= kafka_source.SLICE


@given(
    runs=st.lists(
        st.tuples(st.sampled_from(["a", "b"]), st.integers(0, 3), st.integers(1, 5)),
        min_size=1,
        max_size=8,
    )
)
def test_where_reading_got_to_is_each_partitions_last_record(
    runs: list[tuple[str, int, int]],
) -> None:
    """A poll's records come in runs of one partition, in offset order within each: the
    last record of each partition is its highest offset, however the runs interleave."""
    offsets: dict[tuple[str, int], int] = {}
    chunk = []
    for topic, partition, length in runs:
        for _ in range(length):
            offset = offsets.get((topic, partition), 0)
            offsets[(topic, partition)] = offset + 1
            chunk.append(
                source_record(
                    key=None,
                    value=None,
                    event_time=float(offset),
                    topic=topic,
                    partition=partition,
                    offset=offset,
                )
            )
    lasts = {(r.topic, r.partition): r.offset for r in _lasts(chunk)}
    assert lasts == {key: end - 1 for key, end in offsets.items()}


class Closing:
    """A consumer whose close() blocks until released (forever, if never), or raises."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.release = threading.Event()
        self.error = error
        self.closed_in: str | None = None

    def close(self) -> None:
        self.closed_in = threading.current_thread().name
        if self.error is not None:
            raise self.error
        self.release.wait()


def closing_source(consumer: Closing, timeout: float) -> KafkaSource:
    s = KafkaSource(["t"], group_id="g", close_timeout=timeout, name="k")
    s.consumer = consumer
    return s


def test_a_close_that_never_returns_is_left_behind(caplog: pytest.LogCaptureFixture) -> None:
    """Seen on the test broker: a static member's close() hung while its group rebalanced,
    and the stopping worker with it. The close runs in a daemon thread of its own and is
    waited for close_timeout, then left there: the worker exits."""
    consumer = Closing()
    s = closing_source(consumer, timeout=0.3)
    started = time.monotonic()
    asyncio.run(s.close())
    assert time.monotonic() - started < 5
    assert consumer.closed_in == "headrace-kafka-close-k"
    assert "did not close within 0.3s" in caplog.text
    consumer.release.set()


def test_a_close_that_returns_is_waited_for(caplog: pytest.LogCaptureFixture) -> None:
    consumer = Closing()
    consumer.release.set()
    s = closing_source(consumer, timeout=5)
    asyncio.run(s.close())
    assert consumer.closed_in is not None and s.consumer is None
    assert "did not close" not in caplog.text


class LagThenClose:
    """A consumer whose lag query (``committed``) waits until released, and whose
    close() notes whether a lag query was still inside the client: librdkafka's close
    destroys the handle, and a call still in it then never returned."""

    def __init__(self) -> None:
        self.in_query = threading.Event()
        self.release = threading.Event()
        self.querying = False
        self.closed_during_query: bool | None = None

    def committed(self, tps: list[Any], timeout: float) -> list[Any]:
        self.querying = True
        self.in_query.set()
        self.release.wait(5)
        self.querying = False
        tp = tps[0]
        tp.offset = 0
        return [tp]

    def get_watermark_offsets(self, tp: Any, timeout: float, cached: bool) -> tuple[int, int]:
        return 0, 10

    def close(self) -> None:
        self.closed_during_query = self.querying


def test_the_close_waits_for_a_lag_query_under_way() -> None:
    """A lag query runs in a thread of its own; the close takes the consumer away first
    (no new query starts) and closes it only once the query under way has left it, and
    the worker's loop never waits on a lag thread (a worker that logged its close-time
    revocation never exited: CI, 2026-12-07)."""
    consumer = LagThenClose()
    s = KafkaSource(["t"], group_id="g", close_timeout=5, name="k")
    s.consumer = consumer
    s._assigned = frozenset({("t", 0)})

    async def run() -> dict[Any, Any]:
        lag = asyncio.ensure_future(s.lag())
        await asyncio.to_thread(consumer.in_query.wait, 5)
        closing = asyncio.ensure_future(s.close())
        await asyncio.sleep(0.1)
        assert consumer.closed_during_query is None  # not closed yet: the query is inside
        consumer.release.set()
        await closing
        return await lag

    assert asyncio.run(run()) == {("t", 0): (10, 0.0)}
    assert consumer.closed_during_query is False
    assert s.consumer is None


def test_a_close_that_raises_systemerror_is_reported_and_ignored(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """confluent-kafka now and then raises SystemError out of close() as it returns."""
    s = closing_source(Closing(SystemError("_PyErr_SetObject: exception")), timeout=5)
    asyncio.run(s.close())
    assert "the client raised while closing" in caplog.text


class EarlyConsumer(ScriptedConsumer):
    """Waits the way librdkafka does: a timeout counted in whole milliseconds, rounded
    down, and the wait ending a little early (a 10 ms consume came back after 9.x ms)."""

    def consume(self, n: int, timeout: float) -> list[Message]:
        self.consumes.append(timeout)
        assert len(self.consumes) < 50, f"the poll spins: consumes of {self.consumes[-5:]}"
        self.now += int(timeout * 1000) / 1000 * 0.95
        return []


def test_a_poll_with_nothing_to_read_waits_instead_of_spinning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The end of an empty poll is not spent in consumes of 0 ms that return at once (an
    idle worker used 0.10 of a core that way, 20,000 consumes a second)."""
    consumer = EarlyConsumer([])
    s = source(consumer, {("t", 0)}, monkeypatch)
    assert s._poll(consumer) == []
    assert consumer.now >= 0.05  # the whole poll timeout
    assert len(consumer.consumes) <= 3
    assert min(consumer.consumes) >= kafka_source.MIN_CONSUME


class RevokingConsumer:
    """Refuses commits the way a group that moved on does (ILLEGAL_GENERATION)."""

    def __init__(self) -> None:
        self.unassigned: list[Any] = []

    def commit(self, *, offsets: list[Any], asynchronous: bool) -> None:
        from confluent_kafka import KafkaError, KafkaException

        raise KafkaException(KafkaError(KafkaError.ILLEGAL_GENERATION))

    def incremental_unassign(self, partitions: list[Any]) -> None:
        self.unassigned += partitions

    def consumer_group_metadata(self) -> None:
        return None


class Revoked:
    async def partitions_revoked(self, partitions: Any) -> dict[tuple[str, int], int]:
        return {("t", 0): 42}


async def test_a_commit_refused_while_revoking_does_not_stop_the_worker(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The revoked partitions' positions could not be committed because the group moved
    on: their next owner reads those records again (at least once); the worker goes on."""
    from confluent_kafka import TopicPartition

    s = KafkaSource(["t"], group_id="g")
    s._listener = Revoked()  # type: ignore[assignment]
    s._loop = asyncio.get_running_loop()
    consumer = s.consumer = RevokingConsumer()
    with caplog.at_level("WARNING", logger="headrace.kafka"):
        await asyncio.to_thread(s._on_revoke, consumer, [TopicPartition("t", 0)])
    assert s._fatal is None
    assert [(p.topic, p.partition) for p in consumer.unassigned] == [("t", 0)]
    assert "commit refused while the group rebalances" in caplog.text
