"""Validating a loaded version: signature, sample outputs and the latency budget."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from headrace.models import CallableModel, ModelLoadError
from headrace.registry import (
    LocalRegistry,
    ModelValidationError,
    Sample,
    Signature,
    VersionInfo,
    load_version,
    validate_model,
)
from headrace.registry.validation import LATENCY_RUNS


def version(
    *, samples: list[Sample] | None = None, signature: Signature | None = None
) -> VersionInfo:
    return VersionInfo(
        name="m",
        version="7",
        format="onnx",
        artifact="model.onnx",
        sha256="0" * 64,
        created_at=0.0,
        signature=signature,
        samples=samples or [],
    )


def model(fn: Callable[[Any], Any]) -> CallableModel:
    return CallableModel(fn, name="m", version="7")


def row_sums(xs: Any) -> Any:
    return np.asarray(xs).sum(axis=1)


# -- with a registered ONNX model ------------------------------------------------------------


def test_registered_model_passes_its_own_samples(
    registry: LocalRegistry, logreg_onnx: Path, logreg: LogisticRegression, data: np.ndarray
) -> None:
    """Samples recorded from the source estimator, a signature and a generous budget: the
    loaded ONNX version passes."""
    sample = Sample(input=data[:8].tolist(), expected=logreg.predict_proba(data[:8]).tolist())
    info = registry.register(
        "lr",
        logreg_onnx,
        format="onnx",
        signature=Signature(shape=[None, data.shape[1]]),
        samples=[sample],
    )
    validate_model(load_version(registry, info), info, latency_budget_s=10.0)


def test_registered_model_failing_its_samples_is_rejected(
    registry: LocalRegistry, logreg_onnx: Path, data: np.ndarray
) -> None:
    """A version whose outputs differ from its samples' (here: samples of another model)
    raises ModelValidationError, which is a ModelLoadError: it never serves."""
    wrong = Sample(input=data[:3].tolist(), expected=[[0.5, 0.5]] * 3, tolerance=0.01)
    info = registry.register("lr", logreg_onnx, format="onnx", samples=[wrong])
    with pytest.raises(ModelValidationError) as exc:
        validate_model(load_version(registry, info), info)
    assert isinstance(exc.value, ModelLoadError)
    message = str(exc.value)
    assert message.startswith("model 'lr' version '1': sample 0, output [0][0]: expected 0.5")
    assert "tolerance 0.01" in message


def test_signature_of_the_wrong_width_is_rejected(
    registry: LocalRegistry, logreg_onnx: Path
) -> None:
    """The zero batch of the declared shape is what the graph must accept: a signature that
    does not match the model fails, naming the shape."""
    info = registry.register("lr", logreg_onnx, format="onnx", signature=Signature(shape=[None, 5]))
    with pytest.raises(
        ModelValidationError,
        match=r"signature check \(a zero batch of shape \[2, 5\], float32\): predict_batch raised",
    ):
        validate_model(load_version(registry, info), info)


# -- samples ---------------------------------------------------------------------------------


def test_numbers_compare_within_tolerance() -> None:
    info = version(samples=[Sample(input=[[1, 2], [3, 4]], expected=[3.05, 6.95], tolerance=0.1)])
    validate_model(model(row_sums), info)
    strict = version(samples=[Sample(input=[[1, 2], [3, 4]], expected=[3.05, 7.0], tolerance=0.01)])
    with pytest.raises(
        ModelValidationError, match=r"sample 0, output \[0\]: expected 3.05, got 3.0"
    ):
        validate_model(model(row_sums), strict)


def test_second_sample_is_named() -> None:
    info = version(
        samples=[
            Sample(input=[[1, 1]], expected=[2]),
            Sample(input=[[1, 1], [2, 2]], expected=[2, 5]),
        ]
    )
    with pytest.raises(ModelValidationError, match=r"sample 1, output \[1\]: expected 5, got 4"):
        validate_model(model(row_sums), info)


def test_non_numbers_must_be_equal() -> None:
    """Labels, dicts and nested lists compare element by element; NaN matches NaN."""

    def label(xs: Any) -> Any:
        return [{"label": "hot" if r[0] > 0 else "cold", "scores": [r[0], math.nan]} for r in xs]

    ok = Sample(
        input=[[1.0], [-1.0]],
        expected=[
            {"label": "hot", "scores": [1.0, math.nan]},
            {"label": "cold", "scores": [-1.0, math.nan]},
        ],
    )
    validate_model(model(label), version(samples=[ok]))
    bad = Sample(input=[[1.0]], expected=[{"label": "cold", "scores": [1.0, math.nan]}])
    with pytest.raises(
        ModelValidationError, match=r"output \[0\]\['label'\]: expected 'cold', got 'hot'"
    ):
        validate_model(model(label), version(samples=[bad]))
    keys = Sample(input=[[1.0]], expected=[{"label": "hot"}])
    with pytest.raises(ModelValidationError, match=r"output \[0\]: expected \{'label': 'hot'\}"):
        validate_model(model(label), version(samples=[keys]))
    shape = Sample(input=[[1.0]], expected=[{"label": "hot", "scores": [1.0]}])
    with pytest.raises(
        ModelValidationError, match=r"output \[0\]\['scores'\]: expected 1 values, got 2"
    ):
        validate_model(model(label), version(samples=[shape]))


def test_bool_is_not_a_number() -> None:
    """True is not 1 within tolerance: a label that changed type is a mismatch."""
    info = version(samples=[Sample(input=[[1]], expected=[True])])
    with pytest.raises(ModelValidationError, match="expected True, got 1"):
        validate_model(model(lambda xs: [1 for _ in xs]), info)


def test_output_count_must_match_the_rows() -> None:
    info = version(samples=[Sample(input=[[1], [2], [3]], expected=[1, 2, 3])])
    with pytest.raises(ModelValidationError, match="sample 0: 3 rows in, 2 outputs out"):
        validate_model(model(lambda xs: [1, 2]), info)
    with pytest.raises(ModelValidationError, match="returned a float, not one output per row"):
        validate_model(model(lambda xs: 1.0), info)


def test_a_raising_model_is_rejected_with_the_cause() -> None:
    def broken(xs: Any) -> Any:
        raise RuntimeError("weights are NaN")

    info = version(samples=[Sample(input=[[1]], expected=[1])])
    with pytest.raises(
        ModelValidationError, match="sample 0: predict_batch raised RuntimeError: weights are NaN"
    ) as exc:
        validate_model(model(broken), info)
    assert isinstance(exc.value.__cause__, RuntimeError)


def test_sample_input_is_cast_to_the_signature_dtype() -> None:
    """Numeric samples reach the model as the featurizer's array would: 2-D, in the
    signature's dtype. Non-numeric samples (JSON objects) pass as they are."""
    seen: list[Any] = []

    def spy(xs: Any) -> Any:
        seen.append(xs)
        return [0 for _ in xs]

    sig = Signature(dtype="float64")
    validate_model(
        model(spy), version(signature=sig, samples=[Sample(input=[[1, 2]], expected=[0])])
    )
    assert isinstance(seen[0], np.ndarray) and seen[0].dtype == np.float64
    objects = [{"a": 1}, {"a": 2}]
    validate_model(model(spy), version(samples=[Sample(input=objects, expected=[0, 0])]))
    assert seen[1] == objects


def test_async_predict_batch_is_awaited() -> None:
    async def double(xs: Any) -> Any:
        await asyncio.sleep(0)
        return [2 * r[0] for r in xs]

    validate_model(model(double), version(samples=[Sample(input=[[1.0]], expected=[2.0])]))


# -- signature -------------------------------------------------------------------------------


def test_zero_batch_gives_one_output_per_row() -> None:
    """The zero batch has 2 rows (None dimensions: 2 for the batch, 1 elsewhere), so a model
    that returns one value for the whole batch is caught."""
    shapes: list[tuple[int, ...]] = []

    def record(xs: Any) -> Any:
        shapes.append(xs.shape)
        return [0.0] * len(xs)

    validate_model(model(record), version(signature=Signature(shape=[None, 3, None])))
    assert shapes == [(2, 3, 1)]
    with pytest.raises(ModelValidationError, match=r"signature check .*: 2 rows in, 1 outputs out"):
        validate_model(model(lambda xs: [xs.sum()]), version(signature=Signature(shape=[None, 3])))


def test_signature_without_shape_checks_nothing() -> None:
    validate_model(model(lambda xs: 1 / 0), version(signature=Signature(fields=["a"])))


# -- latency ---------------------------------------------------------------------------------


class FakeClock:
    """Time that passes only when the model says so: no sleeping, no flakiness."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def timed_model(clock: FakeClock, durations: list[float]) -> CallableModel:
    calls = iter(durations)

    def predict(xs: Any) -> Any:
        clock.now += next(calls)
        return [0.0] * len(xs)

    return model(predict)


def test_latency_budget_uses_the_median_of_the_timed_calls() -> None:
    """The first (checking) call is not timed; of the timed calls, the median counts, so
    one slow call (a GC pause) does not fail a version but a slow model does."""
    info = version(samples=[Sample(input=[[1.0]], expected=[0.0])])
    clock = FakeClock()
    one_slow = [5.0, 0.001, 0.001, 0.9, 0.001, 0.001]
    validate_model(timed_model(clock, one_slow), info, latency_budget_s=0.01, clock=clock)

    slow = [0.0] + [0.05] * LATENCY_RUNS
    with pytest.raises(ModelValidationError) as exc:
        validate_model(timed_model(clock, slow), info, latency_budget_s=0.01, clock=clock)
    assert str(exc.value) == (
        f"model 'm' version '7': sample 0 took 50 ms (median of {LATENCY_RUNS} calls), "
        "over the latency budget of 10 ms"
    )


def test_without_samples_the_zero_batch_is_timed() -> None:
    info = version(signature=Signature(shape=[None, 2]))
    clock = FakeClock()
    slow = [0.0] + [1.0] * LATENCY_RUNS
    with pytest.raises(
        ModelValidationError,
        match=r"signature check .* took 1 s \(median of 5 calls\), over the latency budget of 500",
    ):
        validate_model(timed_model(clock, slow), info, latency_budget_s=0.5, clock=clock)


def test_without_budget_nothing_is_timed() -> None:
    info = version(samples=[Sample(input=[[1.0]], expected=[0.0])])
    clock = FakeClock()
    validate_model(timed_model(clock, [100.0]), info, clock=clock)  # one call only
