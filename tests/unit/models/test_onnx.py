"""ONNX models: predictions match the source estimator; loading checks the file first."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import pytest
from skl2onnx import to_onnx
from sklearn.ensemble import IsolationForest
from sklearn.linear_model import LogisticRegression

from headrace.models import ModelLoadError, OnnxModel, sha256_of

N_FEATURES = 8
OPSET = {"": 17, "ai.onnx.ml": 3}


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(200, N_FEATURES)).astype(np.float32)


@pytest.fixture(scope="module")
def logreg(data: np.ndarray) -> LogisticRegression:
    y = (data[:, 0] + 0.5 * data[:, 3] > 0).astype(np.int64)
    return LogisticRegression().fit(data, y)


@pytest.fixture(scope="module")
def iforest(data: np.ndarray) -> IsolationForest:
    return IsolationForest(n_estimators=20, random_state=0).fit(data)


@pytest.fixture(scope="module")
def logreg_file(
    tmp_path_factory: pytest.TempPathFactory, logreg: LogisticRegression, data: np.ndarray
) -> Path:
    onx = to_onnx(logreg, data[:1], options={id(logreg): {"zipmap": False}}, target_opset=OPSET)
    path = tmp_path_factory.mktemp("onnx") / "logreg.onnx"
    path.write_bytes(onx.SerializeToString())
    return path


@pytest.fixture(scope="module")
def iforest_file(
    tmp_path_factory: pytest.TempPathFactory, iforest: IsolationForest, data: np.ndarray
) -> Path:
    onx = to_onnx(iforest, data[:1], target_opset=OPSET)
    path = tmp_path_factory.mktemp("onnx") / "iforest.onnx"
    path.write_bytes(onx.SerializeToString())
    return path


@pytest.fixture
def sessions(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Records every ONNX Runtime session created, to prove nothing was deserialised."""
    created: list[Any] = []
    real = onnxruntime.InferenceSession

    def spy(*args: Any, **kwargs: Any) -> Any:
        created.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", spy)
    return created


def test_probabilities_match_sklearn(
    logreg_file: Path, logreg: LogisticRegression, data: np.ndarray
) -> None:
    """The default output (the last: probabilities) matches predict_proba."""
    model = OnnxModel.from_file(logreg_file, sha256=sha256_of(logreg_file), name="lr", version="3")
    assert (model.name, model.version) == ("lr", "3")
    out = model.predict_batch(data)
    assert out.shape == (len(data), 2)
    np.testing.assert_allclose(out, logreg.predict_proba(data), atol=1e-4)


def test_output_picked_by_name(
    logreg_file: Path, logreg: LogisticRegression, data: np.ndarray
) -> None:
    """`output` selects another output: the labels."""
    model = OnnxModel.from_file(
        logreg_file, sha256=sha256_of(logreg_file), name="lr", output="label"
    )
    out = model.predict_batch(data)
    assert out.shape == (len(data),)
    np.testing.assert_array_equal(out, logreg.predict(data))


def test_n_by_1_output_is_flattened(
    iforest_file: Path, iforest: IsolationForest, data: np.ndarray
) -> None:
    """IsolationForest's (N, 1) scores come out as N scalars equal to decision_function;
    its (N, 1) labels likewise equal predict."""
    digest = sha256_of(iforest_file)
    model = OnnxModel.from_file(iforest_file, sha256=digest, name="if", threads=1)
    scores = model.predict_batch(data)
    assert scores.shape == (len(data),)
    np.testing.assert_allclose(scores, iforest.decision_function(data), atol=1e-4)
    labels = OnnxModel.from_file(iforest_file, sha256=digest, name="if", output="label")
    np.testing.assert_array_equal(labels.predict_batch(data), iforest.predict(data))


def test_input_is_converted_to_the_graph_dtype(
    logreg_file: Path, logreg: LogisticRegression, data: np.ndarray
) -> None:
    """A float64 array or nested lists (what a caller may pass) are cast to float32."""
    model = OnnxModel.from_file(logreg_file, sha256=sha256_of(logreg_file), name="lr")
    expected = logreg.predict_proba(data[:5])
    np.testing.assert_allclose(
        model.predict_batch(data[:5].astype(np.float64)), expected, atol=1e-4
    )
    np.testing.assert_allclose(model.predict_batch(data[:5].tolist()), expected, atol=1e-4)


def test_uppercase_sha256_is_accepted(logreg_file: Path) -> None:
    """The digest comparison ignores case and surrounding blanks."""
    digest = f"  {sha256_of(logreg_file).upper()}\n"
    assert OnnxModel.from_file(logreg_file, sha256=digest, name="lr").name == "lr"


def test_unknown_output_lists_the_outputs(logreg_file: Path) -> None:
    """Naming an output the graph lacks fails at load and lists the ones it has."""
    with pytest.raises(ModelLoadError) as info:
        OnnxModel.from_file(logreg_file, sha256=sha256_of(logreg_file), name="lr", output="score")
    message = str(info.value)
    assert "'score'" in message and "label" in message and "probabilities" in message


def test_sha256_mismatch_refuses_before_deserialising(
    logreg_file: Path, iforest_file: Path, sessions: list[Any]
) -> None:
    """A file whose digest differs from the configured one is never handed to ONNX Runtime."""
    with pytest.raises(ModelLoadError) as info:
        OnnxModel.from_file(logreg_file, sha256=sha256_of(iforest_file), name="lr")
    message = str(info.value)
    assert "sha256 mismatch" in message and str(logreg_file) in message
    assert sha256_of(logreg_file) in message and sha256_of(iforest_file) in message
    assert sessions == []
    OnnxModel.from_file(logreg_file, sha256=sha256_of(logreg_file), name="lr")
    assert len(sessions) == 1  # the spy does see a real load


def test_truncated_file_is_a_load_error(logreg_file: Path, tmp_path: Path) -> None:
    """A truncated file fails: with the original digest as a mismatch, and with its own
    digest as a model ONNX Runtime cannot load; either way a ModelLoadError."""
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(logreg_file.read_bytes()[: logreg_file.stat().st_size // 2])
    with pytest.raises(ModelLoadError, match="sha256 mismatch"):
        OnnxModel.from_file(cut, sha256=sha256_of(logreg_file), name="lr")
    with pytest.raises(ModelLoadError, match="cannot load"):
        OnnxModel.from_file(cut, sha256=sha256_of(cut), name="lr")


def test_missing_file_is_a_load_error(tmp_path: Path) -> None:
    """A path that does not exist names the file."""
    path = tmp_path / "absent.onnx"
    with pytest.raises(ModelLoadError, match="cannot read") as info:
        OnnxModel.from_file(path, sha256="0" * 64, name="m")
    assert str(path) in str(info.value)


@pytest.mark.parametrize("digest", ["", "abc", "0" * 63, "0" * 65, "g" * 64, "sha256:" + "0" * 57])
def test_malformed_sha256_is_rejected(logreg_file: Path, digest: str, sessions: list[Any]) -> None:
    """A digest that is not 64 hex characters is rejected as such, before reading."""
    with pytest.raises(ModelLoadError, match="64 hexadecimal"):
        OnnxModel.from_file(logreg_file, sha256=digest, name="lr")
    assert sessions == []


def test_model_with_two_inputs_is_rejected() -> None:
    """Headrace feeds one input; a graph that needs two fails at load, not per batch."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["y"])],
        "two-inputs",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, [None, 2]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, [None, 2]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])],
    )
    onx = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(ModelLoadError, match="2 inputs"):
        OnnxModel(onx.SerializeToString(), name="two")
