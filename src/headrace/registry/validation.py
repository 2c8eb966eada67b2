"""Checking a loaded version before it may serve: signature, sample outputs, latency.

A version that passes has shown that it accepts its declared input, gives the outputs
recorded at registration for its samples, and (with a budget) scores a sample batch fast
enough. Anything else raises :class:`ModelValidationError` saying which check, which
sample and which output position failed.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import statistics
import time
from collections.abc import Callable
from typing import Any, Final

import numpy as np

from headrace.models.base import Model
from headrace.models.integrity import ModelLoadError
from headrace.registry.local import Signature, VersionInfo

#: Timed calls per sample batch when checking a latency budget; the median counts.
LATENCY_RUNS: Final = 5
# Rows of the zero batch that checks the signature: more than one, so a model that
# collapses the batch dimension (returns one value for the batch) is caught.
_ZERO_ROWS: Final = 2


class ModelValidationError(ModelLoadError):
    """A loaded version failed a check; it must not serve."""


def validate_model(
    model: Model,
    info: VersionInfo,
    *,
    latency_budget_s: float | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> None:
    """Run the version's checks on ``model``; raise :class:`ModelValidationError` on the
    first that fails.

    1. Signature: a batch of zeros of the signature's shape and dtype (``None``
       dimensions: 2 rows for the batch, 1 elsewhere) is accepted and gives one output
       per row.
    2. Samples: each sample's input gives one output per row, equal to the expected
       outputs (numbers within the sample's absolute tolerance, other values equal).
    3. Latency, with ``latency_budget_s``: the median of :data:`LATENCY_RUNS` calls on each
       sample (or, without samples, on the zero batch) is within the budget.

    >>> from headrace.models import CallableModel
    >>> from headrace.registry import Sample
    >>> info = VersionInfo(name="double", version="1", format="pickle", artifact="model.pkl",
    ...     sha256="0" * 64, created_at=0.0, samples=[Sample(input=[[1.0]], expected=[2.0])])
    >>> validate_model(CallableModel(lambda xs: [x[0] * 2 for x in xs], name="d"), info)
    >>> validate_model(CallableModel(lambda xs: [x[0] * 3 for x in xs], name="d"), info)
    ... # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    headrace...ModelValidationError: ...: sample 0, output [0]: expected 2.0, got 3.0 (...)
    """
    where = f"model {info.name!r} version {info.version!r}"
    dtype = np.dtype(info.signature.dtype if info.signature is not None else "float32")
    timed: list[tuple[str, Any]] = []

    zero = _zero_batch(info.signature)
    if zero is not None:
        what = f"signature check (a zero batch of shape {list(zero.shape)}, {zero.dtype})"
        out = _call(model, zero, where, what)
        _check_count(out, len(zero), where, what)
        timed.append((what, zero))

    for i, sample in enumerate(info.samples):
        what = f"sample {i}"
        batch = _as_batch(sample.input, dtype)
        out = _call(model, batch, where, what)
        _check_count(out, len(sample.input), where, what)
        problem = _mismatch(_plain(out), sample.expected, sample.tolerance, "")
        if problem is not None:
            raise ModelValidationError(f"{where}: {what}, {problem}")
        timed.append((what, batch))

    if latency_budget_s is None:
        return
    if info.samples:
        timed = [t for t in timed if t[0].startswith("sample")]
    for what, batch in timed:
        runs = []
        for _ in range(LATENCY_RUNS):
            start = clock()
            _call(model, batch, where, what)
            runs.append(clock() - start)
        median = statistics.median(runs)
        if median > latency_budget_s:
            raise ModelValidationError(
                f"{where}: {what} took {_duration(median)} (median of {LATENCY_RUNS} calls), "
                f"over the latency budget of {_duration(latency_budget_s)}"
            )


def _duration(seconds: float) -> str:
    """
    >>> _duration(0.0123), _duration(2.5)
    ('12.3 ms', '2.5 s')
    """
    return f"{seconds * 1000:.3g} ms" if seconds < 1 else f"{seconds:.3g} s"


def _zero_batch(signature: Signature | None) -> np.ndarray | None:
    if signature is None or not signature.shape:
        return None
    first, *rest = signature.shape
    rows = _ZERO_ROWS if first is None else first
    return np.zeros([rows, *(1 if d is None else d for d in rest)], dtype=signature.dtype)


def _as_batch(value: Any, dtype: np.dtype[Any]) -> Any:
    """A numeric sample as the array the featurizer would give; anything else (a list of
    JSON objects for a model without a featurizer) as it is."""
    try:
        arr = np.asarray(value)
    except ValueError:  # ragged
        return value
    if arr.dtype.kind in "biuf":
        return arr.astype(dtype)
    return value


def _call(model: Model, batch: Any, where: str, what: str) -> Any:
    try:
        out = model.predict_batch(batch)
        if inspect.isawaitable(out):
            out = _await(out)
    except ModelValidationError:
        raise
    except Exception as exc:
        raise ModelValidationError(
            f"{where}: {what}: predict_batch raised {type(exc).__name__}: {exc}"
        ) from exc
    return out


def _await(awaitable: Any) -> Any:
    try:
        asyncio.get_running_loop()
    except RuntimeError:

        async def wait() -> Any:
            return await awaitable

        return asyncio.run(wait())
    if inspect.iscoroutine(awaitable):
        awaitable.close()  # never awaited: close it rather than leak a warning
    raise ModelValidationError(
        "validate_model cannot await an async predict_batch on a running event loop; "
        "call it from a worker thread (loop.run_in_executor)"
    )


def _check_count(out: Any, rows: int, where: str, what: str) -> None:
    try:
        count = len(out)
    except TypeError:
        raise ModelValidationError(
            f"{where}: {what}: predict_batch returned a {type(out).__name__}, not one output "
            f"per row"
        ) from None
    if count != rows:
        raise ModelValidationError(
            f"{where}: {what}: {rows} rows in, {count} outputs out; a model gives exactly one "
            "output per row"
        )


def _plain(value: Any) -> Any:
    """NumPy arrays and scalars as Python lists and numbers, for comparison and messages."""
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _mismatch(actual: Any, expected: Any, tolerance: float, at: str) -> str | None:
    """Where ``actual`` first differs from ``expected``, or None when they agree.

    >>> _mismatch([1.0, [2.0, "a"]], [1.0, [2.5, "a"]], 0.1, "")
    'output [1][0]: expected 2.5, got 2.0 (tolerance 0.1)'
    """
    here = f"output {at}" if at else "the output"
    if _is_number(expected) and _is_number(actual):
        if math.isnan(expected) and math.isnan(actual):
            return None
        if abs(actual - expected) <= tolerance:
            return None
        return f"{here}: expected {expected!r}, got {actual!r} (tolerance {tolerance!r})"
    if isinstance(expected, list):
        if not isinstance(actual, list):
            return f"{here}: expected a list, got {actual!r}"
        if len(actual) != len(expected):
            return f"{here}: expected {len(expected)} values, got {len(actual)}"
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            problem = _mismatch(a, e, tolerance, f"{at}[{i}]")
            if problem is not None:
                return problem
        return None
    if isinstance(expected, dict):
        if not isinstance(actual, dict) or set(actual) != set(expected):
            return f"{here}: expected {expected!r}, got {actual!r}"
        for key, e in expected.items():
            problem = _mismatch(actual[key], e, tolerance, f"{at}[{key!r}]")
            if problem is not None:
                return problem
        return None
    if actual == expected and type(actual) is type(expected):
        return None
    return f"{here}: expected {expected!r}, got {actual!r}"
