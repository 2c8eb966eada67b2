"""What a worker is doing, on request: ``kill -USR1 PID``.

Every thread's stack (``faulthandler``, which also works while the event loop's thread
is stuck in C), and while the event loop runs, every asyncio task's: what each part of
the engine awaits (a commit waiting on a sink, a revocation waiting for records). A
worker that did not stop in a test run could only be guessed at without the second.
"""

from __future__ import annotations

import asyncio
import faulthandler
import signal
import sys
from typing import Any, TextIO

SIGNAL = signal.SIGUSR1


def register_thread_dump() -> None:
    """Thread stacks on SIGUSR1, from now on (before and after the event loop runs)."""
    faulthandler.register(SIGNAL, all_threads=True)


def dump_stacks(out: TextIO | None = None) -> None:
    """Every thread's stack, then every task's of the running loop, on ``out`` (stderr)."""
    out = out or sys.stderr
    faulthandler.dump_traceback(file=out, all_threads=True)
    tasks = asyncio.all_tasks()
    out.write(f"\n{len(tasks)} asyncio tasks (outermost call first):\n")
    for task in sorted(tasks, key=lambda t: t.get_name()):
        out.write(f"Task {task.get_name()!r}:\n")
        for line in awaiting(task.get_coro()):
            out.write(f"  {line}\n")
    out.flush()


def awaiting(coro: Any) -> list[str]:
    """Where a coroutine and each one it awaits stand, outermost first (a task's own
    ``print_stack`` shows only the outermost).

    >>> async def inner(): await asyncio.sleep(1)
    >>> async def outer(): await inner()
    >>> async def look():
    ...     task = asyncio.ensure_future(outer())
    ...     await asyncio.sleep(0)
    ...     lines = awaiting(task.get_coro())
    ...     task.cancel()
    ...     return [line.split(" in ")[1] for line in lines]
    >>> asyncio.run(look())[:3]
    ['outer', 'inner', 'sleep']
    """
    lines: list[str] = []
    for _ in range(64):  # a chain this deep is not the engine's
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is None:
            break
        code = frame.f_code
        lines.append(f'File "{code.co_filename}", line {frame.f_lineno}, in {code.co_name}')
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
        if coro is None:
            break
    return lines


def install(loop: asyncio.AbstractEventLoop) -> None:
    """SIGUSR1 dumps threads and tasks while ``loop`` runs."""
    loop.add_signal_handler(SIGNAL, dump_stacks)


def uninstall(loop: asyncio.AbstractEventLoop) -> None:
    """Back to thread stacks only (removing a loop's handler would leave the default,
    which ends the process)."""
    loop.remove_signal_handler(SIGNAL)
    register_thread_dump()
