"""A JSON-lines file read as batches of bytes gives the pipeline what reading it line by
line gives: the same outputs, dead letters and checkpoint."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from headrace import (
    CallableModel,
    EngineSettings,
    Featurizer,
    JsonLinesSink,
    Pipeline,
    SqliteSink,
)
from headrace.connectors.files import JsonLinesSource
from headrace.runtime.decode import JsonDecoder

LINES = [
    *(json.dumps({"id": f"e{i}", "x": [i, i + 0.5]}) for i in range(40)),
    "",
    "not json",
    json.dumps({"id": "bad-feature", "x": ["a", 1]}),
    "   ",
    *(json.dumps({"id": f"f{i}", "x": [i, -i]}) for i in range(30)),
    json.dumps({"id": "last", "x": [1e308, 1e308]}),
]


def run(tmp: Path, as_batches: bool, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    if not as_batches:
        monkeypatch.setattr(JsonLinesSource, "read_as_batches", lambda self: False)
    path = tmp / "in.jsonl"
    path.write_text("\n".join(LINES) + "\n")
    source = JsonLinesSource(path, checkpoint=tmp / f"ckpt-{as_batches}.json")
    out, dead = tmp / f"out-{as_batches}.jsonl", tmp / f"dead-{as_batches}.jsonl"
    summary = (
        Pipeline("files")
        .source(source, decoder=JsonDecoder(key_field="id"))
        .model(
            CallableModel(lambda x: np.asarray(x).sum(axis=1), name="sum"),
            featurizer=Featurizer(vector="x"),
        )
        .sink(JsonLinesSink(out))
        .dead_letter(JsonLinesSink(dead, name="dead"))
        .settings(EngineSettings(max_batch_size=16, max_wait=0.005))
        .run(install_signal_handlers=False)
    )
    assert source._as_batches is as_batches
    drop = {"processed_at", "event_time"}
    return {
        "summary": (summary.records_in, summary.records_out, summary.records_failed),
        "outputs": [
            {k: v for k, v in json.loads(line).items() if k not in drop}
            for line in out.read_text().splitlines()
        ],
        "dead": [
            {k: v for k, v in json.loads(line).items() if k not in drop | {"error"}}
            for line in dead.read_text().splitlines()
        ],
        "checkpoint": json.loads((tmp / f"ckpt-{as_batches}.json").read_text()),
    }


def test_a_file_read_as_batches_gives_what_it_gives_line_by_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    by_line = run(tmp_path, False, monkeypatch)
    monkeypatch.undo()
    as_batches = run(tmp_path, True, monkeypatch)
    assert as_batches == by_line
    assert by_line["summary"] == (73, 70, 3)
    kinds = [d["error_type"] for d in by_line["dead"]]
    assert kinds == ["invalid-json", "wrong-type", "out-of-range"]
    assert [o["key"] for o in by_line["outputs"]][:2] == ["e0", "e1"]


def rows_of(tmp: Path, as_batches: bool, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    if not as_batches:
        monkeypatch.setattr(JsonLinesSource, "read_as_batches", lambda self: False)
    path = tmp / "in.jsonl"
    path.write_text("\n".join(LINES) + "\n")
    db = tmp / f"out-{as_batches}.db"
    (
        Pipeline("files")
        .source(JsonLinesSource(path), decoder=JsonDecoder(key_field="id"))
        .model(
            CallableModel(lambda x: np.asarray(x).sum(axis=1), name="sum"),
            featurizer=Featurizer(vector="x"),
        )
        .sink(SqliteSink(db))
        .dead_letter(JsonLinesSink(tmp / f"dead-{as_batches}.jsonl", name="dead"))
        .settings(EngineSettings(max_batch_size=16, max_wait=0.005))
        .run(install_signal_handlers=False)
    )
    with sqlite3.connect(db) as conn:
        return conn.execute(
            'SELECT topic, partition, "offset", key, prediction, input FROM predictions '
            'ORDER BY "offset"'
        ).fetchall()


def test_a_table_sink_gets_the_same_rows_from_columns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite (as PostgreSQL) writes its rows straight from the columns, each input the
    line as read: the rows are those of the line-by-line path."""
    by_line = rows_of(tmp_path, False, monkeypatch)
    monkeypatch.undo()
    as_batches = rows_of(tmp_path, True, monkeypatch)
    assert as_batches == by_line and len(by_line) == 70
    assert by_line[0][3:] == ("e0", 0.5, '{"id": "e0", "x": [0, 0.5]}')
