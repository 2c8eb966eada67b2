"""The SQLite sink: one row per output keyed by source position, upsert or insert."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from headrace.connectors import SqliteSink
from headrace.connectors.sqlite import DuplicateRowError
from headrace.record import FailedRecord, ModelRef, Record, ScoredBatch

OpenSink = Callable[..., Any]


@pytest.fixture
async def open_sink(tmp_path: Path) -> AsyncIterator[OpenSink]:
    """Opens sinks on tmp_path/out.db and closes every one at the end of the test."""
    sinks: list[SqliteSink] = []

    async def make(**kwargs: Any) -> SqliteSink:
        sink = SqliteSink(tmp_path / "out.db", **kwargs)
        sinks.append(sink)
        await sink.open()
        return sink

    yield make
    for sink in sinks:
        await sink.close()


def query(db: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def scored(
    predictions: list[Any], offsets: list[int] | None = None, at: float = 50.0
) -> ScoredBatch:
    offsets = offsets if offsets is not None else list(range(len(predictions)))
    records = [
        Record(
            key=f"k{o}" if o % 2 == 0 else o,
            value={"x": o, "v": [o, 0.5]},
            event_time=10.0 + o,
            topic="sensors",
            partition=1,
            offset=o,
        )
        for o in offsets
    ]
    return ScoredBatch(
        records=records, predictions=predictions, model=ModelRef("iforest", "7"), processed_at=at
    )


async def test_open_creates_both_tables(tmp_path: Path, open_sink: OpenSink) -> None:
    """Opening creates the predictions and dead-letter tables, empty."""
    await open_sink(table="scores", failures_table="dlq")
    names = {n for (n,) in query(tmp_path / "out.db", "SELECT name FROM sqlite_master")}
    assert {"scores", "dlq"} <= names
    assert query(tmp_path / "out.db", "SELECT count(*) FROM scores") == [(0,)]


async def test_rows_match_the_batch(tmp_path: Path, open_sink: OpenSink) -> None:
    """Each output is one row: position, key as text, model, times and the input as JSON;
    a scalar prediction is a number and a vector prediction is JSON text."""
    sink = await open_sink()
    await sink.write(scored([0.75, [0.1, 0.9], 3]))
    rows = query(
        tmp_path / "out.db",
        'SELECT topic, partition, "offset", key, prediction, typeof(prediction), model_name, '
        "model_version, event_time, processed_at, input, typeof(input) "
        'FROM predictions ORDER BY "offset"',
    )
    assert [r[:4] for r in rows] == [
        ("sensors", 1, 0, "k0"),
        ("sensors", 1, 1, "1"),
        ("sensors", 1, 2, "k2"),
    ]
    assert (rows[0][4], rows[0][5]) == (0.75, "real")
    assert (rows[2][4], rows[2][5]) == (3, "integer")
    assert rows[1][5] == "text" and json.loads(rows[1][4]) == [0.1, 0.9]
    assert all(r[6:8] == ("iforest", "7") for r in rows)
    assert [r[8] for r in rows] == [10.0, 11.0, 12.0]
    assert all(r[9] == 50.0 for r in rows)
    assert all(r[11] == "text" for r in rows)
    assert [json.loads(r[10]) for r in rows] == [{"x": o, "v": [o, 0.5]} for o in range(3)]
    # JSON text is queryable with SQLite's JSON functions
    assert query(tmp_path / "out.db", "SELECT json_extract(input, '$.x') FROM predictions") == [
        (0,),
        (1,),
        (2,),
    ]


async def test_store_input_false_leaves_input_null(tmp_path: Path, open_sink: OpenSink) -> None:
    """Without store_input the input column stays empty."""
    sink = await open_sink(store_input=False)
    await sink.write(scored([1.0]))
    assert query(tmp_path / "out.db", "SELECT input FROM predictions") == [(None,)]


async def test_upsert_replaces_rows_at_the_same_position(
    tmp_path: Path, open_sink: OpenSink
) -> None:
    """Re-writing the same source positions (a replay after a crash) leaves one row per
    position, holding the latest prediction."""
    sink = await open_sink()
    await sink.write(scored([0.1, 0.2, 0.3], at=1.0))
    await sink.write(scored([0.9, 0.8], offsets=[1, 2], at=2.0))
    await sink.write(scored([0.5], offsets=[3], at=2.0))
    rows = query(
        tmp_path / "out.db",
        'SELECT "offset", prediction, processed_at FROM predictions ORDER BY "offset"',
    )
    assert rows == [(0, 0.1, 1.0), (1, 0.9, 2.0), (2, 0.8, 2.0), (3, 0.5, 2.0)]


async def test_insert_mode_rejects_a_duplicate_and_rolls_back(
    tmp_path: Path, open_sink: OpenSink
) -> None:
    """In insert mode a duplicate position raises, and none of that batch is kept."""
    sink = await open_sink(mode="insert")
    await sink.write(scored([0.1, 0.2]))
    with pytest.raises(sqlite3.IntegrityError):
        await sink.write(scored([0.7, 0.8], offsets=[5, 1]))
    rows = query(tmp_path / "out.db", 'SELECT "offset", prediction FROM predictions ORDER BY 1')
    assert rows == [(0, 0.1), (1, 0.2)]
    await sink.write(scored([0.6], offsets=[5]))  # the connection is usable afterwards
    assert query(tmp_path / "out.db", "SELECT count(*) FROM predictions") == [(3,)]


async def test_empty_batch_writes_nothing(tmp_path: Path, open_sink: OpenSink) -> None:
    """An empty batch is accepted and leaves the table unchanged."""
    sink = await open_sink()
    await sink.write(scored([]))
    assert query(tmp_path / "out.db", "SELECT count(*) FROM predictions") == [(0,)]


async def test_failures_go_to_the_dead_letter_table(tmp_path: Path, open_sink: OpenSink) -> None:
    """write_failures stores each failed record with its stage, error and raw bytes."""
    sink = await open_sink()
    failures = [
        FailedRecord(
            record=Record(
                key=None,
                value=None,
                event_time=1.0,
                topic="in",
                partition=0,
                offset=4,
                raw=b"{oops\xff",
            ),
            stage="decode",
            error="bad",
            error_type="DecodeError",
        ),
        FailedRecord(
            record=Record(
                key=42, value={"x": 1}, event_time=2.0, topic="in", partition=0, offset=5
            ),
            stage="model",
            error="boom",
            error_type="RuntimeError",
            model=ModelRef("m", "2"),
        ),
    ]
    await sink.write_failures(failures)
    await sink.write_failures([])
    rows = query(
        tmp_path / "out.db",
        'SELECT topic, partition, "offset", key, stage, error_type, error, model_name, '
        'model_version, input, raw FROM dead_letters ORDER BY "offset"',
    )
    assert rows[0] == (
        "in",
        0,
        4,
        None,
        "decode",
        "DecodeError",
        "bad",
        None,
        None,
        rows[0][9],
        "{oops\ufffd",
    )
    assert rows[0][9] is None, "a record that never decoded has no input"
    assert rows[1][:9] == ("in", 0, 5, "42", "model", "RuntimeError", "boom", "m", "2")
    assert json.loads(rows[1][9]) == {"x": 1} and rows[1][10] is None
    types = query(tmp_path / "out.db", "SELECT typeof(input), typeof(raw) FROM dead_letters")
    assert types == [("null", "text"), ("text", "null")]
    assert query(tmp_path / "out.db", "SELECT count(*) FROM predictions") == [(0,)]


async def test_data_survives_close_and_reopen(tmp_path: Path, open_sink: OpenSink) -> None:
    """A second sink on the same file keeps the rows and upserts into them."""
    first = await open_sink()
    await first.write(scored([0.1, 0.2]))
    await first.close()
    second = await open_sink()
    await second.write(scored([0.3], offsets=[1]))
    rows = query(tmp_path / "out.db", 'SELECT "offset", prediction FROM predictions ORDER BY 1')
    assert rows == [(0, 0.1), (1, 0.3)]


async def test_write_before_open_is_an_error(tmp_path: Path) -> None:
    """A sink that is not open refuses to write."""
    sink = SqliteSink(tmp_path / "out.db")
    try:
        with pytest.raises(RuntimeError, match="not open"):
            await sink.write(scored([1.0]))
    finally:
        await sink.close()


@pytest.mark.parametrize(
    "name",
    ["predictions; DROP TABLE x", "1table", "my-table", "", "a b", '"quoted"', "t" * 64],
)
@pytest.mark.parametrize("which", ["table", "failures_table"])
def test_table_name_must_be_an_identifier(tmp_path: Path, name: str, which: str) -> None:
    """Table names go into SQL text, so anything but a plain identifier is refused."""
    with pytest.raises(ValueError, match="not a plain SQL identifier") as info:
        SqliteSink(tmp_path / "out.db", **{which: name})
    assert repr(name) in str(info.value)
    assert not (tmp_path / "out.db").exists()


async def test_insert_mode_names_the_row_already_there_and_what_to_do(
    open_sink: OpenSink,
) -> None:
    """What a restart after a crash meets in insert mode: one sentence naming the row that
    is already there, why it is written again, and what to do."""
    sink = await open_sink(mode="insert")
    await sink.write(scored([0.1, 0.2]))
    with pytest.raises(DuplicateRowError) as info:
        await sink.write(scored([0.7, 0.8], offsets=[5, 1]))
    message = str(info.value)
    assert message.startswith(
        "sink 'sqlite' (mode: insert): table predictions already has a row for source "
        "position sensors[1]@1. After a restart the records not committed"
    )
    assert "use mode: upsert (the default)" in message
    assert "\n" not in message
    with pytest.raises(DuplicateRowError, match=r"table dead_letters .* sensors\[1\]@0\."):
        failed = FailedRecord(
            record=scored([0.1]).records[0], stage="decode", error="bad", error_type="invalid-json"
        )
        await sink.write_failures([failed])
        await sink.write_failures([failed])
