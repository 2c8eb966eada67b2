"""scikit-learn estimators as models, and loading skops files safely."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import skops.io as sio
from sklearn.ensemble import IsolationForest
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from headrace.models import ModelLoadError, SklearnModel, load_skops, sha256_of

TREE = "sklearn.tree._tree.Tree"


def shift(x: Any) -> Any:
    """A custom function: skops does not trust it by default."""
    return x + 1.0


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    return np.random.default_rng(1).normal(size=(120, 8)).astype(np.float32)


@pytest.fixture(scope="module")
def labels(data: np.ndarray) -> np.ndarray:
    return (data[:, 0] - data[:, 1] > 0).astype(np.int64)


@pytest.fixture(scope="module")
def logreg(data: np.ndarray, labels: np.ndarray) -> LogisticRegression:
    return LogisticRegression().fit(data, labels)


@pytest.fixture(scope="module")
def iforest(data: np.ndarray) -> IsolationForest:
    return IsolationForest(n_estimators=10, random_state=0).fit(data)


@pytest.fixture
def deserialised(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records every call into skops that reads the file's contents."""
    calls: list[str] = []
    loads, untrusted = sio.loads, sio.get_untrusted_types

    def spy_loads(*args: Any, **kwargs: Any) -> Any:
        calls.append("loads")
        return loads(*args, **kwargs)

    def spy_untrusted(*args: Any, **kwargs: Any) -> Any:
        calls.append("get_untrusted_types")
        return untrusted(*args, **kwargs)

    monkeypatch.setattr(sio, "loads", spy_loads)
    monkeypatch.setattr(sio, "get_untrusted_types", spy_untrusted)
    return calls


def dump(obj: Any, path: Path) -> str:
    sio.dump(obj, path)
    return sha256_of(path)


# -- SklearnModel ----------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["predict", "predict_proba", "decision_function"])
def test_classifier_methods(method: str, logreg: LogisticRegression, data: np.ndarray) -> None:
    """Each method of a classifier gives exactly what the estimator's method gives."""
    model = SklearnModel(logreg, method=method, name="lr", version="2")  # type: ignore[arg-type]
    assert (model.name, model.version, model.method) == ("lr", "2", method)
    np.testing.assert_array_equal(model.predict_batch(data), getattr(logreg, method)(data))


def test_default_method_is_predict(logreg: LogisticRegression, data: np.ndarray) -> None:
    """Without a method, a prediction is the estimator's predict."""
    model = SklearnModel(logreg, name="lr")
    np.testing.assert_array_equal(model.predict_batch(data), logreg.predict(data))


def test_score_samples_and_negate(iforest: IsolationForest, data: np.ndarray) -> None:
    """score_samples is passed through; negate flips it so higher means more anomalous."""
    plain = SklearnModel(iforest, method="score_samples", name="if")
    flipped = SklearnModel(iforest, method="score_samples", name="if", negate=True)
    expected = iforest.score_samples(data)
    np.testing.assert_array_equal(plain.predict_batch(data), expected)
    np.testing.assert_array_equal(flipped.predict_batch(data), -expected)
    assert (flipped.predict_batch(data) > 0).all()


def test_negate_decision_function(iforest: IsolationForest, data: np.ndarray) -> None:
    """negate applies to any method, not just score_samples."""
    model = SklearnModel(iforest, method="decision_function", name="if", negate=True)
    np.testing.assert_array_equal(model.predict_batch(data), -iforest.decision_function(data))


@pytest.mark.parametrize(
    ("estimator", "method"),
    [
        (LinearRegression(), "predict_proba"),
        (LinearRegression(), "score_samples"),
        (LogisticRegression(), "score_samples"),
    ],
)
def test_missing_method_is_a_value_error(estimator: Any, method: str) -> None:
    """Asking for a method the estimator lacks fails at construction, naming both."""
    with pytest.raises(ValueError) as info:
        SklearnModel(estimator, method=method, name="m")  # type: ignore[arg-type]
    assert type(estimator).__name__ in str(info.value) and repr(method) in str(info.value)


# -- load_skops ------------------------------------------------------------------------------


def test_plain_estimator_loads_after_digest_check(
    tmp_path: Path, logreg: LogisticRegression, data: np.ndarray, deserialised: list[str]
) -> None:
    """A file of only default-trusted types loads and predicts like the original."""
    path = tmp_path / "lr.skops"
    digest = dump(logreg, path)
    assert sio.get_untrusted_types(file=path) == []
    deserialised.clear()
    loaded = load_skops(path, sha256=digest)
    assert isinstance(loaded, LogisticRegression)
    np.testing.assert_array_equal(loaded.predict_proba(data), logreg.predict_proba(data))
    assert deserialised == ["get_untrusted_types", "loads"]


def test_digest_mismatch_is_rejected_before_loading(
    tmp_path: Path, logreg: LogisticRegression, deserialised: list[str]
) -> None:
    """A file that is not the configured one is not even inspected by skops."""
    path = tmp_path / "lr.skops"
    digest = dump(logreg, path)
    wrong = ("0" if digest[0] != "0" else "1") + digest[1:]
    with pytest.raises(ModelLoadError, match="sha256 mismatch") as info:
        load_skops(path, sha256=wrong)
    assert str(path) in str(info.value)
    assert deserialised == []


def test_malformed_digest_is_rejected(
    tmp_path: Path, logreg: LogisticRegression, deserialised: list[str]
) -> None:
    """A digest that is not 64 hex characters is rejected before reading."""
    path = tmp_path / "lr.skops"
    dump(logreg, path)
    with pytest.raises(ModelLoadError, match="64 hexadecimal"):
        load_skops(path, sha256="not-a-digest")
    assert deserialised == []


def test_untrusted_type_is_named_and_refused(
    tmp_path: Path, iforest: IsolationForest, data: np.ndarray, deserialised: list[str]
) -> None:
    """An IsolationForest holds sklearn's Tree type, which skops does not trust by default:
    loading is refused naming it, and succeeds once it is listed as trusted."""
    path = tmp_path / "if.skops"
    digest = dump(iforest, path)
    assert TREE in sio.get_untrusted_types(file=path)
    deserialised.clear()
    with pytest.raises(ModelLoadError) as info:
        load_skops(path, sha256=digest)
    assert TREE in str(info.value) and "trusted_types" in str(info.value)
    assert "loads" not in deserialised
    with pytest.raises(ModelLoadError, match=TREE):
        load_skops(path, sha256=digest, trusted=["some.other.Type"])

    loaded = load_skops(path, sha256=digest, trusted=[TREE])
    assert isinstance(loaded, IsolationForest)
    np.testing.assert_array_equal(loaded.score_samples(data), iforest.score_samples(data))


def test_custom_function_is_untrusted_until_listed(
    tmp_path: Path, data: np.ndarray, labels: np.ndarray
) -> None:
    """A Pipeline with a FunctionTransformer of a user function: that function is the
    untrusted type, named in full in the error, and trusting it loads the pipeline."""
    pipeline = make_pipeline(FunctionTransformer(shift), LogisticRegression()).fit(data, labels)
    path = tmp_path / "pipe.skops"
    digest = dump(pipeline, path)
    untrusted = sio.get_untrusted_types(file=path)
    name = f"{shift.__module__}.shift"
    assert untrusted == [name]
    with pytest.raises(ModelLoadError) as info:
        load_skops(path, sha256=digest)
    assert name in str(info.value)
    loaded = load_skops(path, sha256=digest, trusted=[name])
    np.testing.assert_array_equal(loaded.predict(data), pipeline.predict(data))
    model = SklearnModel(loaded, method="predict_proba", name="pipe")
    np.testing.assert_allclose(model.predict_batch(data), pipeline.predict_proba(data))
