"""The JSON-lines source on a pipe (standard input): lines as they arrive, not in chunks."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import sys
import time
from collections.abc import AsyncIterator

import pytest

from headrace.connectors import JsonLinesSource
from headrace.record import Record


@pytest.fixture
async def stdin_pipe(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[int]:
    """Standard input replaced by the read end of a pipe; yields the write end.

    Asynchronous so that the pipe is closed before the event loop is: a read still
    waiting on it (a failing test) then ends instead of holding the loop's teardown."""
    read_fd, write_fd = os.pipe()
    reader = io.TextIOWrapper(io.FileIO(read_fd, "rb"))
    monkeypatch.setattr(sys, "stdin", reader)
    try:
        yield write_fd
    finally:
        with contextlib.suppress(OSError):  # unless the test closed it
            os.close(write_fd)
        reader.close()


async def open_stdin() -> JsonLinesSource:
    source = JsonLinesSource("-")
    await source.open()
    return source


class Reading:
    """Chunks read from a source in a task of their own, awaited one by one."""

    def __init__(self, source: JsonLinesSource) -> None:
        self.source = source
        self.chunks: asyncio.Queue[list[Record] | None] = asyncio.Queue()
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for chunk in self.source.chunks():
                assert chunk, "a chunk is never empty"
                self.chunks.put_nowait(chunk)
        finally:
            self.chunks.put_nowait(None)

    async def next(self) -> list[Record] | None:
        """The next chunk (None at the end); a test that gets none in 5 s fails."""
        async with asyncio.timeout(5):
            return await self.chunks.get()

    async def rest(self) -> list[Record]:
        """Every record up to the end of input."""
        records: list[Record] = []
        while (chunk := await self.next()) is not None:
            records.extend(chunk)
        await self.task
        return records


async def test_a_line_is_delivered_while_the_pipe_stays_open(stdin_pipe: int) -> None:
    """One complete line is a chunk at once, without more data or the end of input."""
    reading = Reading(await open_stdin())
    os.write(stdin_pipe, b'{"a": 1}\n')
    first = await reading.next()
    assert first is not None and [(r.offset, r.raw) for r in first] == [(0, b'{"a": 1}')]
    os.write(stdin_pipe, b'{"a": 2}\n')
    second = await reading.next()
    assert second is not None and [(r.offset, r.raw) for r in second] == [(1, b'{"a": 2}')]
    os.close(stdin_pipe)
    assert await reading.rest() == []
    await reading.source.close()


async def test_event_time_is_when_the_line_arrived_not_when_input_ended(
    stdin_pipe: int,
) -> None:
    """A record's event time (arrival time, for this source) is taken when its line can
    be read, not later when more input or the end of input comes."""
    reading = Reading(await open_stdin())
    await asyncio.sleep(0.05)  # the reader waits on the empty pipe (or will, soon)
    written = time.time()
    os.write(stdin_pipe, b'{"a": 1}\n')
    await asyncio.sleep(0.5)
    ended = time.time()
    os.close(stdin_pipe)
    [record] = await reading.rest()
    await reading.source.close()
    assert written <= record.event_time < written + (ended - written) / 2


async def test_partial_lines_blank_lines_and_a_last_line_without_newline(
    stdin_pipe: int,
) -> None:
    """A line split across writes becomes one record once complete; blank lines count
    but make no record; a last line without a newline is a record at the end of input.
    Offsets are line numbers, as for files; only a newline ends a line."""
    reading = Reading(await open_stdin())
    os.write(stdin_pipe, b'{"a": 1}\n\n{"a":')
    first = await reading.next()
    assert first is not None and [(r.offset, r.raw) for r in first] == [(0, b'{"a": 1}')]
    os.write(stdin_pipe, b' 2}\r\n   \n{"a": "x\ry"}\n{"a": 3}')
    second = await reading.next()
    assert second is not None
    assert [(r.offset, r.raw) for r in second] == [(2, b'{"a": 2}'), (4, b'{"a": "x\ry"}')]
    await asyncio.sleep(0.05)
    assert reading.chunks.empty(), "the incomplete last line waits for its newline or the end"
    os.close(stdin_pipe)
    last = await reading.rest()
    await reading.source.close()
    assert [(r.offset, r.raw) for r in last] == [(5, b'{"a": 3}')]
    assert all(r.topic == "-" and r.partition == 0 for r in [*first, *second, *last])


async def test_more_than_one_read_of_lines_arrives_whole(stdin_pipe: int) -> None:
    """Input larger than one read (and than the pipe's buffer) arrives line by line,
    every line once and in order."""
    reading = Reading(await open_stdin())
    data = b"".join(b'{"i": %d}\n' % i for i in range(100_000))

    def write_all() -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(stdin_pipe, view[:7919]) :]
        os.close(stdin_pipe)

    writing = asyncio.create_task(asyncio.to_thread(write_all))
    records = await reading.rest()
    await writing
    await reading.source.close()
    assert [r.offset for r in records] == list(range(100_000))
    assert [r.raw for r in records[-2:]] == [b'{"i": 99998}', b'{"i": 99999}']


async def test_cancelling_a_read_that_waits_on_stdin_returns_at_once(stdin_pipe: int) -> None:
    """The engine stops by cancelling its reader: a read waiting on a silent, open pipe
    ends at once, and reads nothing it would drop: the next reader gets what comes after."""
    reading = Reading(await open_stdin())
    await asyncio.sleep(0.05)
    reading.task.cancel()
    async with asyncio.timeout(1):
        with pytest.raises(asyncio.CancelledError):
            await reading.task
    await reading.source.close()

    again = Reading(await open_stdin())
    os.write(stdin_pipe, b'{"a": 1}\n')
    os.close(stdin_pipe)
    assert [r.raw for r in await again.rest()] == [b'{"a": 1}']
    await again.source.close()


async def test_stdin_from_dev_null_is_empty_input(monkeypatch: pytest.MonkeyPatch) -> None:
    """``/dev/null`` (a service's usual stdin) cannot be watched by the event loop: it is
    read another way, and is simply empty."""
    with io.TextIOWrapper(io.FileIO(os.devnull, "rb")) as null:
        monkeypatch.setattr(sys, "stdin", null)
        source = await open_stdin()
        assert await Reading(source).rest() == []
        await source.close()


async def test_without_add_reader_lines_still_stream(
    stdin_pipe: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An event loop that cannot watch descriptors: reads happen in a daemon thread, line
    by line all the same, and a read waiting on the open pipe can still be cancelled."""

    def refuse(*args: object) -> None:
        raise NotImplementedError

    monkeypatch.setattr(asyncio.get_running_loop(), "add_reader", refuse)
    reading = Reading(await open_stdin())
    os.write(stdin_pipe, b'{"a": 1}\n{"a"')
    first = await reading.next()
    assert first is not None and [(r.offset, r.raw) for r in first] == [(0, b'{"a": 1}')]
    reading.task.cancel()
    async with asyncio.timeout(1):
        with pytest.raises(asyncio.CancelledError):
            await reading.task
    await reading.source.close()
