"""JSON-lines files: a source that resumes where it stopped, and a sink."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import msgspec

from headrace.connectors.base import PartitionKey, Sink, Source
from headrace.record import FailedRecord, Record, ScoredBatch

_READ_HINT = 256 * 1024

log = logging.getLogger("headrace")


class CheckpointError(RuntimeError):
    """A stored position does not fit the file it belongs to."""


class JsonLinesSource(Source):
    """Reads one JSON document per line from a file, or from standard input (``"-"``).

    A record's offset is its line number (0-based); blank lines are skipped. With a
    ``checkpoint`` path, committed positions are stored there (line number and byte offset,
    written atomically), and a restart resumes at the first unfinished line. Values are
    decoded by the engine, so a malformed line becomes a dead letter, not a crash.
    """

    def __init__(
        self, path: str | Path, *, checkpoint: str | Path | None = None, name: str = "jsonl"
    ) -> None:
        self.path = str(path)
        self.topic = self.path
        self._abspath = os.path.abspath(self.path)
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        if self.path == "-" and self.checkpoint is not None:
            raise ValueError("standard input cannot resume: a checkpoint needs a file")
        self.name = name
        self._file: IO[bytes] | None = None
        self._line = 0
        # Byte offset where each uncommitted line starts, to turn a line into a seek position.
        self._starts: dict[int, int] = {}
        self._end_line = 0
        self._end_byte = 0

    async def open(self) -> None:
        if self.path == "-":
            self._file = sys.stdin.buffer
            return
        self._file = open(self.path, "rb")  # noqa: SIM115, ASYNC230 - closed in close(); fast
        if self.checkpoint is not None and self.checkpoint.exists():
            state = json.loads(self.checkpoint.read_text())
            line, byte = int(state["line"]), int(state["byte"])
            stored = state.get("path")
            if stored is not None and stored != self._abspath:
                raise CheckpointError(
                    f"{self.checkpoint}: the checkpoint belongs to {stored}, not to "
                    f"{self._abspath}. Point `checkpoint` at a file of its own, "
                    "or delete it to read from the start."
                )
            size = os.fstat(self._file.fileno()).st_size
            if byte > size:
                raise CheckpointError(
                    f"{self.checkpoint}: position byte {byte} is past the end of {self.path} "
                    f"({size} bytes): the file was truncated or replaced. Delete the "
                    "checkpoint to read the file from the start."
                )
            self._file.seek(byte)
            self._line = self._end_line = line
            self._end_byte = byte

    async def chunks(self) -> AsyncIterator[list[Record]]:
        f = self._file
        if f is None:
            raise RuntimeError("open() the source before reading")
        topic = self.topic
        while True:
            lines = await asyncio.to_thread(f.readlines, _READ_HINT)
            if not lines:
                return
            now = time.time()
            records = []
            byte = self._end_byte
            line = self._line
            starts = self._starts
            for raw in lines:
                starts[line] = byte
                byte += len(raw)
                stripped = raw.strip()
                if stripped:
                    records.append(Record(None, None, now, topic, 0, line, raw=stripped))
                line += 1
            self._line = line
            self._end_line, self._end_byte = line, byte
            if records:
                yield records

    async def commit(self, positions: Mapping[PartitionKey, int]) -> None:
        line = positions.get((self.topic, 0))
        if line is None or self.checkpoint is None:
            return
        byte = self._starts.get(line)
        if byte is None:
            # Everything read so far is finished: resume after the last line read.
            line, byte = self._end_line, self._end_byte
        for done in [k for k in self._starts if k < line]:
            del self._starts[done]
        await asyncio.to_thread(self._store, line, byte)

    def _store(self, line: int, byte: int) -> None:
        assert self.checkpoint is not None
        tmp = self.checkpoint.with_name(self.checkpoint.name + ".tmp")
        state = {"line": line, "byte": byte, "path": self._abspath}
        with open(tmp, "w") as f:
            f.write(json.dumps(state))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.checkpoint)

    async def close(self) -> None:
        if self._file is not None and self._file is not sys.stdin.buffer:
            self._file.close()
        self._file = None


class JsonLinesSink(Sink):
    """Appends one JSON object per output to a file, or writes them to standard output
    (``"-"``). ``fsync`` makes each flush durable against power loss, at a cost."""

    def __init__(self, path: str | Path, *, fsync: bool = False, name: str = "jsonl") -> None:
        self.path = str(path)
        self.fsync = fsync
        self.name = name
        self._file: IO[bytes] | None = None
        self._encoder = msgspec.json.Encoder()

    async def open(self) -> None:
        if self.path == "-":
            self._file = sys.stdout.buffer
        else:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            _drop_partial_last_line(self.path)
            self._file = open(self.path, "ab")  # noqa: SIM115, ASYNC230 - closed in close(); fast

    def _write_lines(self, rows: list[dict[str, Any]]) -> None:
        if self._file is None:
            raise RuntimeError(f"sink {self.name!r} is not open")
        self._file.write(self._encoder.encode_lines(rows))

    async def write(self, batch: ScoredBatch) -> None:
        if len(batch):
            self._write_lines(batch.to_dicts())

    async def write_failures(self, failures: Sequence[FailedRecord]) -> None:
        if failures:
            self._write_lines([f.to_dict() for f in failures])

    async def flush(self) -> None:
        if self._file is None:
            return
        self._file.flush()
        if self.fsync and self._file is not sys.stdout.buffer:
            await asyncio.to_thread(os.fsync, self._file.fileno())

    async def close(self) -> None:
        if self._file is None:
            return
        await self.flush()
        if self._file is not sys.stdout.buffer:
            self._file.close()
        self._file = None


def _drop_partial_last_line(path: str) -> None:
    """Cut a line left half-written by a crash, so appends start on a line of their own.

    Its record was never committed (commits follow flushes), so it will be written again.
    """
    try:
        f = open(path, "r+b")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        return
    with f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        end = size
        while end > 0:
            start = max(0, end - 65536)
            f.seek(start)
            block = f.read(end - start)
            cut = block.rfind(b"\n")
            if cut >= 0:
                f.truncate(start + cut + 1)
                break
            end = start
        else:
            f.truncate(0)
        log.warning("%s ended in a partial line (an earlier crash); it was removed", path)


class StdoutSink(JsonLinesSink):
    """JSON lines on standard output."""

    def __init__(self, *, name: str = "stdout") -> None:
        super().__init__("-", name=name)


class NullSink(Sink):
    """Accepts and discards everything, counting it: for benchmarks and dry runs."""

    def __init__(self, *, name: str = "null") -> None:
        self.name = name
        self.written = 0
        self.failed = 0

    async def write(self, batch: ScoredBatch) -> None:
        self.written += len(batch)

    async def write_failures(self, failures: Sequence[FailedRecord]) -> None:
        self.failed += len(failures)
