"""Models for the tests of ``model_calls: process``, in a module of their own so that
the model's process can import them (as it imports a user's)."""

from __future__ import annotations

import os
import time
from typing import Any


def pid(xs: list[Any]) -> list[int]:
    """Which process scored the batch."""
    return [os.getpid()] * len(xs)


def troubled(xs: list[dict[str, Any]]) -> list[float]:
    """Doubles ``x``; a batch holding x == -1 raises, -2 never returns, -3 ends the
    process (as a crash in native code would)."""
    seen = {x["x"] for x in xs}
    if -1 in seen:
        raise ValueError("x is -1")
    if -2 in seen:
        time.sleep(3600)
    if -3 in seen:
        os._exit(3)
    return [x["x"] * 2 for x in xs]


class SlowToLoad:
    """Doubles ``x``; unpickling it takes a second, as a large model's would."""

    name = "slow-to-load"
    version = "1"

    def __setstate__(self, state: dict[str, Any]) -> None:
        time.sleep(1.0)
        self.__dict__.update(state)

    def predict_batch(self, xs: list[dict[str, Any]]) -> list[float]:
        return [x["x"] * 2 for x in xs]


def unsendable(xs: list[Any]) -> Any:
    """Outputs that cannot be pickled back to the worker."""
    return (x for x in xs)
