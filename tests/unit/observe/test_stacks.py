"""SIGUSR1 while a pipeline runs (headrace.observe.stacks): installed for the run, and
what was there before put back after it (a program of the user's may have its own)."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

from headrace.observe import stacks


def test_a_programs_own_handler_is_put_back_after_the_run() -> None:
    seen: list[int] = []

    def mine(signum: int, frame: Any) -> None:
        seen.append(signum)

    before = signal.signal(signal.SIGUSR1, mine)
    try:

        async def run() -> object:
            loop = asyncio.get_running_loop()
            previous = stacks.install(loop)
            during = signal.getsignal(signal.SIGUSR1)
            stacks.uninstall(loop, previous)
            return during

        during = asyncio.run(run())
        assert during is not mine
        assert signal.getsignal(signal.SIGUSR1) is mine
        signal.raise_signal(signal.SIGUSR1)
        assert seen == [signal.SIGUSR1]
    finally:
        signal.signal(signal.SIGUSR1, before)
