"""MQTT (3.1.1 and 5) on paho-mqtt: a persistent session, QoS 1, acknowledged after the fact.

A message is acknowledged (PUBACK) only when the engine commits its position, that is when it
and every message that arrived before it reached a terminal state (written to every sink, or
dead-lettered). Until then the broker keeps it in the client's session and sends it again
when the client reconnects: a crash redelivers instead of losing. The price is that the
broker sends no more than its in-flight window of unacknowledged messages (MQTT 5: the
client's Receive Maximum, here ``max_inflight``; MQTT 3.1.1: the broker's own limit,
mosquitto's ``max_inflight_messages``, 20 by default), so throughput is about that window
divided by the commit interval; past it the broker queues, and past its queue limit
(mosquitto: ``max_queued_messages``) it drops. ``docs/mqtt.md`` says what MQTT can and
cannot guarantee, with measurements.

MQTT has no offsets. Records get a position the engine can track: topic ``mqtt:<client_id>``,
partition 0, and as offset an arrival sequence that starts, at every :meth:`MqttSource.open`,
from the wall clock in microseconds. So positions increase within a run (across reconnects
too, as the offset tracker requires) and differ from every earlier run's, so sinks that
upsert by position never overwrite a previous run's output with a different message.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

from headrace.connectors.base import PartitionKey, Source
from headrace.record import Record

if TYPE_CHECKING:
    import paho.mqtt.client as paho

log = logging.getLogger("headrace.mqtt")
paho_log = logging.getLogger("headrace.mqtt.paho")


class _QuietCleanStop(logging.Filter):
    """paho's network thread logs an ERROR ("Client is not connected") as it ends after a
    clean DISCONNECT; lost connections are reported by the source itself. Demote it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and str(record.msg).startswith(
            "Client is not connected"
        ):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return paho_log.isEnabledFor(logging.DEBUG)
        return True


paho_log.addFilter(_QuietCleanStop())

Protocol = Literal[5, "3.1.1"]

# How long open() waits for the broker to accept the connection and the subscriptions.
CONNECT_TIMEOUT_S = 30.0
# How long close() waits for the broker to confirm it read the last acknowledgements.
CLOSE_BARRIER_TIMEOUT_S = 5.0
# Largest Receive Maximum MQTT 5 can express.
MAX_RECEIVE_MAXIMUM = 65_535
# Largest Session Expiry Interval; the spec reads it as "never expires".
MAX_SESSION_EXPIRY_S = 0xFFFF_FFFF


class MqttError(RuntimeError):
    """The broker refused the connection or a subscription, or granted less than asked."""


def topic_filter_problem(topic_filter: str) -> str | None:
    """What makes ``topic_filter`` invalid (MQTT 5, section 4.7), or ``None``.

    Checked before connecting: paho raises on an invalid filter inside its network thread,
    where the error would otherwise stop the source without a word.

    >>> topic_filter_problem("plant/+/sensors/#") is None
    True
    >>> topic_filter_problem("$share/scorers/plant/#") is None
    True
    >>> topic_filter_problem("a/#/b")
    "'#' must be the last level, alone"
    """
    if not topic_filter:
        return "a topic filter cannot be empty"
    if len(topic_filter.encode("utf-8", "surrogatepass")) > 65_535:
        return "a topic filter is at most 65535 bytes"
    if "\0" in topic_filter:
        return "a topic filter cannot contain NUL"
    levels = topic_filter.split("/")
    if levels[0] == "$share":
        if len(levels) < 3 or not levels[1] or "+" in levels[1] or "#" in levels[1]:
            return "a shared subscription is $share/<group>/<filter>, the group without + or #"
        levels = levels[2:]
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return "'#' must be the last level, alone"
        if "+" in level and level != "+":
            return "'+' must be a level alone"
    return None


_Callback = TypeVar("_Callback", bound=Callable[..., None])


def _guarded(callback: _Callback) -> _Callback:
    """Turn an exception in a paho callback into a failure of the source: left alone, it
    would end paho's network thread, and the source would wait forever."""

    @functools.wraps(callback)
    def guarded(self: MqttSource, *args: Any) -> None:
        try:
            callback(self, *args)
        except Exception as exc:
            log.exception("mqtt source %s: %s failed", self.name, callback.__name__)
            self._fail(exc)

    return cast(_Callback, guarded)


class MqttSource(Source):
    """Subscribes to ``topics`` (filters, ``+``/``#`` and ``$share/group/...`` allowed) in a
    persistent session named by ``client_id``, and acknowledges each QoS 1 message only once
    the engine commits a position past it.

    ``client_id`` must be stable across restarts: it names the session in which the broker
    keeps unacknowledged and queued messages. Two live workers with one ``client_id`` take
    the session from each other; use a shared subscription (``$share/group/topic``) with
    one ``client_id`` per worker to spread a topic over workers.

    Records carry the raw payload; the key is the message's MQTT topic (unless the
    decoder's ``key_field`` sets one), the event time its arrival time (unless the
    decoder's ``time_field`` sets one). Headers: ``mqtt-topic``; ``mqtt-dup`` and
    ``mqtt-retain`` (``b"1"``) when the broker set those flags (a ``dup`` message may have
    been processed before); and, with MQTT 5, the message's user properties.

    ``qos`` 0 trades the guarantee for speed: nothing is acknowledged and a message that
    arrives while ``max_inflight`` messages wait to be read is dropped (and counted in
    :attr:`dropped`), since QoS 0 promises at most once anyway. QoS 2 is refused: paho
    confirms a QoS 2 message (PUBREC) on receipt and holds it only in memory, so a crash
    before it is processed loses it; the broker resends only the release (PUBREL). QoS 1
    is what gives at-least-once here.
    """

    decoded = False

    def __init__(
        self,
        topics: Sequence[str],
        *,
        client_id: str,
        host: str = "127.0.0.1",
        port: int = 1883,
        qos: int = 1,
        protocol: Protocol = 5,
        session_expiry_s: int = 86_400,
        max_inflight: int = 1000,
        keepalive_s: int = 30,
        username: str | None = None,
        password: str | None = None,
        max_records: int = 500,
        name: str = "mqtt",
    ) -> None:
        if not topics:
            raise ValueError("an MQTT source needs at least one topic filter")
        if not client_id:
            raise ValueError(
                "an MQTT source needs a client_id: it names the persistent session that "
                "keeps unacknowledged messages across restarts"
            )
        if qos not in (0, 1):
            raise ValueError(
                f"qos {qos} is not supported: use 1 for at-least-once (QoS 2 loses messages "
                "on a crash with this client, which confirms them on receipt), or 0"
            )
        if protocol not in (5, "3.1.1"):
            raise ValueError(f"protocol must be 5 or '3.1.1', not {protocol!r}")
        if not 1 <= max_inflight <= MAX_RECEIVE_MAXIMUM:
            raise ValueError(f"max_inflight must be within 1..{MAX_RECEIVE_MAXIMUM}")
        if not 0 <= session_expiry_s <= MAX_SESSION_EXPIRY_S:
            raise ValueError(f"session_expiry_s must be within 0..{MAX_SESSION_EXPIRY_S}")
        for t in topics:
            problem = topic_filter_problem(t)
            if problem is not None:
                raise ValueError(f"topic filter {t!r}: {problem}")
        self.topics = list(topics)
        self.client_id = client_id
        self.host = host
        self.port = port
        self.qos = qos
        self.protocol: Protocol = protocol
        self.session_expiry_s = session_expiry_s
        self.max_inflight = max_inflight
        self.keepalive_s = keepalive_s
        self.username = username
        self._password = password  # never logged, never in a repr
        self.max_records = max_records
        self.name = name
        self.topic = f"mqtt:{client_id}"
        self.dropped = 0  # QoS 0 messages dropped because the buffer was full
        self.client: paho.Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Shared with paho's network thread; every field below is guarded by _lock.
        self._lock = threading.Lock()
        # Arrived, not yet handed to the engine: (record, connection epoch, qos).
        self._buffer: deque[tuple[Record, int, int]] = deque()
        # Handed over or not, not yet acknowledged, in arrival order: (offset, mid, qos).
        # Only messages of the current connection: packet ids are per connection, so an
        # entry from before a reconnect is dropped, never acknowledged.
        self._pending: deque[tuple[int, int, int]] = deque()
        self._epoch = 0
        self._next_offset = 0
        self._notify = False  # the reader waits: the next arrival must wake it
        self._connected_once = False
        self._connected = False
        self._closing = False
        self._fatal: BaseException | None = None
        self._wakeup = asyncio.Event()
        self._ready: asyncio.Future[None] | None = None
        self._sub_mid: int | None = None
        self._barrier: asyncio.Future[None] | None = None
        self._barrier_mid: int | None = None

    @property
    def connected(self) -> bool:
        """Whether the broker accepted the current connection (for health checks)."""
        return self._connected

    # -- lifecycle -----------------------------------------------------------------------

    async def open(self) -> None:
        """Connect, subscribe, and wait until the broker granted every subscription."""
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        loop = self._loop = asyncio.get_running_loop()
        self._ready = loop.create_future()
        self._next_offset = time.time_ns() // 1000
        v5 = self.protocol == 5
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
            clean_session=None if v5 else False,
            manual_ack=True,
        )
        client.enable_logger(paho_log)
        client.reconnect_delay_set(1, 30)
        if self.username is not None:
            client.username_pw_set(self.username, self._password)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_pre_connect = self._on_pre_connect
        client.on_subscribe = self._on_subscribe
        client.on_unsubscribe = self._on_unsubscribe
        client.on_message = self._on_message
        self.client = client
        log.info(
            "mqtt source %s: %s:%s, client_id %s, MQTT %s, QoS %s, filters %s",
            self.name,
            self.host,
            self.port,
            self.client_id,
            self.protocol,
            self.qos,
            self.topics,
        )
        try:
            # The first connect is synchronous so that a refused or unreachable broker is
            # an error here, with the operating system's reason, rather than silent retries.
            await loop.run_in_executor(None, self._connect, client)
            client.loop_start()
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                await self._ready
        except BaseException as exc:
            await self._shutdown()
            if isinstance(exc, TimeoutError):
                raise MqttError(
                    f"mqtt {self.host}:{self.port}: no CONNACK/SUBACK within "
                    f"{CONNECT_TIMEOUT_S:.0f}s"
                ) from None
            raise
        if not v5:
            log.info(
                "mqtt source %s: MQTT 3.1.1 has no Receive Maximum, so the broker decides how "
                "many unacknowledged messages it sends (mosquitto: max_inflight_messages, "
                "default 20); max_inflight applies to MQTT 5 only",
                self.name,
            )

    def _connect(self, client: paho.Client) -> None:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        if self.protocol == 5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            # With MQTT 5 a session ends at disconnect unless it has an expiry interval.
            props.SessionExpiryInterval = self.session_expiry_s
            props.ReceiveMaximum = self.max_inflight
            client.connect(
                self.host, self.port, self.keepalive_s, clean_start=False, properties=props
            )
        else:
            client.connect(self.host, self.port, self.keepalive_s)

    async def chunks(self) -> AsyncIterator[list[Record]]:
        while True:
            if self._fatal is not None:
                raise self._fatal
            chunk = self._take()
            if chunk:
                yield chunk
            else:
                await self._wakeup.wait()

    def _take(self) -> list[Record]:
        """Up to ``max_records`` buffered records; when none, arm the wake-up.

        A QoS 1 message that arrived on a connection that has since ended is held back
        until the next CONNACK says whether the broker kept the session: if it did, the
        broker sends the message again and this copy is dropped (one duplicate fewer);
        if not, this copy is the only one left and is released."""
        out: list[Record] = []
        with self._lock:
            buffer, epoch, limit = self._buffer, self._epoch, self.max_records
            while buffer and len(out) < limit:
                record, arrived_in, qos = buffer[0]
                if qos and arrived_in != epoch:
                    break
                buffer.popleft()
                out.append(record)
            if not out:
                # Cleared under the lock, before _notify is set: a set() scheduled by the
                # next arrival (or CONNACK) always comes after this clear().
                self._wakeup.clear()
                self._notify = True
        return out

    async def commit(self, positions: Mapping[PartitionKey, int]) -> None:
        """Acknowledge, in arrival order (as MQTT requires), every message of the current
        connection below the committed position. The broker answers nothing to a PUBACK:
        if the process dies before it is written, the message comes again (a duplicate,
        never a loss)."""
        position = positions.get((self.topic, 0))
        client = self.client
        if position is None or client is None:
            return
        acks: list[tuple[int, int]] = []
        with self._lock:
            pending = self._pending
            while pending and pending[0][0] < position:
                _, mid, qos = pending.popleft()
                acks.append((mid, qos))
            # Sent under the lock: a disconnect (which drops the pending entries and
            # begins a new connection epoch) cannot slip between the check and the send,
            # so no acknowledgement of an old connection's packet id reaches a new one.
            for mid, qos in acks:
                self._send_ack(client, mid, qos)

    def _send_ack(self, client: paho.Client, mid: int, qos: int) -> None:
        """Queue one PUBACK on paho's network thread (a seam for tests)."""
        client.ack(mid, qos)

    async def close(self) -> None:
        """Disconnect cleanly; whatever was not committed stays unacknowledged in the
        session, and the broker sends it again to the next connection."""
        await self._shutdown()

    async def _shutdown(self) -> None:
        client, self.client = self.client, None
        if client is None:
            return
        with self._lock:
            self._closing = True
        if self._connected:
            await self._await_barrier(client)
        client.disconnect()
        await asyncio.get_running_loop().run_in_executor(None, client.loop_stop)
        with self._lock:
            self._buffer.clear()
            self._pending.clear()

    async def _await_barrier(self, client: paho.Client) -> None:
        """Make sure the broker has read every PUBACK sent so far before disconnecting.

        paho closes its socket right after writing DISCONNECT. If data from the broker is
        still unread at that moment (a new PUBLISH, say), the kernel answers with a reset,
        and the broker may throw away PUBACKs it had received but not yet read: measured
        against mosquitto, the messages they acknowledged then came again, as duplicates.
        A broker handles a connection's packets in order, so once it answers an
        UNSUBSCRIBE (of a filter nobody uses, which changes nothing) it has read every
        PUBACK sent before it."""
        self._barrier = asyncio.get_running_loop().create_future()
        # Under the lock: the UNSUBACK may be handled before unsubscribe() returns.
        with self._lock:
            result, mid = client.unsubscribe(f"headrace/close-barrier/{self.client_id}")
            self._barrier_mid = mid
        if result != 0 or mid is None:
            return
        try:
            async with asyncio.timeout(CLOSE_BARRIER_TIMEOUT_S):
                await self._barrier
        except TimeoutError:
            log.warning(
                "mqtt source %s: the broker did not confirm the last acknowledgements within "
                "%ss; the messages they acknowledged may come again",
                self.name,
                CLOSE_BARRIER_TIMEOUT_S,
            )

    # -- paho callbacks, on its network thread --------------------------------------------

    @_guarded
    def _on_pre_connect(self, client: paho.Client, userdata: Any) -> None:
        self._new_epoch()

    @_guarded
    def _on_disconnect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        self._connected = False
        self._new_epoch()
        if not self._closing:
            log.warning(
                "mqtt source %s: connection lost (%s); reconnecting. Unacknowledged messages "
                "come again from the broker (at-least-once)",
                self.name,
                reason,
            )

    def _new_epoch(self) -> None:
        """Packet ids belong to a connection: forget those of the one that ended."""
        with self._lock:
            self._epoch += 1
            self._pending.clear()

    @_guarded
    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if reason.is_failure:
            error = MqttError(f"mqtt {self.host}:{self.port} refused the connection: {reason}")
            if not self._connected_once:
                self._fail(error)
            else:
                log.error("mqtt source %s: %s; retrying", self.name, error)
            return
        session_present = bool(flags.session_present)
        with self._lock:
            epoch = self._epoch
            if session_present:
                # The broker resends every unacknowledged message of the session, those not
                # yet handed to the engine included: keep one copy, the resent one.
                self._buffer = deque(e for e in self._buffer if e[2] == 0 or e[1] == epoch)
            else:
                # Nothing will be resent: what is buffered is the only copy.
                self._buffer = deque((r, epoch, q) for r, _, q in self._buffer)
            wake = bool(self._buffer) and self._notify
            if wake:
                self._notify = False
        if wake:
            self._call_soon(self._wakeup.set)
        if session_present:
            if not self._connected_once:
                log.info("mqtt source %s: resumed session %s", self.name, self.client_id)
        elif self._connected_once:
            log.warning(
                "mqtt source %s: the broker no longer had session %s (expired, or the broker "
                "lost it): messages published while disconnected are lost",
                self.name,
                self.client_id,
            )
        else:
            log.info(
                "mqtt source %s: the broker had no session %s, a new one starts now (if this "
                "client_id ran before, its session expired and what was queued in it is gone)",
                self.name,
                self.client_id,
            )
        self._connected_once = self._connected = True
        self._subscribe(client)

    def _subscribe(self, client: paho.Client) -> None:
        """Subscribe on every connection: it is idempotent, and adds filters that were added
        to the configuration since the session began (removed ones stay subscribed until
        the session ends). MQTT 5 sends retained messages only for a new subscription."""
        topics: list[tuple[str, Any]]
        if self.protocol == 5:
            from paho.mqtt.subscribeoptions import SubscribeOptions

            topics = [
                (
                    t,
                    SubscribeOptions(
                        qos=self.qos, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB
                    ),
                )
                for t in self.topics
            ]
        else:
            topics = [(t, self.qos) for t in self.topics]
        result, mid = client.subscribe(topics)
        if result != 0:
            # Not connected after all (the connection dropped again): the next CONNACK
            # subscribes again.
            log.warning("mqtt source %s: subscribe not sent (%s)", self.name, result)
            return
        self._sub_mid = mid

    @_guarded
    def _on_subscribe(
        self, client: paho.Client, userdata: Any, mid: int, reasons: list[Any], properties: Any
    ) -> None:
        if mid != self._sub_mid:
            return
        for topic, reason in zip(self.topics, reasons, strict=False):
            if reason.is_failure:
                self._fail(MqttError(f"mqtt subscription to {topic!r} refused: {reason}"))
                return
            granted = int(reason.value)
            if granted < self.qos:
                self._fail(
                    MqttError(
                        f"mqtt subscription to {topic!r}: asked QoS {self.qos}, the broker "
                        f"granted only QoS {granted}, which does not keep at-least-once"
                    )
                )
                return
        self._call_soon(self._set_ready)

    @_guarded
    def _on_unsubscribe(
        self, client: paho.Client, userdata: Any, mid: int, reasons: list[Any], properties: Any
    ) -> None:
        with self._lock:
            barrier = self._barrier if mid == self._barrier_mid else None
        if barrier is not None:
            self._call_soon(_resolve, barrier)

    @_guarded
    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        now = time.time()
        topic_bytes = msg._topic  # the MQTTMessage.topic property raises on invalid UTF-8
        topic = topic_bytes.decode("utf-8", "replace")
        headers: list[tuple[str, bytes]] = [("mqtt-topic", topic_bytes)]
        if msg.dup:
            headers.append(("mqtt-dup", b"1"))
        if msg.retain:
            headers.append(("mqtt-retain", b"1"))
        props = getattr(msg, "properties", None)
        for key, value in getattr(props, "UserProperty", None) or ():
            headers.append((str(key), str(value).encode()))
        qos = msg.qos
        payload = msg.payload if isinstance(msg.payload, bytes) else bytes(msg.payload)
        with self._lock:
            if self._closing:
                return  # not acknowledged: the broker sends it again next time
            if qos == 0 and len(self._buffer) >= self.max_inflight:
                self.dropped += 1
                if self.dropped == 1 or self.dropped % 10_000 == 0:
                    log.warning(
                        "mqtt source %s: %s QoS 0 messages dropped so far: they arrive "
                        "faster than the pipeline reads (QoS 0 is at most once)",
                        self.name,
                        self.dropped,
                    )
                return
            offset = self._next_offset
            self._next_offset += 1
            record = Record(topic, None, now, self.topic, 0, offset, payload, headers)
            self._buffer.append((record, self._epoch, qos))
            if qos > 0:
                self._pending.append((offset, msg.mid, qos))
            wake, self._notify = self._notify, False
        if wake:
            self._call_soon(self._wakeup.set)

    # -- helpers -------------------------------------------------------------------------

    def _fail(self, error: BaseException) -> None:
        self._fatal = error
        self._call_soon(self._fail_on_loop, error)

    def _fail_on_loop(self, error: BaseException) -> None:
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(error)
        self._wakeup.set()

    def _set_ready(self) -> None:
        if self._ready is not None:
            _resolve(self._ready)

    def _call_soon(self, fn: Any, *args: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(fn, *args)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
