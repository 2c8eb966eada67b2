"""Small real models for the registry tests: ONNX graphs from skl2onnx and skops files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import pytest
import skops.io as sio
from skl2onnx import to_onnx
from sklearn.ensemble import IsolationForest
from sklearn.linear_model import LogisticRegression

from headrace.registry import LocalRegistry

N_FEATURES = 4
OPSET = {"": 17, "ai.onnx.ml": 3}


@pytest.fixture(scope="session")
def data() -> np.ndarray:
    return np.random.default_rng(5).normal(size=(64, N_FEATURES)).astype(np.float32)


@pytest.fixture(scope="session")
def logreg(data: np.ndarray) -> LogisticRegression:
    y = (data[:, 0] - data[:, 2] > 0).astype(np.int64)
    return LogisticRegression().fit(data, y)


@pytest.fixture(scope="session")
def iforest(data: np.ndarray) -> IsolationForest:
    return IsolationForest(n_estimators=5, random_state=0).fit(data)


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def logreg_onnx(models_dir: Path, logreg: LogisticRegression, data: np.ndarray) -> Path:
    onx = to_onnx(logreg, data[:1], options={id(logreg): {"zipmap": False}}, target_opset=OPSET)
    path = models_dir / "logreg.onnx"
    path.write_bytes(onx.SerializeToString())
    return path


@pytest.fixture(scope="session")
def iforest_onnx(models_dir: Path, iforest: IsolationForest, data: np.ndarray) -> Path:
    path = models_dir / "iforest.onnx"
    path.write_bytes(to_onnx(iforest, data[:1], target_opset=OPSET).SerializeToString())
    return path


@pytest.fixture(scope="session")
def logreg_skops(models_dir: Path, logreg: LogisticRegression) -> Path:
    path = models_dir / "logreg.skops"
    sio.dump(logreg, path)
    return path


@pytest.fixture(scope="session")
def iforest_skops(models_dir: Path, iforest: IsolationForest) -> Path:
    path = models_dir / "iforest.skops"
    sio.dump(iforest, path)
    return path


@pytest.fixture
def registry(tmp_path: Path) -> LocalRegistry:
    return LocalRegistry(tmp_path / "registry")


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    """A file to register when what it holds does not matter."""
    path = tmp_path / "artifact.bin"
    path.write_bytes(b"not really a model")
    return path


@pytest.fixture
def sessions(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every ONNX Runtime session created: empty proves nothing was deserialised."""
    created: list[Any] = []
    real = onnxruntime.InferenceSession

    def spy(*args: Any, **kwargs: Any) -> Any:
        created.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", spy)
    return created


@pytest.fixture
def skops_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every call into skops that reads an artifact's contents."""
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
