"""XGBoost and LightGBM models in their native formats: tiny boosters trained here, saved
with their own ``save_model``, scored through a pipeline and compared with the library's
own predictions; the file's sha256 checked before a byte is parsed; devices."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import onnxruntime
import pytest
import xgboost as xgb

from headrace.build import build_model, check_model
from headrace.config import ConfigError, parse_config
from headrace.connectors.extras import MissingExtraError
from headrace.models import ModelLoadError, sha256_of
from headrace.models.boosting import LightGBMModel, XGBoostModel
from headrace.pipeline import Pipeline

FIELDS = ["a", "b", "c", "d"]
ROWS = 300


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features, a binary label and a continuous target."""
    x = np.random.default_rng(7).normal(size=(ROWS, len(FIELDS))).astype(np.float32)
    label = (x[:, 0] + 0.5 * x[:, 1] - x[:, 3] > 0).astype(np.int64)
    target = 2.0 * x[:, 0] - x[:, 2] + 0.1 * x[:, 1] ** 2
    return x, label, target


def _xgb(x: np.ndarray, y: np.ndarray, objective: str) -> Any:
    params = {"objective": objective, "max_depth": 3, "nthread": 1, "seed": 0}
    return xgb.train(params, xgb.DMatrix(x, label=y), num_boost_round=8)


def _lgb(x: np.ndarray, y: np.ndarray, objective: str) -> Any:
    params = {"objective": objective, "num_leaves": 7, "num_threads": 1, "verbose": -1}
    return lgb.train(params, lgb.Dataset(x, label=y), num_boost_round=8)


@pytest.fixture(scope="module")
def models(
    tmp_path_factory: pytest.TempPathFactory, data: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> dict[str, tuple[Path, Any]]:
    """Each kind of model, saved natively: name -> (file, the booster trained)."""
    x, label, target = data
    where = tmp_path_factory.mktemp("boosters")
    made: dict[str, tuple[Path, Any]] = {}
    for name, booster in {
        "xgb-classifier.ubj": _xgb(x, label, "binary:logistic"),
        "xgb-classifier.json": _xgb(x, label, "binary:logistic"),
        "xgb-regressor.ubj": _xgb(x, target, "reg:squarederror"),
    }.items():
        booster.save_model(str(where / name))
        made[name] = (where / name, booster)
    for name, booster in {
        "lgb-classifier.txt": _lgb(x, label, "binary"),
        "lgb-regressor.txt": _lgb(x, target, "regression"),
    }.items():
        booster.save_model(str(where / name))
        made[name] = (where / name, booster)
    return made


def expected(booster: Any, x: np.ndarray, raw: bool = False) -> np.ndarray:
    """What the library itself predicts: XGBoost through a DMatrix, LightGBM's predict."""
    if isinstance(booster, xgb.Booster):
        return np.asarray(booster.predict(xgb.DMatrix(x), output_margin=raw))
    return np.asarray(booster.predict(x, raw_score=raw))


PIPELINE = """\
name: boosted
source: {{type: jsonl, path: {inp}}}
model:
  type: {type}
  name: boosted
  version: "1"
  path: {path}
  sha256: {sha}
{extra}  features: {{fields: [a, b, c, d]}}
sinks: [{{type: jsonl, path: {out}}}]
"""


def run_pipeline(
    tmp_path: Path, kind: str, path: Path, x: np.ndarray, extra: str = ""
) -> list[Any]:
    inp, out, yaml = tmp_path / "in.jsonl", tmp_path / "out.jsonl", tmp_path / "p.yaml"
    inp.write_text(
        "".join(json.dumps(dict(zip(FIELDS, map(float, row), strict=True))) + "\n" for row in x)
    )
    yaml.write_text(
        PIPELINE.format(inp=inp, out=out, type=kind, path=path, sha=sha256_of(path), extra=extra)
    )
    summary = Pipeline.from_yaml(yaml).run(install_signal_handlers=False)
    assert summary.records_out == len(x)
    return [json.loads(line)["prediction"] for line in out.read_text().splitlines()]


@pytest.mark.parametrize(
    ("name", "kind", "extra"),
    [
        ("xgb-classifier.ubj", "xgboost", ""),
        ("xgb-classifier.json", "xgboost", "  threads: 2\n"),
        ("xgb-regressor.ubj", "xgboost", ""),
        ("xgb-classifier.ubj", "xgboost", "  output: raw_margin\n"),
        ("lgb-classifier.txt", "lightgbm", ""),
        ("lgb-regressor.txt", "lightgbm", "  threads: 1\n"),
        ("lgb-classifier.txt", "lightgbm", "  output: raw_margin\n"),
    ],
)
def test_a_pipeline_scores_what_the_library_predicts(
    tmp_path: Path,
    models: dict[str, tuple[Path, Any]],
    data: tuple[np.ndarray, np.ndarray, np.ndarray],
    name: str,
    kind: str,
    extra: str,
) -> None:
    """Classifiers give the positive-class probability, regressors the value, and
    ``output: raw_margin`` the margin: each exactly what the library gives."""
    path, booster = models[name]
    x = data[0][:60]
    got = run_pipeline(tmp_path, kind, path, x, extra)
    want = expected(booster, x, raw="raw_margin" in extra)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    if "classifier" in name and not extra.strip().startswith("output"):
        assert all(0.0 <= p <= 1.0 for p in got)


def test_threads_reach_the_runtime(models: dict[str, tuple[Path, Any]]) -> None:
    path, _ = models["xgb-classifier.ubj"]
    m = XGBoostModel.from_file(path, sha256=sha256_of(path), name="m", threads=3)
    config = json.loads(m.booster.save_config())
    assert config["learner"]["generic_param"]["nthread"] == "3"
    path, _ = models["lgb-classifier.txt"]
    lm = LightGBMModel.from_file(path, sha256=sha256_of(path), name="m", threads=2)
    assert lm._kwargs["num_threads"] == 2


@pytest.fixture
def parsed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records every model XGBoost or LightGBM parses, to prove none was."""
    seen: list[str] = []
    load_model = xgb.Booster.load_model
    booster_init = lgb.Booster.__init__

    def xgb_load(self: Any, fname: Any) -> None:
        seen.append("xgboost")
        load_model(self, fname)

    def lgb_init(self: Any, *args: Any, **kwargs: Any) -> None:
        seen.append("lightgbm")
        booster_init(self, *args, **kwargs)

    monkeypatch.setattr(xgb.Booster, "load_model", xgb_load)
    monkeypatch.setattr(lgb.Booster, "__init__", lgb_init)
    return seen


def _config(kind: str, path: Path, sha: str, **model: Any) -> dict[str, Any]:
    return {
        "name": "boosted",
        "source": {"type": "generator", "count": 10},
        "model": {
            "type": kind,
            "name": "m",
            "version": "1",
            "path": str(path),
            "sha256": sha,
            **model,
        },
        "sinks": [{"type": "null"}],
    }


@pytest.mark.parametrize("name", ["xgb-classifier.ubj", "lgb-classifier.txt"])
def test_a_changed_file_is_refused_before_it_is_parsed(
    tmp_path: Path, models: dict[str, tuple[Path, Any]], parsed: list[str], name: str
) -> None:
    path, _ = models[name]
    kind = "xgboost" if name.startswith("xgb") else "lightgbm"
    copy = tmp_path / name
    copy.write_bytes(path.read_bytes()[:-10])  # truncated after its digest was taken
    config = parse_config(_config(kind, copy, sha256_of(path)))
    for check in (check_model, lambda c: build_model(c.model)):
        with pytest.raises(ModelLoadError, match=r"at model\.sha256: the file .* has sha256"):
            check(config)
    assert parsed == []
    # The right digest: parsed once, by the runtime it names.
    build_model(parse_config(_config(kind, path, sha256_of(path))).model)  # type: ignore[arg-type]
    assert parsed == [kind]


def test_not_a_model_is_one_clear_error(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.ubj"
    bogus.write_bytes(b"not a model at all")
    for kind, runtime in (("xgboost", "XGBoost"), ("lightgbm", "LightGBM")):
        config = parse_config(_config(kind, bogus, sha256_of(bogus)))
        with pytest.raises(ModelLoadError, match=f"m: {runtime} cannot load the model"):
            build_model(config.model)  # type: ignore[arg-type]


def test_the_featurizer_width_is_checked_at_load(models: dict[str, tuple[Path, Any]]) -> None:
    path, _ = models["lgb-classifier.txt"]
    config = parse_config(
        _config("lightgbm", path, sha256_of(path), features={"fields": ["a", "b", "c"]})
    )
    with pytest.raises(ConfigError, match=r"3 fields, but the .* model takes 4 features"):
        build_model(config.model)  # type: ignore[arg-type]


@pytest.mark.parametrize(("kind", "extra"), [("xgboost", "xgboost"), ("lightgbm", "lightgbm")])
def test_a_missing_runtime_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, models: dict[str, tuple[Path, Any]], kind: str, extra: str
) -> None:
    path, _ = models["xgb-classifier.ubj" if kind == "xgboost" else "lgb-classifier.txt"]
    monkeypatch.setitem(sys.modules, kind, None)  # import raises ImportError
    config = parse_config(_config(kind, path, sha256_of(path)))
    with pytest.raises(MissingExtraError, match=rf"pip install 'headrace\[{extra}\]'") as exc:
        build_model(config.model)  # type: ignore[arg-type]
    assert exc.value.extra == extra
    assert str(exc.value).startswith(f"the {'XGBoost' if kind == 'xgboost' else 'LightGBM'}")


# -- configuration --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"sha256": None}, "at model: missing required key 'sha256'"),
        (
            {"outptu": "value"},
            "at model: unknown key 'outptu'; expected one of: device, "
            "features, name, output, path, sha256, threads, version",
        ),
        ({"output": "proba"}, "at model.output: Invalid enum value 'proba'"),
        ({"threads": 0}, "at model.threads:"),
        ({"device": "gpu"}, "at model.device: Invalid enum value 'gpu'"),
        ({"sha256": "abc"}, "at model.sha256:"),
    ],
)
@pytest.mark.parametrize("kind", ["xgboost", "lightgbm"])
def test_validate_is_strict_about_the_new_keys(
    kind: str, change: dict[str, Any], message: str
) -> None:
    data = _config(kind, Path("m.ubj"), "0" * 64)
    for key, value in change.items():
        if value is None:
            del data["model"][key]
        else:
            data["model"][key] = value
    with pytest.raises(ConfigError) as exc:
        parse_config(data)
    assert message in str(exc.value)


def test_lightgbm_on_a_gpu_is_refused_with_why() -> None:
    with pytest.raises(ConfigError, match=r"at model\.device: cuda is not supported for lightgbm"):
        parse_config(_config("lightgbm", Path("m.txt"), "0" * 64, device="cuda"))


# -- devices --------------------------------------------------------------------------------

HAVE_CUDA_ORT = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
HAVE_CUDA_XGB = bool(xgb.build_info().get("USE_CUDA"))


@pytest.mark.skipif(HAVE_CUDA_XGB, reason="this XGBoost has CUDA: the no-CUDA error cannot occur")
def test_xgboost_on_cuda_without_cuda_is_refused_at_load(
    models: dict[str, tuple[Path, Any]],
) -> None:
    path, _ = models["xgb-classifier.ubj"]
    config = parse_config(_config("xgboost", path, sha256_of(path), device="cuda"))
    with pytest.raises(ModelLoadError, match=r"model\.device: cuda needs XGBoost built with CUDA"):
        build_model(config.model)  # type: ignore[arg-type]


@pytest.mark.skipif(not HAVE_CUDA_XGB, reason="needs an XGBoost built with CUDA, and a GPU")
def test_xgboost_on_cuda_predicts_what_the_cpu_does(
    models: dict[str, tuple[Path, Any]], data: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> None:
    path, booster = models["xgb-classifier.ubj"]
    m = XGBoostModel.from_file(path, sha256=sha256_of(path), name="m", device="cuda")
    np.testing.assert_allclose(m.predict_batch(data[0]), expected(booster, data[0]), rtol=1e-5)


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from skl2onnx import to_onnx
    from sklearn.linear_model import LinearRegression

    x = np.random.default_rng(1).normal(size=(50, 4)).astype(np.float32)
    reg = LinearRegression().fit(x, x.sum(axis=1))
    path = tmp_path_factory.mktemp("onnx-device") / "reg.onnx"
    path.write_bytes(to_onnx(reg, x[:1], target_opset={"": 17}).SerializeToString())
    return path


@pytest.mark.skipif(HAVE_CUDA_ORT, reason="this onnxruntime has CUDA: the error cannot occur")
def test_onnx_on_cuda_without_the_provider_is_one_clear_error(onnx_file: Path) -> None:
    config = parse_config(_config("onnx", onnx_file, sha256_of(onnx_file), device="cuda"))
    with pytest.raises(ModelLoadError) as exc:
        build_model(config.model)  # type: ignore[arg-type]
    offers = onnxruntime.get_available_providers()
    assert (
        f"model.device: cuda needs onnxruntime-gpu and a GPU; this onnxruntime offers: {offers}"
        in str(exc.value)
    )
    assert "\n" not in str(exc.value)


@pytest.mark.skipif(not HAVE_CUDA_ORT, reason="needs onnxruntime-gpu and a GPU")
def test_onnx_on_cuda_runs_on_the_gpu(onnx_file: Path) -> None:
    config = parse_config(_config("onnx", onnx_file, sha256_of(onnx_file), device="cuda"))
    model, _ = build_model(config.model)  # type: ignore[arg-type]
    assert model.session.get_providers()[0] == "CUDAExecutionProvider"  # type: ignore[attr-defined]
    x = np.ones((3, 4), dtype=np.float32)
    np.testing.assert_allclose(model.predict_batch(x), [4.0, 4.0, 4.0], rtol=1e-4)


def test_headrace_validate_checks_the_new_keys_and_the_file(
    tmp_path: Path, models: dict[str, tuple[Path, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`headrace validate`: valid with the right digest; one line, exit 2, for a wrong one
    or a device LightGBM cannot use."""
    from typer.testing import CliRunner

    from headrace.cli import app

    monkeypatch.chdir(tmp_path)
    path, _ = models["lgb-classifier.txt"]
    good = tmp_path / "good.yaml"
    good.write_text(json.dumps(_config("lightgbm", path, sha256_of(path))))
    result = CliRunner().invoke(app, ["validate", str(good)])
    assert result.exit_code == 0, result.output
    assert "model       m version 1 (lightgbm)" in result.output
    for name, change in (("sha", {"sha256": "0" * 64}), ("gpu", {"device": "cuda"})):
        bad = tmp_path / f"{name}.yaml"
        bad.write_text(json.dumps(_config("lightgbm", path, sha256_of(path), **change)))
        result = CliRunner().invoke(app, ["validate", str(bad)])
        assert result.exit_code == 2, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and str(bad) in lines[0], result.stderr
        assert ("model.sha256" if name == "sha" else "cuda is not supported") in lines[0]
