"""The Kafka source: a member of a consumer group that never commits by itself.

The engine commits explicit offsets, per partition, only for records that reached a
terminal state. Rebalances are cooperative; on revocation the engine finishes (or gives
up on) the revoked partitions' records before they are committed, never after. Polls and
commits take turns in one thread, so a commit never races a rebalance callback.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import AsyncIterator, Callable, Collection, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from confluent_kafka import (
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    KafkaException,
    TopicPartition,
)

from headrace.batch import RecordBatch
from headrace.connectors.base import (
    CommitRefused,
    PartitionedSource,
    PartitionKey,
    RebalanceListener,
)
from headrace.connectors.kafka.commits import SoonCommits, answers
from headrace.connectors.kafka.common import (
    KafkaFatalError,
    Settings,
    fmt,
    log,
    topic_partitions,
)
from headrace.connectors.kafka.recovery import GROUP_HEADER, ReadBack, read_back, split
from headrace.connectors.kafka.start import Start, plan, summary
from headrace.connectors.kafka_ids import INSTANCE_ID_RULE, instance_id_problem
from headrace.record import Record, source_record

#: While commits are on their way, a poll that read something returns within
#: COMMITTING_WAIT, and the poll thread consumes in SLICE-long pieces, sending what was
#: handed over between two (with one 100 ms consume per poll, commits crawled).
#: Measured (bench/crash_cost.py, 2026-12-06): positions waited 6 ms p50 to be sent when
#: they were sent only between polls, a third of the time from write to confirmed commit;
#: 1 ms p50 with 2 ms slices; 0.5 ms slices cost a third of the throughput (the poll
#: thread's wake-ups contend for the GIL). Records read and not yet handed over make it
#: slice only from a poll's worth (max_records) on: at a moderate rate, slicing for every
#: record in flight cost more than it saved (measured 2026-12-06, bench/kafka_throughput.py
#: paced runs, light model at 5,000 events/s for 20 s on fresh Tansu brokers, two runs
#: each: the worker at 0.21 of a core and the broker 13.8-14.0 s of CPU, p99 176 ms, against
#: 0.17, 13.2-13.4 s and 93-107 ms slicing only while commits were waiting or in flight;
#: the async loop: 0.10, 12.1 s, 88-92 ms). A crash at such a rate writes a few records
#: more twice (the rate times a poll); under a backlog every poll is a poll's worth.
COMMITTING_WAIT = 0.005
SLICE = 0.002

#: The shortest wait a consume is given. librdkafka counts a consume's timeout in whole
#: milliseconds, rounded down, and its waits end a little early: a poll's first consume
#: came back after 9.x of its 10 ms, and the rest of the poll, under a millisecond, was
#: spent in consumes of 0 ms that return at once, about 130 of them per poll. Measured
#: (2026-12-06, an idle worker, poll timeout 10 ms): 20,000 consumes a second, the poll
#: thread using 0.10 of a core with nothing to read.
MIN_CONSUME = 0.001

#: How long a poll that read nothing goes on waiting, in the poll thread, for the first
#: record (``Consumer.poll`` returns at the first one), before it hands an empty poll back
#: to the event loop. Each empty poll handed back cost a hand-over to the event loop and
#: back: an idle worker polled 100 times a second (``max_wait_ms``) at 0.06 of a core,
#: 0.03 of it in the event loop (bench/idle_cost.py, an AMD EPYC); waiting here, 0.0175
#: against 0.030 (bench/results/idle_cost-2026-12-07.json, a Xeon). Not while a commit
#: waits, nor while any partition is paused (a resume would wait for it); a stopping
#: worker's close and a commit taken by the poll thread wait at most this long.
IDLE_WAIT = 0.1

#: How long a stopping worker waits for the consumer's close() (its last rebalance
#: callback, leaving the group): below the default shutdown_timeout_s (30 s), and enough
#: for the test broker's slowest group operations (about 11 s to join).
CLOSE_TIMEOUT = 20.0

# Settings the engine depends on: offsets are committed explicitly, after terminal state.
_CONSUMER_REQUIRED: Settings = {"enable.auto.commit": False, "enable.auto.offset.store": False}
_CONSUMER_DEFAULTS: Settings = {
    "partition.assignment.strategy": "cooperative-sticky",
    "auto.offset.reset": "earliest",
    "enable.partition.eof": False,
}


# Commit errors that mean "the group is changing", not "the commit cannot work".
_REBALANCING = frozenset(
    {
        KafkaError.ILLEGAL_GENERATION,
        KafkaError.REBALANCE_IN_PROGRESS,
        KafkaError.UNKNOWN_MEMBER_ID,
    }
)


class KafkaSource(PartitionedSource):
    """Consumes ``topics`` as a member of consumer group ``group_id``.

    Records keep the Kafka key (as text), headers and timestamp (as event time, unless the
    decoder takes it from a field). ``settings`` pass through to librdkafka; the source
    only insists on manual offset commits.

    ``instance_id`` makes it a static member of the group (KIP-345, librdkafka's
    ``group.instance.id``; Kafka 2.3 or later): restarted within ``session.timeout.ms``
    with the same id, it gets its partitions back without a rebalance. Give each worker of
    the group its own id (e.g. ``socket.gethostname()`` in a StatefulSet): a second member
    with the same id fences the first.

    ``start`` chooses where partitions without a committed offset begin (and, with
    ``reset``, moves committed ones there once): see :mod:`headrace.connectors.kafka.start`.
    """

    def __init__(
        self,
        topics: Sequence[str],
        *,
        group_id: str,
        settings: Mapping[str, Any] | None = None,
        max_records: int = 1000,
        poll_timeout: float = 0.1,
        name: str = "kafka",
        instance_id: str | None = None,
        start: Start | None = None,
        close_timeout: float = CLOSE_TIMEOUT,
    ) -> None:
        if not topics:
            raise ValueError("a Kafka source needs at least one topic")
        self.topics = list(topics)
        self.group_id = group_id
        self.settings: Settings = {
            **_CONSUMER_DEFAULTS,
            **(settings or {}),
            **_CONSUMER_REQUIRED,
            "group.id": group_id,
            **_static_member(instance_id, settings or {}),
        }
        # The id in effect, given here or in the settings (None: dynamic membership).
        passed = self.settings.get("group.instance.id")
        self.instance_id = None if passed is None else str(passed)
        self.max_records = max_records
        self.poll_timeout = poll_timeout
        self.close_timeout = close_timeout
        self.name = name
        self.consumer: Any = None
        self._listener: RebalanceListener | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # One thread for every consumer call: polls (rebalance callbacks run in them) and
        # commits take turns, so a commit never races a revocation.
        self._poll_thread = ThreadPoolExecutor(1, thread_name_prefix="headrace-kafka-poll")
        self._fatal: BaseException | None = None
        self._group_metadata: Any = None
        self._cooperative = "cooperative" in str(
            self.settings.get("partition.assignment.strategy", "")
        )
        # Flow control: the engine says what to fetch (everything paused, or some
        # partitions held); the poll thread applies it between polls.
        self._want_paused = False
        self._held: frozenset[PartitionKey] = frozenset()
        self._paused: set[PartitionKey] = set()
        self._assigned: frozenset[PartitionKey] = frozenset()
        self._last_read: dict[PartitionKey, float] = {}
        # Lag queries ask the broker: never in the poll thread, which must keep polling.
        # Each runs in a daemon thread of its own (one waits while a rebalance callback
        # is pending: a lag executor's shutdown, on the loop, then waited with it), one at
        # a time, and the close waits for the one under way (this lock): queries running
        # while close() ran kept it from returning (measured: 8 closes of 8 past 25 s,
        # none without them). A worker stopping in CI logged its close-time revocation
        # and nothing more (2026-12-07). Not taken by the rebalance callbacks: a query
        # waits for a pending callback, which would then wait for the query.
        self._lag_lock = threading.Lock()
        # The offset after the last record consumed, per partition.
        self._next: dict[PartitionKey, int] = {}
        # Commits sent without waiting (see commit_soon), by the poll thread.
        self._soon = SoonCommits()
        self.start = start
        # Partitions whose committed offsets this process moved (reset once, never again).
        self._reset_done: set[PartitionKey] = set()
        # Partitions that left during the poll in progress (see _poll).
        self._left: set[PartitionKey] = set()
        self._as_batches = False
        # Reading back what a crashed worker wrote (see recovery.py): what to read, and
        # per partition the offsets already written, to pass over, and the last of them.
        self._read_back: ReadBack | None = None
        self._written: dict[PartitionKey, tuple[set[int], int]] = {}

    def read_as_batches(self) -> bool:
        self._as_batches = True
        return True

    def bind(self, listener: RebalanceListener) -> None:
        self._listener = listener

    def read_back_outputs(
        self, topics: Sequence[tuple[str, str]], depth: int
    ) -> tuple[str, bytes] | None:
        """Every output goes to ``topics`` (``(bootstrap servers, topic)``, all on this
        source's brokers): on assignment, read back the last ``depth`` records of each of
        their partitions and pass over the records already written there (see
        :mod:`headrace.connectors.kafka.recovery`). Not when ``start`` resets committed
        offsets (those are to be scored again). The header the outputs must carry."""
        if depth <= 0 or not topics or (self.start is not None and self.start.reset):
            return None
        servers = str(self.settings.get("bootstrap.servers", ""))
        if any(s != servers for s, _ in topics):
            return None
        tag = self.group_id.encode()
        names = tuple(dict.fromkeys(t for _, t in topics))
        self._read_back = ReadBack(topics=names, tag=tag, depth=depth)
        return GROUP_HEADER, tag

    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        config = {
            **self.settings,
            "error_cb": self._on_error,
            "on_commit": self._on_commit,
            "logger": log,
        }
        self.consumer = Consumer(config)
        self.consumer.subscribe(
            self.topics, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )
        log.info(
            "kafka source %s: group %s, instance id %s, topics %s",
            self.name,
            self.group_id,
            self.instance_id or "none (dynamic membership)",
            self.topics,
        )

    async def chunks(self) -> AsyncIterator[Sequence[Record]]:
        loop = asyncio.get_running_loop()
        consumer = self.consumer
        # Updated here, read by the next poll: the two take turns, never at once.
        following = self._next
        last_read = self._last_read
        while True:
            messages = await loop.run_in_executor(self._poll_thread, self._poll, consumer)
            if self._fatal is not None:
                raise self._fatal
            if not messages:
                continue
            now = time.time()
            if self._as_batches:
                for batch in _batches(messages, now):
                    key = (batch.topic, batch.partition)
                    following[key] = batch.offsets.stop
                    last_read[key] = float(batch.event_times[-1])
                    yield batch
                continue
            chunk: list[Record] = []
            for m in messages:
                err = m.error()
                if err is not None:
                    _message_error(m, err)
                    continue
                kind, ts = m.timestamp()
                key = m.key()
                topic, partition = m.topic(), m.partition()
                when = ts / 1000.0 if kind != TIMESTAMP_NOT_AVAILABLE else now
                chunk.append(
                    source_record(
                        key=key.decode("utf-8", "replace") if key is not None else None,
                        value=None,
                        event_time=when,
                        topic=topic,
                        partition=partition,
                        offset=m.offset(),
                        raw=m.value(),
                        headers=m.headers(),
                    )
                )
            if chunk:
                # Where each partition's reading got to, from its last record: once per
                # partition and chunk, not per record.
                for r in _lasts(chunk):
                    following[(r.topic, r.partition)] = r.offset + 1
                    last_read[(r.topic, r.partition)] = r.event_time
                yield chunk

    def _poll(self, consumer: Any) -> list[Any]:
        """One poll, in the poll thread: up to ``max_records`` records within
        ``poll_timeout``, applying changes of pause state first. While paused the consumer
        goes on polling: that keeps it in its group (a consumer that does not poll within
        ``max.poll.interval.ms`` is evicted) and runs rebalances.

        While commits are on their way (handed over, sent, or due for a poll's worth of
        records in flight), it consumes in ``SLICE``-long pieces; between two it sends
        what was handed over (a commit handed over during a consume would wait for it to
        return; answers come during consumes) and, with nothing read yet, applies pause
        changes. Then it also returns what it has after ``COMMITTING_WAIT``."""
        soon, following, wanted = self._soon, self._next, self.max_records
        started = time.monotonic()
        end = started + self.poll_timeout
        soon_end = started + COMMITTING_WAIT
        messages: list[Any] = []
        self._left = set()
        while True:
            if not messages:
                # Not with records in hand: a resume seeks to the offset after the last
                # record handed out, which would read those again.
                self._apply_pause(consumer)
            committing = soon.busy or soon.expecting(following, wanted)
            if soon.busy:
                self._send_soon(consumer)
            now = time.monotonic()
            left = end - now
            if committing:
                left = min(left, SLICE, soon_end - now if messages else SLICE)
            got: list[Any] = consumer.consume(wanted - len(messages), max(left, MIN_CONSUME))
            if self._left:
                # A rebalance during that consume: what earlier slices read of the
                # partitions that left is not this worker's to hand out.
                messages = [m for m in messages if (m.topic(), m.partition()) not in self._left]
                self._left = set()
            messages += got
            now = time.monotonic()
            if not messages and now >= end and self._idle(started):
                first = consumer.poll(IDLE_WAIT)
                if first is None:
                    return messages
                key = (first.topic(), first.partition())
                if key in self._left:
                    pass  # a rebalance during the wait: not this worker's to hand out
                elif self._want_paused or key in self._held:
                    # Paused during the wait (an operator's pause, the flow bound): not
                    # handed out, but read again once resumed.
                    self._unread(consumer, first)
                else:
                    messages = [first]
                self._left = set()
                now = time.monotonic()
                end, soon_end = now + self.poll_timeout, now + COMMITTING_WAIT
                continue
            if (
                len(messages) >= wanted
                or now >= end
                or (messages and now >= soon_end)
                or self._fatal is not None
            ):
                return self._unwritten(messages) if self._written else messages

    def _unread(self, consumer: Any, m: Any) -> None:
        """Put back a record the poll read and will not hand out: librdkafka is sent back
        to it, and a resume seeks to it (a seek followed by a pause would otherwise resume
        from ``auto.offset.reset``, see :meth:`_wake_fetcher`). Every record before it of
        its partition was handed out, so it is where reading got to."""
        key, offset = (m.topic(), m.partition()), m.offset()
        consumer.seek(TopicPartition(key[0], key[1], offset))
        self._next[key] = offset

    def _idle(self, started: float) -> bool:
        """Whether an empty poll may go on waiting for a first record in the poll thread:
        once per poll, with nothing paused or to be paused, and, where the engine commits
        as it goes, every record read handed over for commit and every commit answered
        (a commit handed over meanwhile would wait for the next record)."""
        soon = self._soon
        return (
            not soon.busy
            and not soon.expecting(self._next, 1)
            and not self._paused
            and not self._want_paused
            and not self._held
            and self.consumer is not None
            and self._fatal is None
            and time.monotonic() - started < IDLE_WAIT
        )

    def _apply_pause(self, consumer: Any) -> None:
        """Pause and resume partitions as the engine last asked (everything, or some held)."""
        assigned = self._assigned
        want = set(assigned) if self._want_paused else set(self._held & assigned)
        if want == self._paused:
            return
        pause = sorted(want - self._paused)
        resume = sorted((self._paused - want) & self._assigned)
        if pause:
            consumer.pause([TopicPartition(t, p) for t, p in pause])
            log.info("kafka %s: paused %s", self.name, fmt(pause))
        if resume:
            tps = [TopicPartition(t, p) for t, p in resume]
            consumer.resume(tps)
            self._wake_fetcher(consumer, tps)
            log.info("kafka %s: resumed %s", self.name, fmt(resume))
        self._paused = want

    def _wake_fetcher(self, consumer: Any, partitions: list[Any]) -> None:
        """librdkafka's fetcher notices a resume only at its next wake-up, up to a second
        later: a stall per pause. A seek wakes it at once. The seek goes to the offset after
        the last record consumed, kept here: librdkafka forgets its own position on a seek
        until a record arrives, and a pause in that window resumes from
        ``auto.offset.reset``. Partitions nothing was consumed from yet are left alone."""
        for tp in partitions:
            key = (tp.topic, tp.partition)
            offset = self._next.get(key)
            if offset is not None:
                consumer.seek(TopicPartition(tp.topic, tp.partition, offset))

    def set_paused(self, paused: bool) -> None:
        self._want_paused = paused

    def pause_partitions(self, partitions: Collection[PartitionKey], paused: bool) -> None:
        if paused:
            self._held = self._held | frozenset(partitions)
        else:
            self._held = self._held - frozenset(partitions)

    def assigned(self) -> list[PartitionKey]:
        return sorted(self._assigned)

    def paused_partitions(self) -> list[PartitionKey]:
        return sorted(self._paused)

    async def lag(self) -> dict[PartitionKey, tuple[int, float]]:
        """Per partition: records between the next one to read and the high watermark,
        and the age of the last record read, by its Kafka timestamp (0 when none are
        left)."""
        if self.consumer is None:
            return {}
        return await asyncio.wrap_future(
            _in_daemon_thread(self._lag, f"headrace-kafka-lag-{self.name}")
        )

    def _lag(self) -> dict[PartitionKey, tuple[int, float]]:
        with self._lag_lock:  # the close waits for this
            return self._lag_of(self.consumer)

    def _lag_of(self, consumer: Any) -> dict[PartitionKey, tuple[int, float]]:
        if consumer is None:
            return {}
        now = time.time()
        paused = set(self._paused)
        out: dict[PartitionKey, tuple[int, float]] = {}
        for key in sorted(self._assigned):
            if self.consumer is None:  # closing: each call here would wait its timeout
                break
            tp = TopicPartition(*key)
            # The next offset to read: what this worker handed out, else where it starts.
            position = self._next.get(key)
            if position is None:
                (committed,) = consumer.committed([tp], timeout=1.0)
                position = committed.offset
            # A paused partition is not fetched, so its cached high watermark would stand
            # still while the partition grows: ask the broker.
            low, high = consumer.get_watermark_offsets(tp, timeout=1.0, cached=key not in paused)
            if high < 0:
                continue
            if position < 0:  # nothing committed: auto.offset.reset applies
                position = low if self.settings.get("auto.offset.reset") == "earliest" else high
            behind = max(0, high - position)
            last = self._last_read.get(key)
            out[key] = (behind, max(0.0, now - last) if behind and last is not None else 0.0)
        return out

    async def commit(self, positions: Mapping[PartitionKey, int]) -> None:
        """Commit in the poll thread, between two polls: never while a rebalance callback
        runs, and after any revocation that came first, so the partitions still assigned
        when it runs are the only ones committed (a revoked partition's next owner may
        already have moved its offset on)."""
        if positions:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._poll_thread, self._commit_assigned, dict(positions))

    def commit_soon(self, positions: Mapping[PartitionKey, int]) -> None:
        """Commit without waiting: noted here, sent by the poll thread before its next
        poll, one commit in flight per partition. Called on the event loop while a
        rebalance callback held the poll thread (and waited for the loop), a consumer
        call here deadlocked the worker; so it only notes them."""
        if positions:
            self._soon.add(positions)

    def _send_soon(self, consumer: Any) -> None:
        offsets, lost = self._soon.take(self._assigned)
        if offsets:
            try:
                consumer.commit(offsets=topic_partitions(offsets), asynchronous=True)
            except KafkaException as exc:  # sent again, or covered by the next one
                log.debug("kafka %s: commit of %s not sent: %s", self.name, offsets, exc)
                _, failed = self._soon.done([(t, p, o, False) for (t, p), o in offsets.items()])
                lost += failed
        if lost:
            self._tell_committed({}, lost)

    def _tell_committed(
        self, confirmed: Mapping[PartitionKey, int], failed: list[PartitionKey]
    ) -> None:
        if self._listener is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self._listener.positions_committed, confirmed, failed)

    def _commit_assigned(self, positions: dict[PartitionKey, int]) -> None:
        assigned = {(tp.topic, tp.partition) for tp in self.consumer.assignment()}
        mine = {k: v for k, v in positions.items() if k in assigned}
        if mine:
            self._commit(topic_partitions(mine))

    def _commit(self, offsets: list[Any]) -> None:
        try:
            self.consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            code = exc.args[0].code()
            if code == KafkaError._NO_OFFSET:  # nothing to commit
                return
            if code in _REBALANCING:
                # The group moved on while this commit was on its way (a member joined
                # or left): refused, not failed. Seen with --workers and a worker joining.
                raise CommitRefused(
                    f"kafka {self.name}: commit refused while the group rebalances "
                    f"({exc.args[0].name()})"
                ) from None
            raise

    def group_metadata(self) -> Any:
        """For ``send_offsets_to_transaction``: who commits, in which generation. Taken in
        the rebalance callbacks (the generation changes only there): asked for on the event
        loop, it would wait for the poll in progress."""
        if self._group_metadata is None:
            self._group_metadata = self.consumer.consumer_group_metadata()
        return self._group_metadata

    async def close(self) -> None:
        """Close the consumer, waiting at most ``close_timeout`` seconds for it.

        close() leaves the group, but for a static member: librdkafka sends no LeaveGroup
        for one (KIP-345), so its partitions wait out session.timeout.ms before they move.
        It runs in a thread of its own, once the poll thread is idle (consumer calls still
        take turns): a close that never returns (seen on the test broker, a static member
        stopping while its group rebalanced) is left behind in that daemon thread, and the
        worker exits all the same. What is committed was committed before."""
        if self.consumer is not None:
            consumer, self.consumer = self.consumer, None
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._poll_thread, _idle)  # a poll under way ends

            def close() -> None:
                # After the lag query under way, if any; one still waiting then (on a
                # rebalance that only this close will serve) is not waited for longer.
                waited = self._lag_lock.acquire(timeout=LAG_QUERY_WAIT)
                try:
                    consumer.close()
                finally:
                    if waited:
                        self._lag_lock.release()

            closed = _in_daemon_thread(close, f"headrace-kafka-close-{self.name}")
            try:
                async with asyncio.timeout(self.close_timeout):
                    await asyncio.wrap_future(closed)
            except TimeoutError:
                log.warning(
                    "kafka %s: the client did not close within %ss (the broker did not "
                    "answer); exiting without waiting for it",
                    self.name,
                    self.close_timeout,
                )
            except SystemError as exc:
                # confluent-kafka 2.16 now and then raises "_PyErr_SetObject: exception
                # <class 'str'> is not a BaseException subclass" out of close() (once in a
                # full test run here; the SystemError-from-callbacks family of
                # confluent-kafka-python#865), as it returns from librdkafka's close. What
                # is committed was committed before; say so and go on.
                log.warning("kafka %s: the client raised while closing: %s", self.name, exc)
        self._poll_thread.shutdown(wait=True)

    # -- callbacks, in the poll thread ---------------------------------------------------

    def _call_listener(self, coro: Any) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        keys = [(p.topic, p.partition) for p in partitions]
        log.info("kafka %s: assigned %s", self.name, fmt(keys))
        starts: Mapping[PartitionKey, int] | None = None
        if self._listener is not None:
            try:
                starts = self._call_listener(self._listener.partitions_assigned(keys))
            except Exception as exc:
                self._fatal = exc
        if self.start is not None and self._fatal is None:
            try:
                starts = self._start_positions(consumer, keys, starts or {})
            except Exception as exc:
                log.error("kafka %s: choosing where %s start failed: %s", self.name, fmt(keys), exc)
                self._fatal = exc
        resetting = self.start is not None and self.start.reset
        if self._read_back is not None and self._fatal is None and not resetting:
            starts = self._pass_written(consumer, keys, dict(starts or {}))
        if starts:
            for p in partitions:
                if (p.topic, p.partition) in starts:
                    p.offset = starts[(p.topic, p.partition)]
        # Assigning explicitly (the client would otherwise do it) carries the offsets.
        if self._cooperative:
            consumer.incremental_assign(partitions)
        else:
            consumer.assign(partitions)
        self._assigned = self._assigned | frozenset(keys)
        if self._want_paused:  # flow control holds: new partitions start paused
            consumer.pause(partitions)
            self._paused |= set(keys)
        self._group_metadata = consumer.consumer_group_metadata()

    def _start_positions(
        self, consumer: Any, keys: list[PartitionKey], engine: Mapping[PartitionKey, int]
    ) -> dict[PartitionKey, int]:
        """The engine's positions, and the start's for partitions it chooses (moving
        committed offsets under ``reset``: committed here, before any record is read)."""
        start = self.start
        assert start is not None
        decisions = plan(
            consumer,
            keys,
            start,
            engine=engine,
            reset_before=self._reset_done,
            settings=self.settings,
        )
        moved = {d.key: d.to for d in decisions if d.how == "reset" and d.to is not None}
        if moved:
            self._commit(topic_partitions(moved))
            self._reset_done |= set(moved)
        log.warning("%s", summary(self.name, start, decisions))
        out = dict(engine)
        for d in decisions:
            if d.how in ("new", "reset") and d.to is not None:
                out[d.key] = d.to
        return out

    def _pass_written(
        self, consumer: Any, keys: list[PartitionKey], starts: dict[PartitionKey, int]
    ) -> dict[PartitionKey, int]:
        """Read back what was written past the committed offsets of ``keys`` (those the
        engine does not place itself); start each partition past the written run at its
        committed offset (committed here), and pass over the other written records when
        read. A failure to read back only means writing them again."""
        what = self._read_back
        assert what is not None
        mine = [k for k in keys if k not in starts]
        if not mine:  # an incremental assignment may bring nothing
            return starts
        try:
            found = consumer.committed(topic_partitions(dict.fromkeys(mine, 0)), timeout=10)
            committed = {(tp.topic, tp.partition): tp.offset for tp in found if tp.offset >= 0}
            written = read_back(self.settings, what, committed)
        except Exception as exc:
            log.warning(
                "kafka %s: reading back outputs for %s failed (%s): what a crashed worker "
                "wrote and did not commit is written again",
                self.name,
                fmt(mine),
                exc,
            )
            return starts
        moved: dict[PartitionKey, int] = {}
        notes = []
        for key, offsets in sorted(written.items()):
            first = committed[key]
            start, rest = split(first, offsets)
            if start > first:
                moved[key] = start
            if rest:
                self._written[key] = (rest, max(rest))
            notes.append(
                f"{key[0]}[{key[1]}] committed {first}: {len(offsets)} already written "
                f"(starts at {start}, {len(rest)} more passed over when read)"
            )
        if moved:
            starts.update(moved)
            try:
                self._commit(topic_partitions(moved))
            except Exception as exc:  # they start there all the same; a later commit covers it
                log.warning("kafka %s: committing %s failed: %s", self.name, moved, exc)
        if written and self._listener is not None and self._loop is not None:
            count = sum(len(offsets) for offsets in written.values())
            self._loop.call_soon_threadsafe(self._listener.records_read_back, count)
        if notes:
            log.warning(
                "kafka %s: outputs read back from %s: %s",
                self.name,
                ", ".join(what.topics),
                "; ".join(notes),
            )
        else:  # the usual case after a clean stop: said, so that a restart shows it looked
            log.info(
                "kafka %s: outputs read back from %s: %s",
                self.name,
                ", ".join(what.topics),
                f"none past the committed offsets of {fmt(sorted(committed))}"
                if committed
                else f"nothing committed yet for {fmt(sorted(mine))}",
            )
        return starts

    def _unwritten(self, messages: list[Any]) -> list[Any]:
        """``messages`` less those whose outputs were read back as written."""
        written = self._written
        out = []
        for m in messages:
            key = (m.topic(), m.partition())
            entry = written.get(key)
            if entry is None or m.error() is not None:
                out.append(m)
                continue
            offset = m.offset()
            offsets, last = entry
            if offset in offsets:
                if offset == last:
                    del written[key]
                continue
            if offset > last:
                del written[key]
            out.append(m)
        return out

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        keys = [(p.topic, p.partition) for p in partitions]
        log.info("kafka %s: revoking %s", self.name, fmt(keys))
        if self._listener is not None and self._fatal is None:
            try:
                positions = self._call_listener(self._listener.partitions_revoked(keys))
                if positions:
                    self._commit(topic_partitions(positions))
            except CommitRefused as exc:
                # The group moved on before this commit arrived (with an eager assignment
                # strategy the generation may already have changed): not committed, and
                # the next owner reads these records again; nothing is lost, so this
                # worker goes on with the partitions it keeps.
                log.warning("kafka %s: revoking %s: %s", self.name, fmt(keys), exc)
            except Exception as exc:
                # Not committed: the next owner reads these records again.
                log.error("kafka %s: revocation of %s failed: %s", self.name, fmt(keys), exc)
                self._fatal = exc
        if self._cooperative:
            consumer.incremental_unassign(partitions)
        else:
            consumer.unassign()
        self._forget(keys)
        self._group_metadata = consumer.consumer_group_metadata()

    def _on_commit(self, err: Any, partitions: list[Any]) -> None:
        confirmed, failed = self._soon.done(answers(err, partitions))
        if confirmed or failed:
            self._tell_committed(confirmed, failed)

    def _forget(self, keys: list[PartitionKey]) -> None:
        self._soon.forget(keys)
        self._left.update(keys)
        self._assigned = self._assigned - frozenset(keys)
        self._held = self._held - frozenset(keys)
        for key in keys:
            self._written.pop(key, None)
            self._paused.discard(key)
            self._last_read.pop(key, None)
            self._next.pop(key, None)

    def _on_lost(self, consumer: Any, partitions: list[Any]) -> None:
        keys = [(p.topic, p.partition) for p in partitions]
        self._fatal = KafkaFatalError(
            f"kafka {self.name}: partitions {fmt(keys)} were lost (the group moved on, e.g. "
            "after a session timeout); stopping without committing them. A restart resumes "
            "from the last commit."
        )
        if self._cooperative:
            consumer.incremental_unassign(partitions)
        else:
            consumer.unassign()
        self._forget(keys)

    def _on_error(self, err: Any) -> None:
        if err.fatal():
            self._fatal = KafkaFatalError(f"kafka consumer: {err.str()}")
        else:
            log.warning("kafka consumer: %s", err.str())


#: How long a close waits for a lag query under way: each of its calls waits up to 1 s.
LAG_QUERY_WAIT = 10.0


def _idle() -> None:
    """Nothing: run in the poll thread, it returns once the poll under way has ended."""


def _in_daemon_thread(fn: Callable[[], Any], name: str) -> concurrent.futures.Future[Any]:
    """Run ``fn`` in a daemon thread of its own: a call that never returns neither holds
    up the caller nor the interpreter's exit (an executor's threads are joined at exit)."""
    future: concurrent.futures.Future[Any] = concurrent.futures.Future()

    def run() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(fn())
        except BaseException as exc:
            future.set_exception(exc)

    threading.Thread(target=run, name=name, daemon=True).start()
    return future


def _batches(messages: list[Any], now: float) -> Iterator[RecordBatch]:
    """A poll's messages as :class:`RecordBatch` es of raw bytes: one per run of one
    partition's consecutive offsets (a poll's messages come in runs of one partition; a
    transaction's marker or a compacted topic leaves gaps). ``now``: the time of a message
    without a timestamp."""
    topic: str | None = None
    partition = -1
    start = stop = 0
    keys: list[Any] = []
    times: list[float] = []
    raws: list[Any] = []
    for m in messages:
        err = m.error()
        if err is not None:
            _message_error(m, err)
            continue
        offset = m.offset()
        if offset != stop or m.partition() != partition or m.topic() != topic:
            if raws:
                yield _raw_batch(topic or "", partition, range(start, stop), keys, times, raws)
                keys, times, raws = [], [], []
            topic, partition, start = m.topic(), m.partition(), offset
        stop = offset + 1
        kind, ts = m.timestamp()
        key = m.key()
        keys.append(key.decode("utf-8", "replace") if key is not None else None)
        times.append(ts / 1000.0 if kind != TIMESTAMP_NOT_AVAILABLE else now)
        raws.append(m.value())
    if raws:
        yield _raw_batch(topic or "", partition, range(start, stop), keys, times, raws)


def _raw_batch(
    topic: str, partition: int, offsets: range, keys: list[Any], times: list[float], raws: list[Any]
) -> RecordBatch:
    return RecordBatch(
        topic=topic,
        partition=partition,
        offsets=offsets,
        keys=keys,
        event_times=np.array(times),
        columns={},
        values_from=_undecoded,
        raws=raws,
    )


def _undecoded(batch: RecordBatch) -> list[Any]:
    """Records as read, before decoding: no values yet."""
    return [None] * len(batch)


def _message_error(m: Any, err: Any) -> None:
    """A consumed message that is an error: the end of a partition is none; a fatal
    error ends the run; others are logged."""
    if err.code() == KafkaError._PARTITION_EOF:
        return
    if err.fatal():
        raise KafkaFatalError(f"kafka consumer: {err.str()}")
    log.warning("kafka %s[%s]: %s", m.topic(), m.partition(), err.str())


def _lasts(chunk: list[Record]) -> list[Record]:
    """The last record of each partition in ``chunk`` (a poll's records come in runs of
    one partition, each in offset order).

    >>> from headrace.record import source_record
    >>> rs = [source_record(key=None, value=None, event_time=float(o), topic="t",
    ...                     partition=p, offset=o) for p, o in [(0, 1), (0, 2), (1, 7), (0, 3)]]
    >>> [(r.partition, r.offset) for r in _lasts(rs)]
    [(0, 3), (1, 7)]
    """
    last: dict[tuple[str, int], Record] = {}
    previous = chunk[0]
    for r in chunk:
        if r.partition != previous.partition or r.topic != previous.topic:
            last[(previous.topic, previous.partition)] = previous
        previous = r
    last[(previous.topic, previous.partition)] = previous
    return list(last.values())


def _static_member(instance_id: str | None, settings: Mapping[str, Any]) -> Settings:
    """The setting that makes the source a static member, checked; none without an id."""
    if instance_id is None:
        return {}
    problem = instance_id_problem(instance_id)
    if problem is not None:
        raise ValueError(f"instance_id {instance_id!r} {problem}; {INSTANCE_ID_RULE}")
    other = settings.get("group.instance.id")
    if other is not None and str(other) != instance_id:
        raise ValueError(
            f"instance_id {instance_id!r} differs from settings['group.instance.id'] "
            f"{str(other)!r}; give the id in one place"
        )
    return {"group.instance.id": instance_id}
