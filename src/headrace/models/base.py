"""The one protocol every model follows, and the plain-callable adapter."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from headrace.record import ModelRef


@runtime_checkable
class Model(Protocol):
    """Anything with a name, a version and ``predict_batch(inputs) -> outputs``.

    ``inputs`` is whatever the featurizer produced for a batch (a 2-D NumPy array with the
    built-in featurizer, or the list of decoded values without one). The result must hold
    exactly one output per input: a sequence or an array whose first axis is the batch.
    ``predict_batch`` may be a plain function (run in an executor thread, never on the event
    loop) or a coroutine function (awaited).
    """

    name: str
    version: str

    def predict_batch(self, inputs: Any) -> Any: ...


def model_ref(model: Model) -> ModelRef:
    """Name, version and sha256 prefix (from a ``sha256`` attribute, where the model has
    one) of a model."""
    digest = getattr(model, "sha256", None)
    return ModelRef(model.name, model.version, digest[:12] if isinstance(digest, str) else None)


def model_label(model: Model) -> str:
    """``name@version``, for logs."""
    ref = model_ref(model)
    return f"{ref.name}@{ref.version}"


class CallableModel:
    """Wraps a Python function that scores a whole batch.

    >>> m = CallableModel(lambda xs: [x * 2 for x in xs], name="double", version="1")
    >>> m.predict_batch([1, 2])
    [2, 4]
    """

    def __init__(self, fn: Callable[[Any], Any], *, name: str, version: str = "0") -> None:
        self._fn = fn
        self.name = name
        self.version = version
        if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
            getattr(fn, "__call__", None)  # noqa: B004
        ):
            # Expose the coroutine function itself, so the engine awaits it on the loop
            # instead of calling it in a thread.
            self.predict_batch = fn  # type: ignore[method-assign,assignment]

    def predict_batch(self, inputs: Any) -> Any:
        return self._fn(inputs)
