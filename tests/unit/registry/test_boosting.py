"""XGBoost and LightGBM versions in the local registry: registered through the CLI,
loaded from their checked bytes, validated against their samples and signature."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pytest
import xgboost as xgb
from typer.testing import CliRunner

from headrace.cli import app
from headrace.models import ModelLoadError
from headrace.registry import (
    LocalRegistry,
    RegistryError,
    Sample,
    Signature,
    parse_reference,
)
from headrace.registry.source import RegistrySource
from headrace.registry.validation import ModelValidationError

N = 4


@pytest.fixture(scope="module")
def boosters(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Any, np.ndarray]]:
    x = np.random.default_rng(3).normal(size=(200, N)).astype(np.float32)
    y = (x[:, 0] - x[:, 1] > 0).astype(np.int64)
    where = tmp_path_factory.mktemp("registry-boosters")
    xb = xgb.train(
        {"objective": "binary:logistic", "max_depth": 2, "nthread": 1},
        xgb.DMatrix(x, label=y),
        num_boost_round=5,
    )
    lb = lgb.train(
        {"objective": "binary", "num_leaves": 5, "num_threads": 1, "verbose": -1},
        lgb.Dataset(x, label=y),
        num_boost_round=5,
    )
    made = {}
    for name, booster in (("m.ubj", xb), ("m.json", xb), ("m.txt", lb)):
        booster.save_model(str(where / name))
        made[name] = (where / name, booster, x[:5])
    return made


def _probabilities(booster: Any, x: np.ndarray) -> list[float]:
    if isinstance(booster, xgb.Booster):
        return [float(p) for p in booster.predict(xgb.DMatrix(x))]
    return [float(p) for p in booster.predict(x)]


def _source(root: Path, ref: str, **kwargs: Any) -> RegistrySource:
    return RegistrySource(LocalRegistry(root), parse_reference(ref), **kwargs)


@pytest.mark.parametrize(
    ("file", "format", "artifact"),
    [
        ("m.ubj", "xgboost", "model.ubj"),
        ("m.json", "xgboost", "model.json"),
        ("m.txt", "lightgbm", "model.txt"),
    ],
)
def test_register_with_the_cli_then_load_validated(
    tmp_path: Path,
    boosters: dict[str, tuple[Path, Any, np.ndarray]],
    file: str,
    format: str,
    artifact: str,
) -> None:
    path, booster, x = boosters[file]
    samples = tmp_path / "samples.json"
    samples.write_text(json.dumps([{"input": x.tolist(), "expected": _probabilities(booster, x)}]))
    root = tmp_path / "registry"
    result = CliRunner().invoke(
        app,
        [
            "registry",
            "register",
            "churn",
            str(path),
            "--format",
            format,
            "--shape",
            f"None,{N}",
            "--samples",
            str(samples),
            "--option",
            "threads=1",
            "--promote",
            "production",
            "--root",
            str(root),
        ],
        env={"HEADRACE_REGISTRY": None},
    )
    assert result.exit_code == 0, result.output
    info = LocalRegistry(root).get("churn", "1")
    # An XGBoost JSON model keeps the suffix that says so: XGBoost reads a copy by it.
    assert (info.format, info.artifact) == (format, artifact)
    assert (root / "churn" / "1" / artifact).read_bytes() == path.read_bytes()
    model = _source(root, "registry:churn@production").load("1")
    assert (model.format, model.sha256) == (format, info.sha256)
    np.testing.assert_allclose(model.predict_batch(x), _probabilities(booster, x), rtol=1e-5)


def test_samples_signature_and_options_are_checked(
    tmp_path: Path, boosters: dict[str, tuple[Path, Any, np.ndarray]]
) -> None:
    path, booster, x = boosters["m.ubj"]
    registry = LocalRegistry(tmp_path)
    wrong = [p + 0.5 for p in _probabilities(booster, x)]
    registry.register("m", path, format="xgboost", samples=[Sample(input=x, expected=wrong)])
    registry.register("m", path, format="xgboost", signature=Signature(shape=[None, N + 1]))
    with pytest.raises(ModelValidationError, match="sample 0, output"):
        _source(tmp_path, "registry:m/1").load("1")
    with pytest.raises(ModelValidationError, match="signature check"):
        _source(tmp_path, "registry:m/2").load("2")
    with pytest.raises(RegistryError, match="option 'output' must be one of value, raw_margin"):
        registry.register("m", path, format="xgboost", options={"output": "proba"})
    with pytest.raises(RegistryError, match="option 'method' does not apply to lightgbm"):
        registry.register("m", path, format="lightgbm", options={"method": "predict"})
    margin = registry.register("m", path, format="xgboost", options={"output": "raw_margin"})
    got = _source(tmp_path, "registry:m/3").load(margin.version).predict_batch(x)
    np.testing.assert_allclose(got, booster.predict(xgb.DMatrix(x), output_margin=True), rtol=1e-5)


def test_a_changed_artifact_is_refused_before_it_is_parsed(
    tmp_path: Path,
    boosters: dict[str, tuple[Path, Any, np.ndarray]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    parsed: list[str] = []
    monkeypatch.setattr(xgb.Booster, "load_model", lambda *a: parsed.append("xgb"))
    monkeypatch.setattr(lgb.Booster, "__init__", lambda *a, **k: parsed.append("lgb"))
    registry = LocalRegistry(tmp_path)
    for file, format in (("m.ubj", "xgboost"), ("m.txt", "lightgbm")):
        info = registry.register(format, boosters[file][0], format=format)
        stored = registry.artifact_path(info)
        stored.write_bytes(stored.read_bytes() + b" ")
        with pytest.raises(ModelLoadError, match="sha256 mismatch"):
            _source(tmp_path, f"registry:{format}/1").load("1")
    assert parsed == []


@pytest.mark.parametrize(
    ("file", "format", "message"),
    [
        ("m.txt", "lightgbm", "model.device: cuda is not supported for the lightgbm format"),
        ("m.ubj", "xgboost", "model.device: cuda needs XGBoost built with CUDA"),
    ],
)
def test_cuda_is_refused_at_load_where_it_cannot_run(
    tmp_path: Path,
    boosters: dict[str, tuple[Path, Any, np.ndarray]],
    file: str,
    format: str,
    message: str,
) -> None:
    if format == "xgboost" and xgb.build_info().get("USE_CUDA"):
        pytest.skip("this XGBoost has CUDA: the no-CUDA error cannot occur")
    LocalRegistry(tmp_path).register("m", boosters[file][0], format=format)
    with pytest.raises(ModelLoadError, match=message):
        _source(tmp_path, "registry:m/1", device="cuda").load("1")
