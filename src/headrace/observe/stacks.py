"""What a worker is doing, on request: ``kill -USR1 PID``.

Every thread's stack, written by ``faulthandler`` from the signal handler itself, so
also while the event loop's thread is stuck in a call; then, once the event loop gets to
it, every asyncio task's await chain: what each part of the engine awaits (a commit
waiting on a sink, a revocation waiting for records). A handler of the loop's alone
printed nothing for a worker whose loop was stuck (CI, 2026-12-07).
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import signal
import sys
from collections.abc import Iterator
from typing import Any, TextIO

SIGNAL = signal.SIGUSR1


def register_thread_dump() -> None:
    """Thread stacks on SIGUSR1, from now on (before and after the event loop runs)."""
    faulthandler.register(SIGNAL, all_threads=True)


def dump_tasks(out: TextIO | None = None) -> None:
    """Every task's await chain of the running loop, on ``out`` (stderr)."""
    out = out or sys.stderr
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


#: What :func:`install` found: whether thread dumps were registered, and the handler.
Previous = tuple[bool, Any]


def install(loop: asyncio.AbstractEventLoop) -> Previous:
    """While ``loop`` runs, SIGUSR1 dumps the threads at once (faulthandler, chained in
    front of the loop's own handler) and then the tasks, when the loop gets to it. Returns
    what was there, for :func:`uninstall` to put back (a program of the user's may have
    its own SIGUSR1 handler)."""
    with _held():
        # faulthandler keeps the handler it found when first registered: so off first,
        # then the loop's, then faulthandler again in front of it.
        # typeshed says None; it returns whether a handler was registered.
        dumping = bool(faulthandler.unregister(SIGNAL))  # type: ignore[func-returns-value]
        previous = signal.getsignal(SIGNAL)
        loop.add_signal_handler(SIGNAL, dump_tasks)
        faulthandler.register(SIGNAL, all_threads=True, chain=True)
    return dumping, previous


def uninstall(loop: asyncio.AbstractEventLoop, previous: Previous) -> None:
    """Put back what :func:`install` found (removing a loop's handler alone would leave
    the default, which ends the process)."""
    dumping, handler = previous
    with _held():
        faulthandler.unregister(SIGNAL)
        loop.remove_signal_handler(SIGNAL)
        if handler is not None:
            signal.signal(SIGNAL, handler)
        if dumping:
            register_thread_dump()


@contextlib.contextmanager
def _held() -> Iterator[None]:
    """SIGUSR1 held back while its handlers change (between two, the default would end
    the process); one that came meanwhile is delivered after."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {SIGNAL})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {SIGNAL})
