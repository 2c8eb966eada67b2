"""JSON-lines files: a source that resumes exactly where it committed, and a sink."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from headrace.batch import RecordBatch
from headrace.connectors import JsonLinesSink, JsonLinesSource, NullSink
from headrace.connectors.files import CheckpointError
from headrace.record import FailedRecord, ModelRef, Record, ScoredBatch

OUTPUT_KEYS = {"key", "input", "prediction", "model", "source", "event_time", "processed_at"}
FAILURE_KEYS = {
    "key",
    "input",
    "raw",
    "attempts",
    "stage",
    "error_type",
    "error",
    "model",
    "source",
    "event_time",
}


async def read_all(source: JsonLinesSource) -> list[Record]:
    out: list[Record] = []
    async for chunk in source.chunks():
        assert chunk, "a chunk is never empty"
        out.extend(chunk)
    return out


async def read_file(
    path: Path, checkpoint: Path | None = None, *, as_batches: bool = False
) -> list[Record]:
    source = JsonLinesSource(path, checkpoint=checkpoint)
    if as_batches:
        assert source.read_as_batches()
    await source.open()
    try:
        return await read_all(source)
    finally:
        await source.close()


def files_in(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def write_lines(path: Path, n: int, start: int = 0) -> None:
    with path.open("a") as f:
        for i in range(start, start + n):
            f.write(json.dumps({"i": i}) + "\n")


# -- source ----------------------------------------------------------------------------------


@pytest.mark.parametrize("as_batches", [False, True], ids=["records", "batches"])
async def test_offsets_are_line_numbers_and_blank_lines_are_skipped(
    tmp_path: Path, as_batches: bool
) -> None:
    """Each record's offset is its 0-based line number; blank lines produce no record but
    still count; the raw bytes are the stripped line. Read as batches, alike."""
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"a": 1}\n\n{"a": 2}\r\n   \n{"a": 3}')  # no final newline
    records = await read_file(path, as_batches=as_batches)
    assert [r.offset for r in records] == [0, 2, 4]
    assert [r.raw for r in records] == [b'{"a": 1}', b'{"a": 2}', b'{"a": 3}']
    assert all(r.topic == str(path) and r.partition == 0 for r in records)
    assert all(r.value is None and r.key is None for r in records)  # the engine decodes


async def test_read_as_batches_a_run_of_lines_is_one_batch_of_their_bytes(
    tmp_path: Path,
) -> None:
    """Consecutive non-blank lines of a read are one batch (offsets consecutive, the
    bytes stripped, no value decoded); a blank line ends a run."""
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"a": 1}\n{"a": 2}\n\n{"a": 3} \n{"a": 4}\n{"a": 5}\n')
    source = JsonLinesSource(path)
    assert source.read_as_batches()
    await source.open()
    chunks = [chunk async for chunk in source.chunks()]
    await source.close()
    assert all(isinstance(c, RecordBatch) and not c.materialized for c in chunks)
    batches = [c for c in chunks if isinstance(c, RecordBatch)]
    assert [b.offsets for b in batches] == [range(0, 2), range(3, 6)]
    assert batches[1].raws == [b'{"a": 3}', b'{"a": 4}', b'{"a": 5}']
    assert batches[0].keys == [None, None] and len(batches[0].event_times) == 2


async def test_reading_before_open_is_an_error(tmp_path: Path) -> None:
    """chunks() without open() fails clearly."""
    path = tmp_path / "in.jsonl"
    write_lines(path, 1)
    with pytest.raises(RuntimeError, match="open"):
        await read_all(JsonLinesSource(path))


async def test_large_file_reads_every_line_once(tmp_path: Path) -> None:
    """A file bigger than one read reaches the end with every line exactly once."""
    path = tmp_path / "in.jsonl"
    write_lines(path, 20_000)
    records = await read_file(path)
    assert [r.offset for r in records] == list(range(20_000))
    assert json.loads(records[-1].raw or b"") == {"i": 19_999}


@pytest.mark.parametrize("as_batches", [False, True], ids=["records", "batches"])
async def test_commit_then_resume_at_the_first_uncommitted_line(
    tmp_path: Path, as_batches: bool
) -> None:
    """Committing position 4 (lines 0-3 finished) and reopening reads from line 4."""
    path, checkpoint = tmp_path / "in.jsonl", tmp_path / "ckpt.json"
    write_lines(path, 10)
    source = JsonLinesSource(path, checkpoint=checkpoint)
    if as_batches:
        source.read_as_batches()
    await source.open()
    records = await read_all(source)
    assert len(records) == 10
    await source.commit({(source.topic, 0): 4})
    await source.close()
    assert json.loads(checkpoint.read_text())["line"] == 4

    resumed = await read_file(path, checkpoint, as_batches=as_batches)
    assert [r.offset for r in resumed] == list(range(4, 10))
    assert [json.loads(r.raw or b"")["i"] for r in resumed] == list(range(4, 10))


async def test_commit_while_reading_many_chunks(tmp_path: Path) -> None:
    """Commits made between chunks of a large file (positions inside the chunk just read
    and inside earlier ones) resume at exactly the committed line."""
    path, checkpoint = tmp_path / "in.jsonl", tmp_path / "ckpt.json"
    write_lines(path, 60_000)
    source = JsonLinesSource(path, checkpoint=checkpoint)
    await source.open()
    seen = 0
    chunks = 0
    committed = 0
    async for chunk in source.chunks():
        chunks += 1
        committed = seen + len(chunk) // 2  # half of this chunk is finished
        await source.commit({(source.topic, 0): committed})
        seen += len(chunk)
    await source.close()
    assert chunks >= 3 and seen == 60_000
    resumed = await read_file(path, checkpoint)
    assert resumed[0].offset == committed
    assert json.loads(resumed[0].raw or b"") == {"i": committed}
    assert len(resumed) == 60_000 - committed


async def test_successive_commits_and_appended_lines(tmp_path: Path) -> None:
    """The latest commit wins, and lines appended after a restart keep counting."""
    path, checkpoint = tmp_path / "in.jsonl", tmp_path / "ckpt.json"
    write_lines(path, 6)
    source = JsonLinesSource(path, checkpoint=checkpoint)
    await source.open()
    await read_all(source)
    await source.commit({(source.topic, 0): 2})
    await source.commit({(source.topic, 0): 5})
    await source.close()
    write_lines(path, 3, start=6)
    resumed = await read_file(path, checkpoint)
    assert [r.offset for r in resumed] == [5, 6, 7, 8]
    assert [json.loads(r.raw or b"")["i"] for r in resumed] == [5, 6, 7, 8]


async def test_commit_across_reads_and_restarts(tmp_path: Path) -> None:
    """A resumed source commits positions relative to the whole file, so a second restart
    lands on the right line too."""
    path, checkpoint = tmp_path / "in.jsonl", tmp_path / "ckpt.json"
    write_lines(path, 10)
    first = JsonLinesSource(path, checkpoint=checkpoint)
    await first.open()
    await read_all(first)
    await first.commit({(first.topic, 0): 3})
    await first.close()

    second = JsonLinesSource(path, checkpoint=checkpoint)
    await second.open()
    assert (await read_all(second))[0].offset == 3
    await second.commit({(second.topic, 0): 7})
    await second.close()
    assert [r.offset for r in await read_file(path, checkpoint)] == [7, 8, 9]


async def test_commit_on_a_blank_line_resumes_there(tmp_path: Path) -> None:
    """A commit position that falls on a skipped blank line resumes at the next record."""
    path, checkpoint = tmp_path / "in.jsonl", tmp_path / "ckpt.json"
    path.write_text('{"i": 0}\n\n\n{"i": 3}\n{"i": 4}\n')
    source = JsonLinesSource(path, checkpoint=checkpoint)
    await source.open()
    await read_all(source)
    await source.commit({(source.topic, 0): 1})
    await source.close()
    assert [r.offset for r in await read_file(path, checkpoint)] == [3, 4]


async def test_commit_of_everything_resumes_at_the_end(tmp_path: Path) -> None:
    """Committing past the last line read means nothing is re-read."""
    path, checkpoint = tmp_path / "in.jsonl", tmp_path / "ckpt.json"
    write_lines(path, 5)
    source = JsonLinesSource(path, checkpoint=checkpoint)
    await source.open()
    await read_all(source)
    await source.commit({(source.topic, 0): 5})
    await source.close()
    assert await read_file(path, checkpoint) == []
    write_lines(path, 1, start=5)
    assert [r.offset for r in await read_file(path, checkpoint)] == [5]


async def test_commit_for_another_topic_or_without_checkpoint_does_nothing(
    tmp_path: Path,
) -> None:
    """Only this file's partition is stored, and only when a checkpoint is configured."""
    path, checkpoint = tmp_path / "in.jsonl", tmp_path / "ckpt.json"
    write_lines(path, 3)
    source = JsonLinesSource(path, checkpoint=checkpoint)
    await source.open()
    await read_all(source)
    await source.commit({("other", 0): 2})
    await source.close()
    assert not checkpoint.exists()

    plain = JsonLinesSource(path)
    await plain.open()
    await read_all(plain)
    await plain.commit({(plain.topic, 0): 2})
    await plain.close()
    assert files_in(tmp_path) == [path.name]


async def test_checkpoint_past_the_end_of_a_truncated_file(tmp_path: Path) -> None:
    """A file truncated below the stored position is refused, naming the checkpoint,
    rather than silently skipping or re-reading data."""
    path, checkpoint = tmp_path / "in.jsonl", tmp_path / "ckpt.json"
    write_lines(path, 10)
    source = JsonLinesSource(path, checkpoint=checkpoint)
    await source.open()
    await read_all(source)
    await source.commit({(source.topic, 0): 8})
    await source.close()
    path.write_text('{"i": 0}\n')

    reopened = JsonLinesSource(path, checkpoint=checkpoint)
    with pytest.raises(CheckpointError) as info:
        await reopened.open()
    await reopened.close()
    assert str(checkpoint) in str(info.value) and "past the end" in str(info.value)


async def test_a_checkpoint_of_another_file_is_refused(tmp_path: Path) -> None:
    """A checkpoint written while reading one file, pointed at by a pipeline reading
    another, is refused, naming both and the fix, rather than seeking into the wrong
    file."""
    first, second, checkpoint = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "c.json"
    write_lines(first, 10)
    write_lines(second, 10)
    source = JsonLinesSource(first, checkpoint=checkpoint)
    await source.open()
    await read_all(source)
    await source.commit({(source.topic, 0): 5})
    await source.close()

    other = JsonLinesSource(second, checkpoint=checkpoint)
    with pytest.raises(CheckpointError) as info:
        await other.open()
    await other.close()
    message = str(info.value)
    assert "belongs to" in message and str(first) in message and str(second) in message
    assert "delete it" in message


def test_stdin_cannot_take_a_checkpoint(tmp_path: Path) -> None:
    """Standard input cannot seek, so a checkpoint with "-" is rejected up front."""
    with pytest.raises(ValueError, match="checkpoint"):
        JsonLinesSource("-", checkpoint=tmp_path / "ckpt.json")
    assert JsonLinesSource("-").path == "-"


# -- sinks -----------------------------------------------------------------------------------


def batch() -> ScoredBatch:
    records = [
        Record(
            key="pump-1",
            value={"x": [1.0, 2.0]},
            event_time=100.0,
            topic="sensors",
            partition=0,
            offset=7,
        ),
        Record(
            key=None,
            value={"x": [3.0, 4.0]},
            event_time=101.5,
            topic="sensors",
            partition=2,
            offset=8,
        ),
    ]
    return ScoredBatch(
        records=records,
        predictions=[0.25, [0.1, 0.9]],
        model=ModelRef("iforest", "3"),
        processed_at=200.0,
    )


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_sink_writes_the_documented_output_shape(tmp_path: Path) -> None:
    """One JSON object per output, with exactly the documented keys and values."""
    path = tmp_path / "nested" / "out.jsonl"
    sink = JsonLinesSink(path)
    await sink.open()
    await sink.write(batch())
    await sink.write(
        ScoredBatch(records=[], predictions=[], model=ModelRef("iforest", "3"), processed_at=201.0)
    )
    await sink.flush()
    await sink.close()
    rows = read_jsonl(path)
    assert all(set(row) == OUTPUT_KEYS for row in rows)
    assert rows == [
        {
            "key": "pump-1",
            "input": {"x": [1.0, 2.0]},
            "prediction": 0.25,
            "model": {"name": "iforest", "version": "3", "sha256": None},
            "source": {"topic": "sensors", "partition": 0, "offset": 7},
            "event_time": 100.0,
            "processed_at": 200.0,
        },
        {
            "key": None,
            "input": {"x": [3.0, 4.0]},
            "prediction": [0.1, 0.9],
            "model": {"name": "iforest", "version": "3", "sha256": None},
            "source": {"topic": "sensors", "partition": 2, "offset": 8},
            "event_time": 101.5,
            "processed_at": 200.0,
        },
    ]


async def test_sink_writes_the_failure_shape(tmp_path: Path) -> None:
    """Dead letters carry the input, the raw bytes as text, the stage and the error."""
    path = tmp_path / "dead.jsonl"
    failures = [
        FailedRecord(
            record=Record(
                key=None,
                value=None,
                event_time=5.0,
                topic="in",
                partition=0,
                offset=3,
                raw=b'{"bad\xff',
            ),
            stage="decode",
            error="truncated",
            error_type="DecodeError",
        ),
        FailedRecord(
            record=Record(
                key="k", value={"x": 1}, event_time=6.0, topic="in", partition=0, offset=4
            ),
            stage="model",
            error="boom",
            error_type="RuntimeError",
            model=ModelRef("m", "1"),
        ),
    ]
    sink = JsonLinesSink(path)
    await sink.open()
    await sink.write_failures(failures)
    await sink.write_failures([])
    await sink.close()
    rows = read_jsonl(path)
    assert all(set(row) == FAILURE_KEYS for row in rows)
    assert rows[0] == {
        "key": None,
        "input": None,
        "raw": '{"bad\ufffd',
        "stage": "decode",
        "error_type": "DecodeError",
        "error": "truncated",
        "attempts": 1,
        "model": None,
        "source": {"topic": "in", "partition": 0, "offset": 3},
        "event_time": 5.0,
    }
    assert rows[1]["raw"] is None and rows[1]["input"] == {"x": 1}
    assert rows[1]["model"] == {"name": "m", "version": "1", "sha256": None}
    assert (rows[1]["stage"], rows[1]["error"]) == ("model", "boom")


async def test_sink_appends_across_runs(tmp_path: Path) -> None:
    """A restarted sink appends to the file; it never truncates earlier outputs."""
    path = tmp_path / "out.jsonl"
    for _ in range(2):
        sink = JsonLinesSink(path, fsync=True)
        await sink.open()
        await sink.write(batch())
        await sink.close()
    assert [row["source"]["offset"] for row in read_jsonl(path)] == [7, 8, 7, 8]


async def test_sink_cuts_a_half_written_last_line_before_appending(tmp_path: Path) -> None:
    """A crash mid-write leaves a partial last line (its record was never committed, so it
    is written again): a reopened sink cuts it, and every line stays one JSON object."""
    path = tmp_path / "out.jsonl"
    sink = JsonLinesSink(path, fsync=True)
    await sink.open()
    await sink.write(batch())
    await sink.close()
    whole = path.read_bytes()
    with path.open("ab") as f:
        f.write(whole.splitlines(keepends=True)[0][:25])  # the crash, mid-line
    sink = JsonLinesSink(path, fsync=True)
    await sink.open()
    await sink.write(batch())
    await sink.close()
    assert path.read_bytes() == whole * 2
    assert [row["source"]["offset"] for row in read_jsonl(path)] == [7, 8, 7, 8]


async def test_sink_write_before_open_is_an_error(tmp_path: Path) -> None:
    """Writing to a sink that is not open fails instead of losing the batch."""
    with pytest.raises(RuntimeError, match="not open"):
        await JsonLinesSink(tmp_path / "out.jsonl").write(batch())


async def test_null_sink_counts() -> None:
    """The null sink discards but counts outputs and failures."""
    sink = NullSink()
    await sink.write(batch())
    await sink.write(batch())
    record = Record(key=None, value=None, event_time=0.0, topic="t", partition=0, offset=0)
    await sink.write_failures(
        [FailedRecord(record=record, stage="decode", error="x", error_type="DecodeError")]
    )
    assert (sink.written, sink.failed) == (4, 1)
