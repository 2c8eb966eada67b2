"""Writing to Kafka: the worker's one producer (which, in exactly-once mode, owns the
transaction that commits outputs with consumed offsets) and the sinks that share it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import msgspec
from confluent_kafka import KafkaError, KafkaException, Producer

from headrace.batch import encode_outputs
from headrace.connectors.base import AcknowledgingSink, PartitionKey, SinkContext
from headrace.connectors.kafka.common import KafkaFatalError, Settings, log, topic_partitions
from headrace.errors import ErrorType, Stage, failure
from headrace.record import FailedRecord, Record, ScoredBatch

_PRODUCER_DEFAULTS: Settings = {
    "enable.idempotence": True,
    "acks": "all",
    "linger.ms": 5,
    # Java clients' partitioner: the same key lands on the same partition whoever produces.
    "partitioner": "murmur2_random",
}


Waiter = Callable[[BaseException | None], None]

#: How long the producer's thread waits for a write's delivery reports before it hands
#: back to the event loop with none complete (a closing producer ends the wait sooner).
RECEIPT_WAIT = 0.05


class _Receipt:
    """The delivery reports of one write's messages. Reports are appended by librdkafka's
    callbacks in whichever thread serves them (list.append is atomic); only the producer's
    poller reads them."""

    __slots__ = ("expected", "failures", "reports", "waiters")

    def __init__(self, failures: list[str]) -> None:
        self.expected = -1  # known once the write has queued all its messages; -2: settled
        self.reports: list[bool] = []
        self.failures = failures  # the producer's
        self.waiters: list[_Countdown] = []

    def __call__(self, err: Any, msg: Any) -> None:
        if err is not None:
            self.failures.append(f"{msg.topic()}: {err.str()}")
        self.reports.append(err is None)

    def complete(self) -> bool:
        return 0 <= self.expected <= len(self.reports)


class _Countdown:
    """Calls back once ``left`` receipts are complete, or at the first that failed."""

    __slots__ = ("callback", "left")

    def __init__(self, left: int, callback: Waiter) -> None:
        self.left = left
        self.callback: Waiter | None = callback

    def one(self, error: BaseException | None) -> None:
        callback = self.callback
        if callback is None:
            return
        self.left -= 1
        if error is not None or self.left == 0:
            self.callback = None
            callback(error)


class KafkaProducer:
    """One producer per worker, shared by every Kafka sink (and, in exactly-once mode,
    owning the transaction). Never closed before the pipeline ends."""

    def __init__(self, settings: Mapping[str, Any], *, transactional_id: str | None = None):
        self.settings: Settings = {**_PRODUCER_DEFAULTS, **settings}
        if transactional_id is not None:
            self.settings["transactional.id"] = transactional_id
        self.transactional = transactional_id is not None
        self.producer: Any = None
        # Failed deliveries, kept for the life of the producer: a message that was not
        # written makes every later flush fail, so no commit path (periodic, rebalance,
        # final) can move a position past it. Clearing them once reported let the final
        # commit's flush succeed and commit outputs that were never written. Appended to
        # by delivery callbacks in any thread (list.append is atomic).
        self.failures: list[str] = []
        self._users = 0
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="headrace-kafka-produce")
        # Without transactions, each write's messages are followed to their delivery
        # reports (a receipt per write), so that its records are done once acknowledged,
        # not at a flush that waits for every later write too.
        self._receipts: list[_Receipt] = []  # replaced whole on the event loop
        self._work = asyncio.Event()
        self._poller: asyncio.Task[None] | None = None

    async def open(self) -> None:
        self._users += 1
        if self.producer is not None:
            return
        config = {**self.settings, "error_cb": self._on_error, "logger": log}
        self.producer = Producer(config)
        if self.transactional:
            await self.run(self.producer.init_transactions, 30)
            self.producer.begin_transaction()
        else:
            self._poller = asyncio.create_task(self._serve(), name="headrace-kafka-acks")

    async def run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    @property
    def failed(self) -> int:
        """How many deliveries failed (or fatal errors happened)."""
        return len(self.failures)

    def on_delivery(self, err: Any, msg: Any) -> None:
        if err is not None:
            self.failures.append(f"{msg.topic()}: {err.str()}")

    def receipt(self) -> Callable[[Any, Any], None]:
        """The delivery callback for one write's messages: pass it to :meth:`produce`,
        then :meth:`sealed` with how many were queued."""
        if self.transactional:
            return self.on_delivery  # the transaction's commit waits for them all
        receipt = _Receipt(self.failures)
        self._receipts = [*self._receipts, receipt]
        return receipt

    def sealed(self, receipt: Callable[[Any, Any], None], queued: int) -> None:
        if isinstance(receipt, _Receipt):
            receipt.expected = queued
            self._work.set()

    def produce(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None,
        headers: Any = None,
        partition: int | None = None,
        on_delivery: Callable[[Any, Any], None] | None = None,
    ) -> None:
        producer = self.producer
        # librdkafka's "no partition given" (let the partitioner choose) is -1.
        where = -1 if partition is None else partition
        while True:
            try:
                producer.produce(
                    topic,
                    value,
                    key,
                    partition=where,
                    headers=headers,
                    on_delivery=on_delivery or self.on_delivery,
                )
                return
            except BufferError:
                # The local queue is full: serve delivery reports until there is room.
                producer.poll(0.05)

    # -- acknowledgements ----------------------------------------------------------------

    def when_acknowledged(self, callback: Waiter) -> None:
        """Call ``callback`` once every write so far is acknowledged (``None``), or with
        the error once one failed."""
        loop = asyncio.get_running_loop()
        if self.failed:
            loop.call_soon(callback, self._error())
            return
        pending = [r for r in self._receipts if r.expected != -2]
        if not pending:
            loop.call_soon(callback, None)
            return
        countdown = _Countdown(len(pending), callback)
        for r in pending:
            r.waiters.append(countdown)

    async def _serve(self) -> None:
        """Serve delivery reports in the producer's thread while writes await them, and
        settle the receipts that completed, here on the event loop."""
        while self.producer is not None:
            if not self._receipts:
                self._work.clear()
                await self._work.wait()
                continue
            done = await self.run(self._poll_receipts)
            if done:
                self._settle(done)

    def _poll_receipts(self) -> list[_Receipt]:
        """Serve delivery reports until a write's are all in, for up to ``RECEIPT_WAIT``:
        in the producer's thread, so that the event loop hears once per completed write,
        not once per 5 ms poll (at 5,000 records/s that was about 200 hand-overs a second,
        each waking the event loop: bench/results/paced_latency-2026-12-07.json)."""
        deadline = time.monotonic() + RECEIPT_WAIT
        while True:
            producer = self.producer
            if producer is None:
                return []
            producer.poll(0.005)
            done = [r for r in self._receipts if r.complete()]
            if done or not self._receipts or time.monotonic() >= deadline:
                return done

    def _settle(self, done: list[_Receipt]) -> None:
        finished = set(map(id, done))
        self._receipts = [r for r in self._receipts if id(r) not in finished]
        error = self._error() if self.failed else None
        for r in done:
            r.expected = -2
            for waiter in r.waiters:
                waiter.one(error)

    def _error(self) -> KafkaFatalError:
        return KafkaFatalError(
            f"{self.failed} Kafka deliveries failed, the first: {self.failures[0]}; their "
            "input positions were not committed: a restart reads them again"
        )

    async def flush(self) -> None:
        """Wait until every message produced so far is acknowledged; raise if any ever
        failed (then every flush raises: what was not written is never committed)."""
        producer = self.producer
        if producer is not None:
            while await self.run(producer.flush, 1.0):
                pass
        self.check()

    def check(self) -> None:
        """Raise if a delivery of this producer has failed."""
        if self.failed:
            raise self._error()

    async def commit_transaction(self, positions: Mapping[PartitionKey, int], source: Any) -> None:
        """Commit outputs and consumed offsets atomically, then open the next transaction."""
        producer = self.producer
        await self.flush()
        try:
            if positions:
                await self.run(
                    producer.send_offsets_to_transaction,
                    topic_partitions(positions),
                    source.group_metadata(),
                    30,
                )
            await self.run(producer.commit_transaction, 30)
        except KafkaException as exc:
            err = exc.args[0]
            if err.txn_requires_abort():
                await self.run(producer.abort_transaction, 30)
                raise KafkaFatalError(
                    f"the transaction was aborted ({err.str()}); its records were not "
                    "committed and are read again after a restart"
                ) from exc
            raise KafkaFatalError(f"kafka transaction: {err.str()}") from exc
        producer.begin_transaction()

    async def close(self) -> None:
        self._users -= 1
        if self._users > 0 or self.producer is None:
            return
        producer, self.producer = self.producer, None
        self._work.set()  # the poller sees the producer gone and ends
        if self._poller is not None:
            await self._poller
        if self.transactional:
            # Whatever was not committed is aborted: its input was not committed either.
            await self.run(producer.abort_transaction, 30)
        else:
            await self.run(producer.flush, 30)
        self._thread.shutdown(wait=True)

    def _on_error(self, err: Any) -> None:
        if err.fatal():
            self.failures.append(f"fatal: {err.str()}")
        log.warning("kafka producer: %s", err.str())


class KafkaSink(AcknowledgingSink):
    """Produces each output as JSON to ``topic``, keyed by the record's key, with the model
    version and source position also in headers. ``write`` queues; the broker's
    acknowledgements say when it is durable (:meth:`when_acknowledged`), and only then
    are its records done; ``flush`` waits for all of them."""

    # With inputs as read, a batch of columns is written without its records' values.
    reads_values = False

    def __init__(self, topic: str, *, producer: KafkaProducer, name: str = "kafka") -> None:
        self.topic = topic
        self.producer = producer
        self.name = name
        self._encode = msgspec.json.Encoder().encode
        self._raw_inputs = False
        self._header: tuple[str, bytes] | None = None

    @property
    def read_back_topic(self) -> tuple[str, str] | None:  # type: ignore[override]
        # In a transaction what a crash wrote is aborted: nothing to read back.
        if self.producer.transactional:
            return None
        return str(self.producer.settings.get("bootstrap.servers", "")), self.topic

    def bind(self, context: SinkContext) -> None:
        # Inputs as read: their bytes go into the output as they came (0.75 us per record
        # less than encoding the decoded value again, bench/results/...).
        self._raw_inputs = context.inputs_as_read
        self._header = context.output_header

    async def open(self) -> None:
        await self.producer.open()

    async def write(self, batch: ScoredBatch) -> list[FailedRecord]:
        """Queue every output; those the producer refuses for good when queued (larger
        than its ``message.max.bytes``) are returned, to be dead-lettered."""
        encode, produce, topic = self._encode, self.producer.produce, self.topic
        headers = [("headrace-model", f"{batch.model.name}@{batch.model.version}".encode())]
        if self._header is not None:
            headers.append(self._header)
        refused: list[FailedRecord] = []
        receipt = self.producer.receipt()
        records = batch.records
        # Straight from the columns where it can: no record is built.
        keys, values = encode_outputs(batch, encode, raw_inputs=self._raw_inputs)
        for i, (value, key) in enumerate(zip(values, keys, strict=True)):
            try:
                produce(
                    topic, value, None if key is None else str(key).encode(), headers, None, receipt
                )
            except KafkaException as exc:
                refused.append(self._refused(records[i], len(value), exc, batch))
        self.producer.sealed(receipt, len(batch) - len(refused))
        self.producer.producer.poll(0)
        return refused

    def _refused(self, r: Record, size: int, exc: Any, batch: ScoredBatch) -> FailedRecord:
        err = exc.args[0]
        if err.code() != KafkaError.MSG_SIZE_TOO_LARGE:
            raise exc
        limit = self.producer.settings.get("message.max.bytes", 1_000_000)
        return failure(
            r,
            Stage.OUTPUT,
            f"sink {self.name!r}: the output for topic {self.topic!r} is {size} bytes, over "
            f"the producer's message.max.bytes ({limit}): {err.str()}",
            ErrorType.OUTPUT_TOO_LARGE,
            model=batch.model,
        )

    async def write_failures(self, failures: Sequence[FailedRecord]) -> None:
        """Dead letters keep the original bytes, so they can be replayed; the error and
        the source position travel in headers."""
        produce, topic = self.producer.produce, self.topic
        receipt = self.producer.receipt()
        for f in failures:
            r = f.record
            raw = r.raw if r.raw is not None else self._encode(r.value)
            headers = [
                ("headrace-stage", f.stage.encode()),
                ("headrace-error-type", f.error_type.encode()),
                ("headrace-error", f.error.encode("utf-8", "replace")),
                ("headrace-source-topic", r.topic.encode()),
                ("headrace-source-partition", str(r.partition).encode()),
                ("headrace-source-offset", str(r.offset).encode()),
                ("headrace-attempts", str(f.attempts).encode()),
            ]
            if f.model is not None:
                headers.append(("headrace-model", f"{f.model.name}@{f.model.version}".encode()))
            key = r.key
            produce(topic, raw, None if key is None else str(key).encode(), headers, None, receipt)
        self.producer.sealed(receipt, len(failures))
        self.producer.producer.poll(0)

    def when_acknowledged(self, callback: Callable[[BaseException | None], None]) -> None:
        self.producer.when_acknowledged(callback)

    def check(self) -> None:
        self.producer.check()

    async def flush(self) -> None:
        await self.producer.flush()

    async def close(self) -> None:
        await self.producer.close()
