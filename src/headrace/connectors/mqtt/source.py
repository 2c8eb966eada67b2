"""The MQTT source: what the engine calls (open, read, commit, close) on the event loop;
what paho calls on its network thread is in :mod:`~headrace.connectors.mqtt.network`."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Literal

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from headrace.connectors.base import PartitionKey, Source
from headrace.connectors.mqtt.network import MqttError, PahoCallbacks, Protocol, log, paho_log
from headrace.connectors.mqtt_tls import (
    PLAIN_PORT,
    TLS_PORT,
    MqttTls,
    TlsSettingsError,
    tls_context,
    verification_failure,
    warn_insecure,
)
from headrace.connectors.mqtt_topics import (
    MAX_RECEIVE_MAXIMUM,
    MAX_SESSION_EXPIRY_S,
    topic_filter_problem,
)
from headrace.record import Record

# How long open() waits for the broker to accept the connection and the subscriptions.
CONNECT_TIMEOUT_S = 30.0
# How long close() waits for the broker to confirm it read the last acknowledgements.
CLOSE_BARRIER_TIMEOUT_S = 5.0


class MqttSource(PahoCallbacks, Source):
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

    ``tls`` (:class:`~headrace.connectors.mqtt_tls.MqttTls`) encrypts the connection and
    checks the broker's certificate (a client certificate too, if set); ``port`` then
    defaults to 8883 instead of 1883. ``transport="websockets"`` speaks MQTT inside a
    WebSocket at ``ws_path``, as brokers behind HTTP proxies and port 443 want.
    """

    # The broker sends at most ``max_inflight`` messages unacknowledged, and a message is
    # acknowledged when its position is committed: committing every second would cap a
    # broker that keeps to that window at max_inflight messages a second (docs/mqtt.md).
    # Measured, a backlog of 100,000 on mosquitto 2.0.11 (which keeps to the window
    # loosely), the light model, a JSON-lines sink: 15,056-16,272 records/s every 100 ms,
    # 15,166-16,024 as soon as anything finished, 13,654-14,177 every second
    # (bench/results/mqtt_throughput-2026-12-07.json). Not at once, though: every commit
    # flushes every sink (a database transaction, a webhook's POST), and a windowed
    # pipeline's holds reading until the batches in flight are written (in process, 500
    # keys in 10 s windows, chunks of 100: 37,700 records/s committing at once against
    # 71,800 every 100 ms and 67,900 every second). Every 100 ms: at most ten such
    # flushes and commit points a second.
    commit_interval = 0.1

    def __init__(
        self,
        topics: Sequence[str],
        *,
        client_id: str,
        host: str = "127.0.0.1",
        port: int | None = None,
        tls: MqttTls | None = None,
        transport: Literal["tcp", "websockets"] = "tcp",
        ws_path: str = "/mqtt",
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
        if transport not in ("tcp", "websockets"):
            raise ValueError(f"transport must be 'tcp' or 'websockets', not {transport!r}")
        if tls is not None and (problem := tls.problem()) is not None:
            raise ValueError(f"tls.{problem}")
        if port is None:
            port = TLS_PORT if tls is not None else PLAIN_PORT
        super().__init__(
            list(topics),
            client_id=client_id,
            host=host,
            port=port,
            qos=qos,
            protocol=protocol,
            max_inflight=max_inflight,
            name=name,
        )
        self.tls = tls
        self.transport: Literal["tcp", "websockets"] = transport
        self.ws_path = ws_path
        self.session_expiry_s = session_expiry_s
        self.keepalive_s = keepalive_s
        self._username = username  # never logged, never in a repr
        self._password = password
        self.max_records = max_records
        self.client: paho.Client | None = None

    @property
    def connected(self) -> bool:
        """Whether the broker accepted the current connection (for health checks)."""
        return self._connected

    # -- lifecycle -----------------------------------------------------------------------

    async def open(self) -> None:
        """Connect, subscribe, and wait until the broker granted every subscription."""
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
            transport=self.transport,
        )
        client.enable_logger(paho_log)
        client.reconnect_delay_set(1, 30)
        if self.transport == "websockets":
            client.ws_set_options(path=self.ws_path)
        if self.tls is not None:
            try:
                client.tls_set_context(tls_context(self.tls))
            except TlsSettingsError as exc:
                raise MqttError(f"mqtt source {self.name}: at tls.{exc}") from None
            if self.tls.insecure_skip_verify:
                warn_insecure(self.name, self.host, self.port)
        if self._username is not None:
            client.username_pw_set(self._username, self._password)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_pre_connect = self._on_pre_connect
        client.on_subscribe = self._on_subscribe
        client.on_unsubscribe = self._on_unsubscribe
        client.on_message = self._on_message
        client.on_log = self._on_log
        self.client = client
        log.info(
            "mqtt source %s: %s:%s (%s), client_id %s, MQTT %s, QoS %s, filters %s",
            self.name,
            self.host,
            self.port,
            self._describe_transport(),
            self.client_id,
            self.protocol,
            self.qos,
            self.topics,
        )
        try:
            # The first connect is synchronous so that a refused or unreachable broker is
            # an error here, with the operating system's reason, rather than silent retries.
            try:
                await loop.run_in_executor(None, self._connect, client)
            except ssl.SSLCertVerificationError as exc:
                ca_file = self.tls.ca_file if self.tls is not None else None
                message = verification_failure(exc, host=self.host, port=self.port, ca_file=ca_file)
                raise MqttError(message) from None
            except ssl.SSLError as exc:
                raise MqttError(
                    f"mqtt {self.host}:{self.port}: TLS handshake failed ({exc.reason or exc}); "
                    f"is {self.port} the broker's TLS port (source.port)?"
                ) from None
            except paho.WebsocketConnectionError as exc:
                raise MqttError(
                    f"mqtt {self.host}:{self.port}: the WebSocket handshake failed ({exc}); "
                    f"check source.ws_path ({self.ws_path}) and that the port serves "
                    "MQTT over WebSockets"
                ) from None
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

    def _describe_transport(self) -> str:
        scheme = ("wss" if self.tls else "ws") if self.transport == "websockets" else "tcp"
        where = f"{scheme} {self.ws_path}" if self.transport == "websockets" else scheme
        if self.tls is None:
            return where
        if self.tls.insecure_skip_verify:
            return f"{where}, TLS without verification"
        client_cert = ", client certificate" if self.tls.cert_file else ""
        return f"{where}, TLS{client_cert}"

    def _connect(self, client: paho.Client) -> None:
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
