"""JSON-lines files: a source that resumes where it stopped, and a sink."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import stat
import sys
import threading
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import msgspec
import numpy as np

from headrace.batch import RecordBatch, encode_outputs
from headrace.connectors.base import PartitionKey, Sink, SinkContext, Source
from headrace.errors import HeadraceError
from headrace.record import FailedRecord, Record, ScoredBatch, source_record

_READ_HINT = 256 * 1024

log = logging.getLogger("headrace")


class CheckpointError(HeadraceError, RuntimeError):
    """A stored position does not fit the file it belongs to."""


class JsonLinesSource(Source):
    """Reads one JSON document per line from a file, or from standard input (``"-"``).

    A record's offset is its line number (0-based); blank lines are skipped. With a
    ``checkpoint`` path, committed positions are stored there (line number and byte offset,
    written atomically), and a restart resumes at the first unfinished line. Values are
    decoded by the engine, so a malformed line becomes a dead letter, not a crash.

    A regular file is read in large chunks. Anything else (standard input as a pipe or a
    terminal, a named pipe) is read as it fills: a line is delivered as soon as it is
    complete, without waiting for more input, and its arrival time is taken then.

    Asked to (:meth:`read_as_batches`, when the engine decodes straight into the model's
    columns), each run of consecutive non-blank lines of a read is delivered as one
    :class:`~headrace.batch.RecordBatch` of their bytes instead of a record per line.
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
        self._as_batches = False

    def read_as_batches(self) -> bool:
        self._as_batches = True
        return True

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

    async def chunks(self) -> AsyncIterator[Sequence[Record]]:
        f = self._file
        if f is None:
            raise RuntimeError("open() the source before reading")
        fd = _stream_fd(f)
        reads = self._file_reads(f) if fd is None else self._stream_reads(fd)
        async for lines, now, newline in reads:
            if self._as_batches:
                for batch in self._batches(lines, now, newline):
                    yield batch
                continue
            records = self._records(lines, now, newline)
            if records:
                yield records

    async def _file_reads(self, f: IO[bytes]) -> AsyncIterator[tuple[list[bytes], float, int]]:
        """A regular file: large reads of whole lines (each with its newline)."""
        while True:
            lines = await asyncio.to_thread(f.readlines, _READ_HINT)
            if not lines:
                return
            yield lines, time.time(), 0

    async def _stream_reads(self, fd: int) -> AsyncIterator[tuple[list[bytes], float, int]]:
        """A pipe, terminal or socket: the complete lines of each read, without their
        newline, as soon as they can be read; a last line without one at the end of input.

        The time is taken as each read returns, which is when its bytes arrived unless the
        engine was not asking for more (paused, or busy): a line's arrival time, the
        records' event time when no ``time_field`` gives one.
        """
        partial: list[bytes] = []  # the start of a line whose newline has not come yet
        while True:
            data, now = await _read_available(fd)
            if not data:
                if partial:
                    yield [b"".join(partial)], now, 0
                return
            cut = data.rfind(b"\n")
            if cut < 0:
                partial.append(data)
                continue
            if partial:
                partial.append(data[:cut])
                block = b"".join(partial)
                partial = []
            else:
                block = data[:cut]
            if cut + 1 < len(data):
                partial.append(data[cut + 1 :])
            # Only b"\n" ends a line, as for files: not bytes.splitlines()'s b"\r".
            yield block.split(b"\n"), now, 1

    def _lines(self, lines: list[bytes], newline: int) -> list[tuple[int, bytes]]:
        """The line number and stripped bytes of each non-blank line among ``lines``
        (consecutive lines, each ``newline`` bytes longer than it is here); moves the
        read position past them."""
        out: list[tuple[int, bytes]] = []
        byte = self._end_byte
        line = self._line
        # Where each line starts is only needed to store a committed position.
        starts = self._starts if self.checkpoint is not None else None
        for raw in lines:
            if starts is not None:
                starts[line] = byte
            byte += len(raw) + newline
            stripped = raw.strip()
            if stripped:
                out.append((line, stripped))
            line += 1
        self._line = line
        self._end_line, self._end_byte = line, byte
        return out

    def _records(self, lines: list[bytes], now: float, newline: int) -> list[Record]:
        """A record per non-blank line."""
        topic = self.topic
        return [
            source_record(
                key=None,
                value=None,
                event_time=now,
                topic=topic,
                partition=0,
                offset=line,
                raw=stripped,
            )
            for line, stripped in self._lines(lines, newline)
        ]

    def _batches(self, lines: list[bytes], now: float, newline: int) -> list[RecordBatch]:
        """The runs of consecutive non-blank lines as batches of their bytes (a blank line
        is no record, so it ends a run: a batch's offsets are consecutive)."""
        batches: list[RecordBatch] = []
        raws: list[bytes] = []
        first = after = -1
        for line, stripped in self._lines(lines, newline):
            if line != after and raws:
                batches.append(_raw_batch(self.topic, first, raws, now))
                raws = []
            if not raws:
                first = line
            raws.append(stripped)
            after = line + 1
        if raws:
            batches.append(_raw_batch(self.topic, first, raws, now))
        return batches

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


def _raw_batch(topic: str, first: int, raws: list[bytes], now: float) -> RecordBatch:
    n = len(raws)
    return RecordBatch(
        topic=topic,
        partition=0,
        offsets=range(first, first + n),
        keys=[None] * n,
        event_times=np.full(n, now),
        columns={},
        values_from=_undecoded,
        raws=raws,
    )


def _undecoded(batch: RecordBatch) -> list[Any]:
    """Lines as read, before decoding: no values yet."""
    return [None] * len(batch)


def _stream_fd(f: IO[bytes]) -> int | None:
    """The descriptor to read ``f`` through as it fills (anything but a regular file:
    a pipe, terminal, socket), or None to read it in large chunks (a regular file, or an
    object with no descriptor)."""
    try:
        fd = f.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError
        return None
    if stat.S_ISREG(os.fstat(fd).st_mode):
        return None
    return fd


async def _read_available(fd: int) -> tuple[bytes, float]:
    """What ``fd`` has (up to ``_READ_HINT`` bytes) as soon as it has anything, ``b""`` at
    the end of input; and the time the read returned.

    The event loop watches the descriptor (``add_reader``) and reads it once it is
    readable, so the read never waits for more and no thread is involved. That matters
    when the engine stops: it cancels the reader, which here just stops watching, at once
    and without reading anything it would then drop. A thread blocked in ``read`` on a
    silent pipe could not be interrupted: ``asyncio.run`` (which joins the default
    executor) and the interpreter's exit would wait for it, so ``headrace run`` would hang
    on SIGTERM until stdin closed. The descriptor is left in blocking mode, unlike with
    ``loop.connect_read_pipe``: stdin's mode is shared with the processes it came from (a
    shell's terminal left non-blocking breaks it), and one read after readiness does not
    block on a pipe, terminal or socket (unless another process reads the same pipe and
    takes the bytes first: then the read waits for more, as any read of it would).

    Descriptors the selector cannot watch (``/dev/null``, whose reads never wait) and
    loops without ``add_reader`` are read in a daemon thread: one that waits on a silent
    descriptor does not keep the process from exiting.
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[tuple[bytes, float]] = loop.create_future()

    def readable() -> None:
        if done.done():
            return
        try:
            data = os.read(fd, _READ_HINT)
            done.set_result((data, time.time()))
        except BlockingIOError:
            return  # non-blocking, and another reader took the bytes: wait for more
        except OSError as exc:
            done.set_exception(exc)

    try:
        loop.add_reader(fd, readable)
    except (PermissionError, NotImplementedError):
        return await _read_in_thread(fd, loop)
    try:
        return await done
    finally:
        loop.remove_reader(fd)


async def _read_in_thread(fd: int, loop: asyncio.AbstractEventLoop) -> tuple[bytes, float]:
    done: asyncio.Future[tuple[bytes, float]] = loop.create_future()

    def settle(result: tuple[bytes, float] | OSError) -> None:
        if done.done():
            return  # cancelled: the engine stopped
        if isinstance(result, OSError):
            done.set_exception(result)
        else:
            done.set_result(result)

    def read() -> None:
        result: tuple[bytes, float] | OSError
        try:
            data = os.read(fd, _READ_HINT)
            result = (data, time.time())
        except OSError as exc:
            result = exc
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(settle, result)

    threading.Thread(target=read, name="headrace-stdin", daemon=True).start()
    return await done


class JsonLinesSink(Sink):
    """Appends one JSON object per output to a file, or writes them to standard output
    (``"-"``). ``fsync`` makes each flush durable against power loss, at a cost.

    Where the pipeline's inputs go as read (:class:`~headrace.connectors.base.SinkContext`),
    an output's ``input`` is the event's bytes as they were read (the same JSON, its
    spacing kept), and a batch held as columns is written without building its records."""

    # With inputs as read, a batch of columns is written without its records' values.
    reads_values = False

    def __init__(self, path: str | Path, *, fsync: bool = False, name: str = "jsonl") -> None:
        self.path = str(path)
        self.fsync = fsync
        self.name = name
        self._file: IO[bytes] | None = None
        self._encoder = msgspec.json.Encoder()
        self._raw_inputs = False

    def bind(self, context: SinkContext) -> None:
        self._raw_inputs = context.inputs_as_read

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
        if not len(batch):
            return
        if self._file is None:
            raise RuntimeError(f"sink {self.name!r} is not open")
        _, docs = encode_outputs(batch, self._encoder.encode, raw_inputs=self._raw_inputs)
        docs.append(b"")
        self._file.write(b"\n".join(docs))

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

    reads_values = False

    def __init__(self, *, name: str = "null") -> None:
        self.name = name
        self.written = 0
        self.failed = 0

    async def write(self, batch: ScoredBatch) -> None:
        self.written += len(batch)

    async def write_failures(self, failures: Sequence[FailedRecord]) -> None:
        self.failed += len(failures)
