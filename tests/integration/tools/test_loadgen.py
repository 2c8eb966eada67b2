"""The load generator against a real broker (Tansu): counts, ids, keys, malformed
records and pacing, read back from the topic rather than trusted from the summary."""

from __future__ import annotations

import re
import time
import uuid
from collections import Counter, defaultdict

import msgspec
import pytest
import typer
from typer.testing import CliRunner

from headrace.tools.commands import register
from headrace.tools.loadgen import (
    ID_HEADER,
    KIND_HEADER,
    MALFORMED_KINDS,
    LoadgenError,
    produce_events,
)
from kafka_helpers import TansuBroker, decode_values, free_port

ID_PREFIX = re.compile(rb'^\{"id":(\d+),')


def topic_name() -> str:
    return f"loadgen-{uuid.uuid4().hex[:8]}"


def cli() -> typer.Typer:
    app = typer.Typer()
    register(app)
    return app


def test_count_is_exact_ids_unique_and_increasing_keyed_by_entity(
    tansu_session: TansuBroker,
) -> None:
    topic = tansu_session.create_topic(topic_name(), 4)
    before = time.time()
    summary = produce_events(
        tansu_session.bootstrap, topic, rate=0, count=5000, entities=20, start_id=1000
    )
    assert (summary.count, summary.failed, summary.malformed) == (5000, 0, 0)
    assert (summary.first_id, summary.next_id) == (1000, 6000)

    records = tansu_session.consume_all(topic, 5000)
    values = decode_values(records)
    ids = [v["id"] for v in values]
    assert sorted(ids) == list(range(1000, 6000))  # exact count, unique, no gaps
    assert all(before <= v["ts"] <= time.time() for v in values)
    assert all(len(v["features"]) == 8 for v in values)

    partitions_of_key: dict[str, set[int]] = defaultdict(set)
    ids_by_partition: dict[int, list[int]] = defaultdict(list)
    for r, v in zip(records, values, strict=True):
        assert r["key"] == v["entity_id"]
        partitions_of_key[r["key"]].add(r["partition"])
        ids_by_partition[r["partition"]].append(v["id"])
    assert len(partitions_of_key) == 20
    assert all(len(ps) == 1 for ps in partitions_of_key.values())  # a key stays put
    assert set(ids_by_partition) == {0, 1, 2, 3}
    for p_ids in ids_by_partition.values():  # produced in id order: offsets follow ids
        assert p_ids == sorted(p_ids)


def test_malformed_fraction_gives_exactly_that_many_of_every_kind(
    tansu_session: TansuBroker,
) -> None:
    topic = tansu_session.create_topic(topic_name(), 2)
    summary = produce_events(
        tansu_session.bootstrap, topic, count=1200, malformed=0.1, oversize_bytes=4096, seed=4
    )
    assert summary.malformed == 120 and summary.failed == 0
    kinds = (*MALFORMED_KINDS, "oversize")
    assert summary.malformed_by_kind == dict.fromkeys(kinds, 20)

    records = tansu_session.consume_all(topic, 1200)
    bad = [r for r in records if KIND_HEADER in r["headers"]]
    assert len(bad) == 120
    assert Counter(r["headers"][KIND_HEADER].decode() for r in bad) == dict.fromkeys(kinds, 20)
    decode = msgspec.json.Decoder().decode
    for r in bad:
        raw = r["value"]
        match = ID_PREFIX.match(raw)
        assert match is not None, raw[:60]
        assert int(match.group(1)) == int(r["headers"][ID_HEADER])  # accountable by id
        kind = r["headers"][KIND_HEADER].decode()
        if kind in ("invalid_json", "invalid_utf8", "deep_nesting", "nan"):
            with pytest.raises((msgspec.DecodeError, UnicodeDecodeError, RecursionError)):
                decode(raw)
        elif kind == "wrong_types":
            assert isinstance(decode(raw)["features"], str)
        else:
            assert len(raw) == 4096
    # Every record, malformed or not, still has its own id: 0..1199 exactly once.
    ids = []
    for r in records:
        match = ID_PREFIX.match(r["value"])
        assert match is not None
        ids.append(int(match.group(1)))
    assert sorted(ids) == list(range(1200))


def test_paced_rate_is_roughly_right(tansu: TansuBroker) -> None:
    """At a rate, --seconds means rate * seconds events, paced over that time."""
    topic = tansu.create_topic(topic_name(), 1)
    summary = produce_events(tansu.bootstrap, topic, rate=2000, seconds=1.0)
    assert 0.9 <= summary.elapsed <= 2.0
    assert summary.count == 2000, summary
    assert 1200 <= summary.rate <= 2300, summary
    assert len(tansu.consume_all(topic, summary.count)) == summary.count


def test_an_unreachable_broker_fails_fast_without_printing_secrets() -> None:
    started = time.monotonic()
    with pytest.raises(LoadgenError, match="did not answer") as info:
        produce_events(
            f"127.0.0.1:{free_port()}",
            "t",
            count=10,
            connect_timeout=1.0,
            config={"sasl.password": "hunter2"},
        )
    assert time.monotonic() - started < 10
    assert "hunter2" not in str(info.value)


def test_command_produces_and_masks_secret_settings(tansu_session: TansuBroker) -> None:
    topic = tansu_session.create_topic(topic_name(), 2)
    args = ["loadgen", "-b", tansu_session.bootstrap, "-t", topic, "--count", "300"]
    args += ["--rate", "0", "--malformed", "0.5", "--json", "--no-progress"]
    args += ["-X", "sasl.password=hunter2", "-X", "ssl.key.password=hunter3", "-X", "acks=all"]
    result = CliRunner().invoke(cli(), args)
    assert result.exit_code == 0, result.output
    assert "hunter2" not in result.output and "hunter3" not in result.output
    assert "sasl.password=***" in result.output and "acks=all" in result.output
    summary = msgspec.json.decode(result.stdout.strip().splitlines()[-1])
    assert (summary["count"], summary["malformed"]) == (300, 150)
    assert len(tansu_session.consume_all(topic, 300)) == 300


@pytest.mark.parametrize(
    ("extra", "names"),
    [
        (["--count", "5", "--seconds", "1"], "--count"),
        (["--count", "5", "-X", "linger.ms"], "-X"),
        (["--count", "5", "--malformed", "1.5"], "--malformed"),
        (["--count", "5", "--rate", "-1"], "--rate"),
    ],
)
def test_command_usage_errors_exit_2_and_name_the_option(extra: list[str], names: str) -> None:
    args = ["loadgen", "-b", "127.0.0.1:1", "-t", "t", *extra]
    result = CliRunner().invoke(cli(), args)
    assert result.exit_code == 2, result.output
    assert names in result.output


@pytest.mark.parametrize(
    "settings",
    [
        ["sasl.password:pw1"],
        ["security.protocol=sasl_plaintext", "sasl.mechanism=pw1"],
        ["no.such=1"],
    ],
)
def test_command_bad_settings_exit_2_without_echoing_secrets(
    settings: list[str], capfd: pytest.CaptureFixture[str]
) -> None:
    args = ["loadgen", "-b", "127.0.0.1:1", "-t", "t", "--count", "1"]
    for s in settings:
        args += ["-X", s]
    result = CliRunner().invoke(cli(), args)
    assert result.exit_code == 2, result.output
    assert "pw1" not in result.output and "-X" in result.output
    # librdkafka's own log lines go through a redacting logger, not straight to fd 2.
    assert "pw1" not in "".join(capfd.readouterr())


def test_librdkafka_log_lines_do_not_leak_secret_settings(
    tansu_session: TansuBroker, capfd: pytest.CaptureFixture[str]
) -> None:
    topic = tansu_session.create_topic(topic_name(), 1)
    # librdkafka warns that sasl.mechanism is set without SASL, quoting the value.
    args = ["loadgen", "-b", tansu_session.bootstrap, "-t", topic, "--count", "10"]
    args += ["-X", "sasl.mechanism=pw1-SCRAM", "--no-progress"]
    result = CliRunner().invoke(cli(), args)
    assert result.exit_code == 0, result.output
    captured = "".join(capfd.readouterr())
    assert "pw1" not in captured + result.output
