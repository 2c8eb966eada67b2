"""MQTT over TLS and over WebSockets, against a Mosquitto this module starts for itself.

The broker (``mosquitto`` from the machine, on free loopback ports; the system's broker on
1883 is left alone) gets one listener per case, with certificates made by ``trustme``:

* ``plain``: TCP, for publishing and fences;
* ``tls``: the broker's certificate for 127.0.0.1 and localhost, signed by the test CA;
* ``mtls``: the same, and a client certificate is required (``require_certificate``);
* ``expired``: a certificate whose validity ended yesterday;
* ``mismatch``: a certificate for ``broker.example`` only.

This Mosquitto (2.0.11, Debian) is built without WebSockets (a ``protocol websockets``
listener fails to start), so WebSockets are tested through a small bridge: a real
WebSocket server (aiohttp, with TLS) that relays each connection's bytes to the ``plain``
listener. What is tested is the client side: paho's WebSocket transport, the path, TLS
under it, and the guarantees on top.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import pwd
import re
import shutil
import socket
import ssl
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cli_helpers import HEADRACE
from headrace import CallableModel
from headrace.build import KafkaParts, build_source
from headrace.config import ConfigError, MqttSourceConfig, parse_config
from headrace.connectors.mqtt import MqttError, MqttSource
from headrace.connectors.mqtt_tls import MqttTls
from headrace.runtime.decode import JsonDecoder
from headrace.runtime.engine import Engine, EngineSettings
from headrace.runtime.spec import PipelineSpec
from headrace.runtime.state import PipelineError
from helpers import MemorySink, wait_for
from mqtt_helpers import Reader, ids_of, publish

trustme = pytest.importorskip("trustme")
web = pytest.importorskip("aiohttp.web")

HOST = "127.0.0.1"
LISTENERS = ("plain", "tls", "mtls", "expired", "mismatch")


@dataclass
class Broker:
    ports: dict[str, int]
    ca_file: str
    wrong_ca_file: str
    client_cert: str
    client_key: str
    server: Any  # trustme.LeafCert, for the WebSocket bridge
    log: Path

    def publish(self, topic: str, ids: range | list[int]) -> None:
        publish(topic, ids, host=HOST, port=self.ports["plain"])


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind((HOST, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _listening(port: int) -> bool:
    try:
        socket.create_connection((HOST, port), timeout=1).close()
    except OSError:
        return False
    return True


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    binary = shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.path.exists(p)),
        None,
    )
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("mosquitto is not installed")
        pytest.skip("mosquitto is not installed")
    d = tmp_path_factory.mktemp("mqtt-tls")
    ca, wrong_ca = trustme.CA(), trustme.CA()
    now = datetime.datetime.now(datetime.UTC)
    certs = {
        "tls": ca.issue_cert(HOST, "localhost"),
        "expired": ca.issue_cert(
            HOST,
            "localhost",
            not_before=now - datetime.timedelta(days=30),
            not_after=now - datetime.timedelta(days=1),
        ),
        "mismatch": ca.issue_cert("broker.example"),
    }
    certs["mtls"] = certs["tls"]
    client = ca.issue_cert("headrace-test-client")
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    wrong_ca.cert_pem.write_to_path(str(d / "wrong-ca.pem"))
    client.cert_chain_pems[0].write_to_path(str(d / "client.pem"))
    client.private_key_pem.write_to_path(str(d / "client.key"))
    ports = dict(zip(LISTENERS, _free_ports(len(LISTENERS)), strict=True))
    # As root, mosquitto drops to its own user, which cannot read pytest's directories.
    user = pwd.getpwuid(os.geteuid()).pw_name
    lines = [f"user {user}", "allow_anonymous true", "persistence false"]
    for name, port in ports.items():
        lines.append(f"listener {port} {HOST}")
        if name == "plain":
            continue
        cert = certs[name]
        cert.cert_chain_pems[0].write_to_path(str(d / f"{name}.pem"))
        cert.private_key_pem.write_to_path(str(d / f"{name}.key"))
        lines += [f"cafile {d / 'ca.pem'}", f"certfile {d / name}.pem", f"keyfile {d / name}.key"]
        if name == "mtls":
            lines += ["require_certificate true"]
    conf = d / "mosquitto.conf"
    conf.write_text("\n".join(lines) + "\n")
    log = d / "mosquitto.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([binary, "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while not all(_listening(p) for p in ports.values()):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mosquitto did not start:\n{log.read_text()}")
            time.sleep(0.02)
        yield Broker(
            ports=ports,
            ca_file=str(d / "ca.pem"),
            wrong_ca_file=str(d / "wrong-ca.pem"),
            client_cert=str(d / "client.pem"),
            client_key=str(d / "client.key"),
            server=certs["tls"],
            log=log,
        )
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def names() -> tuple[str, str]:
    tag = uuid.uuid4().hex[:12]
    return f"headrace-test/{tag}", f"headrace-test-{tag}"


BASE: dict[str, Any] = {
    "model": {"type": "callable", "name": "m", "version": "1", "function": "mod:fn"},
    "sinks": [{"type": "stdout"}],
}


def mqtt_config(source: dict[str, Any], env: dict[str, str] | None = None) -> MqttSourceConfig:
    section = {"type": "mqtt", "topics": ["t"], "client_id": "c", **source}
    c = parse_config({**BASE, "source": section}, env=env or {}).source
    assert isinstance(c, MqttSourceConfig)
    return c


def engine_for(src: MqttSource, sink: MemorySink) -> Engine:
    return Engine(
        PipelineSpec(
            source=src,
            model=CallableModel(lambda xs: [x["id"] * 2 for x in xs], name="double"),
            sinks=[sink],
            decoder=JsonDecoder(),
            settings=EngineSettings(max_batch_size=64, max_wait=0.005, commit_interval=0.05),
        )
    )


# -- a good certificate: the same guarantees as over plain TCP -------------------------


async def test_a_client_certificate_connects_and_every_message_is_scored_once_and_acknowledged(
    broker: Broker,
) -> None:
    """From the configuration (CA, client certificate and key) to the broker's listener
    that requires a client certificate: every message scored once, every position
    committed, nothing left unacknowledged in the session."""
    topic, client_id = names()
    c = mqtt_config(
        {
            "port": broker.ports["mtls"],
            "topics": [topic],
            "client_id": client_id,
            "session_expiry_s": 300,
            "max_inflight": 100,
            "tls": {
                "ca_file": broker.ca_file,
                "cert_file": broker.client_cert,
                "key_file": broker.client_key,
            },
        }
    )
    src, decoder = build_source(
        c, KafkaParts(parse_config({**BASE, "source": {"type": "generator"}}))
    )
    assert isinstance(src, MqttSource) and decoder is not None
    n = 300
    sink = MemorySink()
    engine = engine_for(src, sink)
    run = asyncio.create_task(engine.run())
    await wait_for(lambda: engine.healthy or run.done(), 10)
    await asyncio.to_thread(broker.publish, topic, range(n))
    await wait_for(lambda: len(sink.outputs) >= n or run.done(), 20)
    engine.stop()
    summary = await run
    ids = [o["input"]["id"] for o in sink.outputs]
    assert sorted(ids) == list(range(n)), "every message scored exactly once"
    last = max(o["source"]["offset"] for o in sink.outputs)
    assert summary.committed[(f"mqtt:{client_id}", 0)] == last + 1

    check, _ = build_source(c, KafkaParts(parse_config({**BASE, "source": {"type": "generator"}})))
    assert isinstance(check, MqttSource)
    await check.open()
    try:
        reader = Reader(check, publish_at=(HOST, broker.ports["plain"]))
        assert ids_of(await reader.until_fence(topic)) == []
    finally:
        await check.close()


async def test_over_tls_what_was_not_committed_comes_again(broker: Broker) -> None:
    topic, client_id = names()
    tls = MqttTls(ca_file=broker.ca_file)

    def source() -> MqttSource:
        return MqttSource(
            [topic],
            client_id=client_id,
            host=HOST,
            port=broker.ports["tls"],
            tls=tls,
            session_expiry_s=300,
        )

    first = source()
    await first.open()
    try:
        await asyncio.to_thread(broker.publish, topic, range(10))
        records = await Reader(first).take(10)
        assert ids_of(records) == list(range(10))
        await first.commit({(f"mqtt:{client_id}", 0): records[4].offset})
    finally:
        await first.close()
    second = source()
    await second.open()
    try:
        again = await Reader(second, publish_at=(HOST, broker.ports["plain"])).until_fence(topic)
        assert ids_of(again) == [4, 5, 6, 7, 8, 9]
        assert all(("mqtt-dup", b"1") in (r.headers or ()) for r in again)
    finally:
        await second.close()


# -- a certificate that fails the check: one line, what, which key, what to do -----------


@pytest.mark.parametrize(
    ("listener", "ca", "message"),
    [
        (
            "tls",
            "wrong",
            r"TLS: the broker's certificate is not signed by a CA in source\.tls\.ca_file "
            r"\(.*wrong-ca\.pem\) \((unable to get local issuer certificate"
            r"|self-signed certificate in certificate chain)\); "
            r"set source\.tls\.ca_file to the CA certificate that signed it",
        ),
        (
            "expired",
            "right",
            r"TLS: the broker's certificate has expired; renew it on the broker",
        ),
        (
            "mismatch",
            "right",
            r"TLS: the broker's certificate is not issued for '127\.0\.0\.1' \(source\.host\); "
            r"connect by a name the certificate lists",
        ),
    ],
    ids=["wrong-ca", "expired", "hostname-mismatch"],
)
async def test_a_broker_certificate_that_fails_the_check_stops_the_pipeline_with_one_line(
    broker: Broker, listener: str, ca: str, message: str
) -> None:
    topic, client_id = names()
    ca_file = broker.ca_file if ca == "right" else broker.wrong_ca_file
    src = MqttSource(
        [topic],
        client_id=client_id,
        host=HOST,
        port=broker.ports[listener],
        tls=MqttTls(ca_file=ca_file),
    )
    started = time.monotonic()
    with pytest.raises(PipelineError) as failed:
        await engine_for(src, MemorySink()).run()
    assert time.monotonic() - started < 10, "a failed check is an error at once, not retried"
    line = str(failed.value)
    assert "\n" not in line
    assert line.startswith(f"MqttError: mqtt {HOST}:{broker.ports[listener]}: TLS: "), line
    assert re.search(message, line), line
    assert isinstance(failed.value.__cause__, MqttError)


async def test_insecure_skip_verify_connects_despite_the_name_and_warns_once(
    broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    topic, client_id = names()
    caplog.set_level(logging.WARNING, logger="headrace.mqtt")
    for _ in range(2):
        src = MqttSource(
            [topic],
            client_id=client_id,
            host=HOST,
            port=broker.ports["mismatch"],
            tls=MqttTls(insecure_skip_verify=True),
        )
        await src.open()
        try:
            assert src.connected
        finally:
            await src.close()
    warnings = [r for r in caplog.records if "insecure_skip_verify" in r.getMessage()]
    assert len(warnings) == 1


@pytest.mark.parametrize("client", ["none", "untrusted"])
async def test_a_broker_that_refuses_the_client_certificate_is_one_line(
    broker: Broker, tmp_path: Path, client: str
) -> None:
    """With TLS 1.3 the broker checks the client's certificate after the client finished
    its handshake: the refusal arrives as an alert at the first read, and must end
    open() with one line at once rather than in reconnect attempts until the timeout."""
    tls = MqttTls(ca_file=broker.ca_file)
    if client == "untrusted":
        stranger = trustme.CA().issue_cert("stranger")
        stranger.cert_chain_pems[0].write_to_path(str(tmp_path / "s.pem"))
        stranger.private_key_pem.write_to_path(str(tmp_path / "s.key"))
        tls = MqttTls(
            ca_file=broker.ca_file,
            cert_file=str(tmp_path / "s.pem"),
            key_file=str(tmp_path / "s.key"),
        )
    topic, client_id = names()
    src = MqttSource([topic], client_id=client_id, host=HOST, port=broker.ports["mtls"], tls=tls)
    started = time.monotonic()
    with pytest.raises(MqttError) as failed:
        await src.open()
    assert time.monotonic() - started < 10
    line = str(failed.value)
    assert "\n" not in line
    assert re.search(
        r"TLS: the broker refused this client \(.*alert.*\); if it authenticates clients by "
        r"certificate, set source\.tls\.cert_file and source\.tls\.key_file",
        line,
    ), line


# -- WebSockets --------------------------------------------------------------------------


@pytest.fixture
async def ws_bridge(broker: Broker) -> AsyncIterator[int]:
    """A WebSocket server with TLS at ``/mqtt-ws`` that relays each connection's bytes to
    the broker's plain listener; its port."""

    async def relay(request: Any) -> Any:
        ws = web.WebSocketResponse(protocols=("mqtt",))
        await ws.prepare(request)
        reader, writer = await asyncio.open_connection(HOST, broker.ports["plain"])

        async def to_broker() -> None:
            async for msg in ws:
                writer.write(msg.data)
                await writer.drain()
            writer.close()

        async def to_client() -> None:
            while data := await reader.read(65536):
                await ws.send_bytes(data)
            await ws.close()

        tasks = [asyncio.create_task(to_broker()), asyncio.create_task(to_client())]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        writer.close()
        await ws.close()
        return ws

    app = web.Application()
    app.router.add_get("/mqtt-ws", relay)
    runner = web.AppRunner(app)
    await runner.setup()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    broker.server.configure_cert(context)
    site = web.TCPSite(runner, HOST, 0, ssl_context=context)
    await site.start()
    server = site._server
    assert server is not None
    port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield port
    finally:
        await runner.cleanup()


async def test_websockets_with_tls_stream_and_acknowledge(broker: Broker, ws_bridge: int) -> None:
    topic, client_id = names()
    c = mqtt_config(
        {
            "port": ws_bridge,
            "topics": [topic],
            "client_id": client_id,
            "session_expiry_s": 300,
            "transport": "websockets",
            "ws_path": "/mqtt-ws",
            "tls": {"ca_file": broker.ca_file},
        }
    )
    kafka = KafkaParts(parse_config({**BASE, "source": {"type": "generator"}}))
    first, _ = build_source(c, kafka)
    assert isinstance(first, MqttSource) and first.transport == "websockets"
    await first.open()
    try:
        await asyncio.to_thread(broker.publish, topic, range(10))
        records = await Reader(first).take(10)
        assert ids_of(records) == list(range(10))
        await first.commit({(f"mqtt:{client_id}", 0): records[6].offset})
    finally:
        await first.close()
    second, _ = build_source(c, kafka)
    assert isinstance(second, MqttSource)
    await second.open()
    try:
        again = await Reader(second, publish_at=(HOST, broker.ports["plain"])).until_fence(topic)
        assert ids_of(again) == [6, 7, 8, 9]
    finally:
        await second.close()


async def test_a_wrong_websocket_path_is_one_line_that_names_ws_path(
    broker: Broker, ws_bridge: int
) -> None:
    src = MqttSource(
        ["t"],
        client_id="headrace-test-ws-path",
        host=HOST,
        port=ws_bridge,
        tls=MqttTls(ca_file=broker.ca_file),
        transport="websockets",
        ws_path="/nowhere",
    )
    with pytest.raises(
        MqttError, match=r"WebSocket handshake failed .*source\.ws_path \(/nowhere\)"
    ):
        await src.open()


# -- configuration -----------------------------------------------------------------------


def test_the_port_is_8883_with_tls_and_1883_without(broker: Broker) -> None:
    assert mqtt_config({}).port == 1883
    assert mqtt_config({"tls": {}}).port == 8883
    assert mqtt_config({"tls": {}, "port": 443}).port == 443
    assert MqttSource(["t"], client_id="c").port == 1883
    assert MqttSource(["t"], client_id="c", tls=MqttTls()).port == 8883


@pytest.mark.parametrize(
    ("tls", "message"),
    [
        ({"ca": "x"}, "at source.tls: unknown key 'ca'; expected one of: ca_file, cert_file"),
        ({"insecure_skip_verify": "yes"}, "at source.tls.insecure_skip_verify: Expected `bool`"),
        ({"cert_file": "CLIENT"}, "at source.tls.key_file: cert_file needs key_file"),
        ({"key_file": "KEY"}, "at source.tls.cert_file: key_file needs cert_file"),
        (
            {"ca_file": "/nonexistent/ca.pem"},
            "at source.tls.ca_file: /nonexistent/ca.pem does not exist",
        ),
        ({"ca_file": "KEY"}, "at source.tls.ca_file: KEY holds no usable CA certificate"),
        (
            {"cert_file": "KEY", "key_file": "KEY"},
            "at source.tls.cert_file: KEY holds no usable certificate",
        ),
        (
            {"cert_file": "CLIENT", "key_file": "CLIENT"},
            "at source.tls.key_file: CLIENT holds no usable private key",
        ),
        (
            {"cert_file": "CLIENT", "key_file": "OTHER"},
            "at source.tls.key_file: OTHER is not the private key of cert_file CLIENT",
        ),
    ],
)
def test_tls_mistakes_are_one_line_that_names_the_key(
    broker: Broker, tmp_path: Path, tls: dict[str, Any], message: str
) -> None:
    other = trustme.CA().issue_cert("other")
    other.private_key_pem.write_to_path(str(tmp_path / "other.key"))
    files = {
        "CLIENT": broker.client_cert,
        "KEY": broker.client_key,
        "OTHER": str(tmp_path / "other.key"),
    }
    for token, path in files.items():
        message = message.replace(token, path)
        tls = {k: path if v == token else v for k, v in tls.items()}
    with pytest.raises(ConfigError) as failed:
        mqtt_config({"tls": tls})
    assert message in str(failed.value)
    assert "\n" not in str(failed.value)


def test_an_encrypted_key_is_refused_without_a_password_prompt(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    cert = trustme.CA().issue_cert("client")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "c.pem"))
    key = serialization.load_pem_private_key(cert.private_key_pem.bytes(), password=None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    (tmp_path / "c.key").write_bytes(encrypted)
    with pytest.raises(ConfigError, match=r"at source\.tls\.key_file: .*c\.key is encrypted"):
        mqtt_config(
            {"tls": {"cert_file": str(tmp_path / "c.pem"), "key_file": str(tmp_path / "c.key")}}
        )


@pytest.mark.parametrize("key", ["username", "password"])
@pytest.mark.parametrize("value", ["hunter2", "${MQTT_SECRET:-hunter2}", "pre-${MQTT_SECRET}"])
def test_credentials_come_only_from_the_environment_and_are_never_echoed(
    key: str, value: str
) -> None:
    with pytest.raises(ConfigError) as failed:
        mqtt_config({key: value}, env={"MQTT_SECRET": "hunter2"})
    line = str(failed.value)
    assert f"at source.{key}: write it as ${{ENV_VAR}}" in line
    assert "hunter2" not in line and "MQTT_SECRET" not in line


def test_credentials_from_the_environment_are_passed_on_and_never_shown() -> None:
    env = {
        "MQTT_USERNAME": "hub.azure-devices.net/dev-1/?api-version=2021-04-12",
        "MQTT_PASSWORD": "hunter2",
    }
    c = mqtt_config(
        {"username": "${MQTT_USERNAME}", "password": "${MQTT_PASSWORD}", "tls": {}}, env
    )
    assert c.username == env["MQTT_USERNAME"] and c.password == "hunter2"
    for shown in (repr(c), str(c)):
        assert "hunter2" not in shown and "azure-devices" not in shown
    src, _ = build_source(c, KafkaParts(parse_config({**BASE, "source": {"type": "generator"}})))
    public = repr({k: v for k, v in vars(src).items() if not k.startswith("_")})
    assert "hunter2" not in repr(src) + public and "azure-devices" not in repr(src) + public
    with pytest.raises(ConfigError) as failed:
        mqtt_config({"password": "${MQTT_PASSWORD}"}, env={})
    assert str(failed.value) == (
        "config: at source.password: environment variable MQTT_PASSWORD is not set"
    )


def test_websocket_keys_are_checked() -> None:
    c = mqtt_config({"transport": "websockets"})
    assert (c.transport, c.ws_path) == ("websockets", None)
    with pytest.raises(ConfigError, match=r"at source\.ws_path: goes with `transport: websockets`"):
        mqtt_config({"ws_path": "/mqtt"})
    with pytest.raises(ConfigError, match=r"at source\.ws_path: must start with /"):
        mqtt_config({"transport": "websockets", "ws_path": "mqtt"})
    with pytest.raises(ConfigError, match=r"at source\.transport: Invalid enum value 'ws'"):
        mqtt_config({"transport": "ws"})


def test_headrace_validate_names_the_tls_key_and_never_the_credentials(tmp_path: Path) -> None:
    config = tmp_path / "p.yaml"
    config.write_text(
        """
source:
  type: mqtt
  host: broker.example
  topics: [t]
  client_id: c
  username: ${MQTT_USERNAME}
  password: ${MQTT_PASSWORD}
  tls: {ca_file: /nonexistent/ca.pem}
model: {type: callable, name: m, version: "1", function: "mod:fn"}
sinks: [{type: stdout}]
"""
    )
    env = {**os.environ, "MQTT_USERNAME": "user-7f3a", "MQTT_PASSWORD": "hunter2"}
    result = subprocess.run(
        [*HEADRACE, "validate", str(config)], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == [
        f"configuration error {config}: at source.tls.ca_file: /nonexistent/ca.pem does not exist"
    ], result.stderr
    assert "hunter2" not in result.stdout + result.stderr
    assert "user-7f3a" not in result.stdout + result.stderr
