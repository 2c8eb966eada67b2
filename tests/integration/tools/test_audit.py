"""The audit against a real broker (Tansu) and a real PostgreSQL: it must find what is
clean clean, and — the project rule for oracles — find each seeded fault: a loss, a
duplicate and an unexpected output, by position."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import msgspec
import pytest
import typer
from typer.testing import CliRunner

from headrace.tools.audit import AuditReport, Position, audit, compare
from headrace.tools.commands import register
from headrace.tools.loadgen import produce_events
from kafka_helpers import TansuBroker
from pg_helpers import PgSchema

IDLE = 0.3  # seconds of quiet that end a read; the broker is local and in memory


@dataclass
class Topics:
    """An input topic already filled by the load generator, and names for outputs."""

    broker: TansuBroker
    input: str
    positions: list[Position]
    output: str
    dead: str

    def outputs(self, positions: list[Position]) -> list[dict[str, Any]]:
        """Headrace-shaped outputs for ``positions``."""
        return [
            {
                "key": f"k{p.offset}",
                "prediction": 0.5,
                "model": {"name": "m", "version": "1"},
                "source": {"topic": p.topic, "partition": p.partition, "offset": p.offset},
            }
            for p in positions
        ]

    def write(self, topic: str, positions: list[Position]) -> None:
        self.broker.produce_json(topic, self.outputs(positions))

    def audit(self, **kwargs: Any) -> AuditReport:
        return audit(self.broker.bootstrap, self.input, idle_timeout=IDLE, **kwargs)


@pytest.fixture
def topics(tansu_session: TansuBroker) -> Iterator[Topics]:
    suffix = uuid.uuid4().hex[:8]
    names = [f"in-{suffix}", f"out-{suffix}", f"dead-{suffix}"]
    tansu_session.create_topic(names[0], 3)
    for name in names[1:]:
        tansu_session.create_topic(name, 2)
    summary = produce_events(tansu_session.bootstrap, names[0], count=600, malformed=0.05)
    assert summary.failed == 0
    records = tansu_session.consume_all(names[0], 600)
    positions = sorted(Position(names[0], r["partition"], r["offset"]) for r in records)
    yield Topics(tansu_session, names[0], positions, names[1], names[2])


def test_a_clean_run_is_clean(topics: Topics) -> None:
    topics.write(topics.output, topics.positions)
    report = topics.audit(output_topic=topics.output)
    assert (report.input_count, report.output_count) == (600, 600)
    assert (report.missing, report.duplicated, report.unexpected) == (0, 0, 0)
    assert report.holds("exactly-once") and report.holds("at-least-once")
    assert not report.incomplete


def test_a_seeded_loss_duplicate_and_unexpected_output_are_each_reported(
    topics: Topics,
) -> None:
    ps = topics.positions
    lost, doubled = ps[10], ps[20]
    stranger = Position(topics.input, 0, 1_000_000)
    written = [p for p in ps if p != lost] + [doubled, stranger]
    topics.write(topics.output, written)
    report = topics.audit(output_topic=topics.output)
    assert report.input_count == 600 and report.output_count == 601
    assert report.missing == 1 and report.missing_examples == (lost,)
    assert report.duplicated == 1 and report.duplicated_positions == 1
    assert report.duplicated_examples == (doubled,)
    assert report.unexpected == 1 and report.unexpected_examples == (stranger,)
    assert not report.holds("exactly-once") and not report.holds("at-least-once")


def test_duplicates_alone_break_exactly_once_but_not_at_least_once(topics: Topics) -> None:
    ps = topics.positions
    topics.write(topics.output, ps + ps[:5] + ps[:2])  # 5 positions, 7 extra copies
    report = topics.audit(output_topic=topics.output)
    assert (report.duplicated, report.duplicated_positions) == (7, 5)
    assert (report.missing, report.unexpected) == (0, 0)
    assert report.holds("at-least-once") and not report.holds("exactly-once")


def test_unreadable_outputs_and_other_topics_are_unexpected(topics: Topics) -> None:
    topics.write(topics.output, topics.positions)
    topics.broker.produce_json(topics.output, [b"not json", {"no": "source"}])
    topics.write(topics.output, [Position("elsewhere", 0, 3)])
    report = topics.audit(output_topic=topics.output)
    assert (report.unexpected, report.unreadable, report.missing) == (3, 2, 0)
    assert report.unexpected_examples == (Position("elsewhere", 0, 3),)
    assert not report.holds("at-least-once")


def test_dead_letters_account_for_their_positions(topics: Topics) -> None:
    ps = topics.positions
    failed = ps[::50]  # 12 positions
    topics.write(topics.output, [p for p in ps if p not in failed])
    topics.write(topics.dead, failed)

    without = topics.audit(output_topic=topics.output)
    assert without.missing == 12  # the oracle sees them missing when not told

    report = topics.audit(output_topic=topics.output, dead_letter_topic=topics.dead)
    assert (report.missing, report.dead_lettered, report.dead_letter_count) == (0, 12, 12)
    assert report.holds("exactly-once")


def test_a_position_both_written_and_dead_lettered_is_a_duplicate(topics: Topics) -> None:
    topics.write(topics.output, topics.positions)
    topics.write(topics.dead, topics.positions[:1])
    report = topics.audit(output_topic=topics.output, dead_letter_topic=topics.dead)
    assert (report.duplicated, report.duplicated_examples) == (1, tuple(topics.positions[:1]))
    assert report.holds("at-least-once") and not report.holds("exactly-once")


def test_replayed_dead_letters_count_by_their_replay_and_the_oracle_still_fails(
    topics: Topics,
) -> None:
    """Dead letters replayed (``headrace dead-letters replay`` headers) and scored from the
    replay topic: one fate each. A replay not scored is missing, one scored twice is
    duplicated, a dead letter not replayed still counts."""
    from confluent_kafka import Producer

    broker, ps = topics.broker, topics.positions
    replay = broker.create_topic(f"replay-{uuid.uuid4().hex[:8]}", 1)
    failed = ps[:4]  # dead-lettered; 0-2 replayed, 3 not
    topics.write(topics.output, ps[4:])
    producer = Producer(broker.client_config(**{"linger.ms": 5}))
    for p in failed:
        headers = {
            "headrace-stage": "model",
            "headrace-error-type": "model-error",
            "headrace-source-topic": p.topic,
            "headrace-source-partition": str(p.partition),
            "headrace-source-offset": str(p.offset),
        }
        producer.produce(topics.dead, b"original", partition=0, headers=headers)
    producer.flush(10)
    dead = broker.consume_all(topics.dead, 4)
    dead_by_source = {
        (
            int(d["headers"]["headrace-source-partition"]),
            int(d["headers"]["headrace-source-offset"]),
        ): (
            d["partition"],
            d["offset"],
        )
        for d in dead
    }
    for p in failed[:3]:
        dp, do = dead_by_source[(p.partition, p.offset)]
        headers = {
            "headrace-replayed-from": f"{topics.dead}/{dp}/{do}",
            "headrace-replayed-source": f"{p.topic}/{p.partition}/{p.offset}",
        }
        producer.produce(replay, b"original", partition=0, headers=headers)
    producer.flush(10)
    # Replays at offsets 0, 1, 2: 0 scored once, 1 scored twice, 2 not scored.
    topics.write(topics.output, [Position(replay, 0, 0), Position(replay, 0, 1)])
    topics.write(topics.output, [Position(replay, 0, 1)])

    report = topics.audit(
        output_topic=topics.output, dead_letter_topic=topics.dead, replay_topics=[replay]
    )
    assert (report.replayed, report.replay_records, report.dead_letter_count) == (3, 3, 4)
    assert report.missing_examples == (failed[2],)
    assert (report.duplicated, report.duplicated_examples) == (1, (failed[1],))
    assert (report.unexpected, report.dead_lettered) == (0, 1)
    assert not report.holds("at-least-once")


PREDICTIONS = """CREATE TABLE {name} (
    topic TEXT NOT NULL, partition INTEGER NOT NULL, "offset" BIGINT NOT NULL,
    key TEXT, prediction DOUBLE PRECISION)"""


def _table(pg: PgSchema, name: str, positions: list[Position]) -> None:
    import psycopg

    with psycopg.connect(pg.dsn) as conn:
        conn.execute(PREDICTIONS.format(name=name))  # type: ignore[arg-type]
        with conn.cursor() as cur:
            cur.executemany(
                f'INSERT INTO {name} (topic, partition, "offset", prediction) '
                "VALUES (%s, %s, %s, 0.5)",
                [tuple(p) for p in positions],
            )


def test_postgresql_output_and_dead_letter_tables(topics: Topics, pg_dsn: PgSchema) -> None:
    ps = topics.positions
    lost, doubled, failed = ps[3], ps[4], ps[5:8]
    _table(pg_dsn, "predictions", [p for p in ps if p != lost and p not in failed] + [doubled])
    _table(pg_dsn, "dead_letters", failed)
    report = topics.audit(
        output_table="predictions", dead_letter_table="dead_letters", dsn=pg_dsn.dsn
    )
    assert report.missing_examples == (lost,) and report.duplicated_examples == (doubled,)
    assert (report.dead_lettered, report.unexpected) == (3, 0)
    # A schema-qualified name works without the search_path.
    qualified = topics.audit(output_table=f"{pg_dsn.schema}.predictions", dsn=pg_dsn.base_dsn)
    assert qualified.missing == 4 and qualified.output_count == report.output_count


def test_compare_finds_each_fault_without_a_broker() -> None:
    clean = compare("t", {0: range(5), 1: range(3)}, {("t", 0): range(5), ("t", 1): range(3)})
    assert clean.holds("exactly-once") and clean.input_count == 8
    bad = compare("t", {0: range(5)}, {("t", 0): [0, 1, 1, 3, 4, 7], ("u", 0): [0]})
    assert bad.missing_examples == (Position("t", 0, 2),)
    assert bad.duplicated_examples == (Position("t", 0, 1),)
    assert bad.unexpected_examples == (Position("t", 0, 7), Position("u", 0, 0))


# --- the command ------------------------------------------------------------------


def cli() -> typer.Typer:
    app = typer.Typer()
    register(app)
    return app


def run(topics: Topics, *args: str) -> Any:
    base = ["audit", "-b", topics.broker.bootstrap, "-i", topics.input]
    return CliRunner().invoke(cli(), [*base, "--idle-timeout", str(IDLE), *args])


def test_command_exit_codes_follow_the_verdict(topics: Topics) -> None:
    topics.write(topics.output, topics.positions + topics.positions[:1])
    ok = run(topics, "--output-topic", topics.output, "--expect", "at-least-once", "--json")
    assert ok.exit_code == 0, ok.output
    assert "duplicated" in ok.stdout and "holds" in ok.output
    report = msgspec.json.decode(ok.stdout.strip().splitlines()[-1])
    assert report["duplicated"] == 1 and report["holds"]["exactly-once"] is False
    assert report["duplicated_examples"][0]["offset"] == topics.positions[0].offset

    strict = run(topics, "--output-topic", topics.output, "--expect", "exactly-once")
    assert strict.exit_code == 1, strict.output
    assert "does NOT hold" in strict.output

    # Without --expect the audit reports and exits 0 whatever it found.
    plain = run(topics, "--output-topic", topics.output)
    assert plain.exit_code == 0


def test_command_reads_a_table_without_printing_the_dsn(topics: Topics, pg_dsn: PgSchema) -> None:
    _table(pg_dsn, "predictions", topics.positions)
    result = run(
        topics, "--output-table", "predictions", "--dsn", pg_dsn.dsn, "--expect", "exactly-once"
    )
    assert result.exit_code == 0, result.output
    assert pg_dsn.schema not in result.output
    missing = run(topics, "--output-table", "nope", "--dsn", pg_dsn.dsn)
    assert missing.exit_code == 3 and "nope" in missing.output
    refused = run(topics, "--output-table", "p", "--dsn", "postgresql://u:pw9@127.0.0.1:1/db")
    assert refused.exit_code == 3 and "cannot read table" in refused.output
    assert "pw9" not in refused.output


@pytest.mark.parametrize(
    ("args", "names"),
    [
        ([], "--output-topic"),
        (["--output-topic", "a", "--output-table", "b", "--dsn", "x"], "--output-table"),
        (["--output-table", "b"], "--dsn"),
        (["--output-topic", "a", "--dead-letter-table", "b"], "--dsn"),
        (
            ["--output-topic", "a", "--dead-letter-topic", "b", "--dead-letter-table", "c"],
            "--dead-letter-table",
        ),
        (["--output-topic", "a", "--expect", "maybe-once"], "--expect"),
        (["--output-topic", "a", "--output-table", "x;drop"], "--output-table"),
        (["--output-table", "x;drop", "--dsn", "postgresql://u:pw9@h/db"], "x;drop"),
        (["--output-topic", "a", "-X", "sasl.password"], "-X"),
    ],
)
def test_command_usage_errors_exit_2_and_name_the_option(args: list[str], names: str) -> None:
    base = ["audit", "-b", "127.0.0.1:1", "-i", "in"]
    result = CliRunner().invoke(cli(), [*base, *args])
    assert result.exit_code == 2, result.output
    assert names in result.output
    assert "pw9" not in result.output


def test_command_exits_3_when_the_input_cannot_be_read(tansu: TansuBroker) -> None:
    tansu.create_topic("out", 1)
    result = CliRunner().invoke(
        cli(), ["audit", "-b", tansu.bootstrap, "-i", "no-such-topic", "--output-topic", "out"]
    )
    assert result.exit_code == 3, result.output
    assert "no-such-topic" in result.output
