"""The MLflow Model Registry adapter against a real local MLflow store (sqlite), with real
ONNX models: aliases, sha256 checks before deserialising, the tags a version needs,
rollback, and a pipeline built from ``ref: mlflow:NAME@ALIAS``.

These tests need the ``mlflow`` extra (in ``dev``); without it they skip, except those that
check what happens when MLflow is missing.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np
import onnxruntime
import pytest
from skl2onnx import to_onnx
from sklearn.ensemble import IsolationForest

from headrace.config import ConfigError, parse_config
from headrace.models import ModelLoadError
from headrace.models.integrity import sha256_of
from headrace.registry import RegistryError, Sample, Signature, parse_reference
from headrace.registry.validation import ModelValidationError

HAVE_MLFLOW = all(importlib.util.find_spec(m) is not None for m in ("mlflow", "sqlalchemy"))
needs_mlflow = pytest.mark.skipif(
    not HAVE_MLFLOW, reason="needs the mlflow extra: pip install 'headrace[mlflow]'"
)
OPSET = {"": 17, "ai.onnx.ml": 3}
# MLflow's sqlite store with SQLAlchemy 2.1: a deprecation in MLflow's own mappers.
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")


# -- a local MLflow store ------------------------------------------------------------------


_MLFLOW_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_ID")


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty sqlite store, its schema created once: creating it (MLflow runs its
    migrations) takes seconds, copying it none."""
    from mlflow import MlflowClient

    where = tmp_path_factory.mktemp("mlflow-template")
    db = where / "mlflow.db"
    with pytest.MonkeyPatch.context() as mp:
        for var in _MLFLOW_ENV:
            mp.delenv(var, raising=False)
        mp.chdir(where)
        uri = f"sqlite:///{db}"
        MlflowClient(tracking_uri=uri, registry_uri=uri).search_registered_models()
        MlflowClient(tracking_uri=uri).search_experiments()
    return db


@pytest.fixture
def uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, empty_store: Path) -> str:
    """A fresh sqlite tracking and registry store; MLflow's own settings cleared, and the
    working directory moved so nothing lands in the checkout."""
    for var in _MLFLOW_ENV:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "mlflow.db"
    shutil.copyfile(empty_store, db)
    return f"sqlite:///{db}"


@pytest.fixture
def client(uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


@pytest.fixture
def experiment(client: Any, tmp_path: Path) -> str:
    artifacts = tmp_path / "artifacts"
    return str(client.create_experiment("headrace-tests", artifact_location=artifacts.as_uri()))


def register(client: Any, experiment: str, name: str, path: Path, **kwargs: Any) -> str:
    from headrace.registry.mlflow import register_mlflow_version

    mv = register_mlflow_version(
        client, name, path, kwargs.pop("format", "onnx"), experiment_id=experiment, **kwargs
    )
    return str(mv.version)


def source(uri: str, ref: str, **kwargs: Any) -> Any:
    from headrace.registry.mlflow import MlflowSource

    return MlflowSource(parse_reference(ref), tracking_uri=uri, **kwargs)


def alias_of(client: Any, name: str, alias: str = "production") -> str:
    return str(client.get_model_version_by_alias(name, alias).version)


def stored_artifact(client: Any, name: str, version: str) -> Path:
    """The artifact's file in the (local) artifact store."""
    mv = client.get_model_version(name, version)
    run_artifacts = client.get_run(mv.run_id).info.artifact_uri
    assert mv.source == f"runs:/{mv.run_id}/headrace"
    return Path(unquote(urlparse(run_artifacts).path)) / "headrace" / mv.tags["headrace.artifact"]


def run_onnx(path: Path, x: np.ndarray, output: str) -> np.ndarray:
    session = onnxruntime.InferenceSession(path.read_bytes(), providers=["CPUExecutionProvider"])
    result: np.ndarray = session.run([output], {session.get_inputs()[0].name: x})[0]
    return result


# -- resolving and loading -----------------------------------------------------------------


@needs_mlflow
def test_latest_follows_the_alias_and_load_checks_the_bytes(
    uri: str,
    client: Any,
    experiment: str,
    logreg_onnx: Path,
    iforest_onnx: Path,
    data: np.ndarray,
    sessions: list[Any],
) -> None:
    from headrace.registry.mlflow import promote_mlflow_version

    v1 = register(client, experiment, "fraud", logreg_onnx, alias="production")
    v2 = register(
        client, experiment, "fraud", iforest_onnx, options={"output": "scores"}, alias="candidate"
    )
    assert (v1, v2) == ("1", "2")
    src = source(uri, "mlflow:fraud@production")
    assert src.describe() == str(src) == "mlflow:fraud@production"
    assert src.latest() == "1"
    promote_mlflow_version(client, "fraud", v2, "production")
    assert src.latest() == "2"
    assert source(uri, "mlflow:fraud/1").latest() == "1"

    model = src.load("2")
    assert (model.name, model.version) == ("fraud", "2")
    assert model.sha256 == sha256_of(iforest_onnx) and model.format == "onnx"
    np.testing.assert_allclose(
        model.predict_batch(data), run_onnx(iforest_onnx, data, "scores")[:, 0], atol=1e-5
    )
    # ONNX Runtime was handed the checked bytes, not a path it could reopen.
    assert sessions and all(s[0] == iforest_onnx.read_bytes() for s in sessions)


@needs_mlflow
def test_tracking_uri_defaults_to_mlflows_own_setting(
    uri: str, client: Any, experiment: str, logreg_onnx: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from headrace.registry.mlflow import MlflowSource

    register(client, experiment, "fraud", logreg_onnx, alias="production")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert MlflowSource(parse_reference("mlflow:fraud@production")).latest() == "1"


@needs_mlflow
def test_an_explicit_tracking_uri_wins_over_the_process_wide_one(
    uri: str,
    client: Any,
    experiment: str,
    logreg_onnx: Path,
    empty_store: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Resolving and downloading (runs:/ URIs included) go through the source's own store,
    even while MLflow's process-wide setting names another."""
    register(client, experiment, "fraud", logreg_onnx, alias="production")
    other = tmp_path / "other.db"
    shutil.copyfile(empty_store, other)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{other}")
    src = source(uri, "mlflow:fraud@production")
    assert src.load(src.latest()).sha256 == sha256_of(logreg_onnx)


@needs_mlflow
def test_a_missing_alias_or_model_is_a_registry_error(
    uri: str, client: Any, experiment: str, logreg_onnx: Path
) -> None:
    register(client, experiment, "fraud", logreg_onnx, alias="production")
    with pytest.raises(RegistryError, match="mlflow:fraud@staging: cannot resolve the alias"):
        source(uri, "mlflow:fraud@staging").latest()
    with pytest.raises(RegistryError, match="mlflow:nope@production"):
        source(uri, "mlflow:nope@production").latest()
    with pytest.raises(ModelLoadError, match="mlflow model 'fraud' version 9"):
        source(uri, "mlflow:fraud@production").load("9")


@needs_mlflow
@pytest.mark.parametrize("how", ["truncated", "replaced by another valid model"])
def test_a_tampered_artifact_is_refused_before_deserialising(
    how: str,
    uri: str,
    client: Any,
    experiment: str,
    logreg_onnx: Path,
    iforest_onnx: Path,
    sessions: list[Any],
) -> None:
    """The file in the artifact store changed after registration: the sha256 in the
    version's tags no longer matches, and ONNX Runtime never sees a byte."""
    register(client, experiment, "fraud", logreg_onnx, alias="production")
    stored = stored_artifact(client, "fraud", "1")
    assert stored.read_bytes() == logreg_onnx.read_bytes()
    if how == "truncated":
        stored.write_bytes(stored.read_bytes()[: stored.stat().st_size // 2])
    else:
        stored.write_bytes(iforest_onnx.read_bytes())
    with pytest.raises(ModelLoadError, match="sha256 mismatch") as exc:
        source(uri, "mlflow:fraud@production").load("1")
    assert "mlflow model 'fraud' version 1" in str(exc.value)
    assert sessions == []


@needs_mlflow
def test_a_version_without_the_headrace_tags_is_refused_with_how_to_register(
    uri: str, client: Any, experiment: str, logreg_onnx: Path, sessions: list[Any]
) -> None:
    """A version registered by plain MLflow: nothing to check its artifact against."""
    client.create_registered_model("plain")
    run = client.create_run(experiment)
    client.log_artifact(run.info.run_id, str(logreg_onnx), artifact_path="model")
    mv = client.create_model_version(
        "plain", f"runs:/{run.info.run_id}/model", run_id=run.info.run_id
    )
    client.set_registered_model_alias("plain", "production", mv.version)
    src = source(uri, "mlflow:plain@production")
    assert src.latest() == "1"
    with pytest.raises(ModelLoadError, match="not registered for Headrace") as exc:
        src.load("1")
    message = str(exc.value)
    for needed in ("headrace.format", "headrace.artifact", "headrace.sha256"):
        assert needed in message
    assert "register_mlflow_version" in message
    # Half the tags is no better; an artifact path must stay inside the version.
    client.set_model_version_tag("plain", "1", "headrace.format", "onnx")
    client.set_model_version_tag("plain", "1", "headrace.artifact", "../../escape.onnx")
    with pytest.raises(ModelLoadError, match=r"lacks the model-version tags headrace\.sha256"):
        src.load("1")
    client.set_model_version_tag("plain", "1", "headrace.sha256", sha256_of(logreg_onnx))
    with pytest.raises(ModelLoadError, match="must be a relative path within"):
        src.load("1")
    client.set_model_version_tag("plain", "1", "headrace.artifact", "logreg.onnx")
    client.set_model_version_tag("plain", "1", "headrace.format", "tensorflow")
    with pytest.raises(ModelLoadError, match=r"headrace\.format is 'tensorflow'"):
        src.load("1")
    assert sessions == []
    # With the tags right, the same plain version loads.
    client.set_model_version_tag("plain", "1", "headrace.format", "onnx")
    assert src.load("1").sha256 == sha256_of(logreg_onnx)


@needs_mlflow
def test_signature_and_samples_from_the_tags_are_validated(
    uri: str, client: Any, experiment: str, iforest_onnx: Path, data: np.ndarray
) -> None:
    scores = run_onnx(iforest_onnx, data[:3], "scores")[:, 0]
    good = Sample(input=data[:3], expected=scores)
    bad = Sample(input=data[:3], expected=scores + 1.0)
    signature = Signature(shape=[None, data.shape[1]])
    opts = {"output": "scores"}
    register(client, experiment, "iso", iforest_onnx, options=opts, samples=[good])
    register(client, experiment, "iso", iforest_onnx, options=opts, samples=[bad])
    register(client, experiment, "iso", iforest_onnx, options=opts, signature=signature)
    wide = Signature(shape=[None, data.shape[1] + 1])
    register(client, experiment, "iso", iforest_onnx, options=opts, signature=wide)
    tags = client.get_model_version("iso", "3").tags
    assert json.loads(tags["headrace.signature"])["shape"] == [None, data.shape[1]]
    src = source(uri, "mlflow:iso/1")
    assert src.load("1").version == "1"
    with pytest.raises(ModelValidationError, match="sample 0"):
        src.load("2")
    assert src.load("3").version == "3"
    with pytest.raises(ModelValidationError, match="signature check"):
        src.load("4")


@needs_mlflow
def test_registration_checks_what_it_records(
    client: Any, experiment: str, logreg_onnx: Path, tmp_path: Path
) -> None:
    with pytest.raises(RegistryError, match="option 'outptu' does not apply to onnx"):
        register(client, experiment, "m", logreg_onnx, options={"outptu": "label"})
    with pytest.raises(RegistryError, match="unknown format 'h5'"):
        register(client, experiment, "m", logreg_onnx, format="h5")
    with pytest.raises(RegistryError, match="trusted types apply only to the skops"):
        register(client, experiment, "m", logreg_onnx, trusted_types=["x.Y"])
    with pytest.raises(RegistryError, match="is not a file"):
        register(client, experiment, "m", tmp_path / "missing.onnx")
    assert client.search_model_versions("name='m'") == []


@needs_mlflow
def test_pickle_is_refused_unless_allowed(
    uri: str, client: Any, experiment: str, tmp_path: Path
) -> None:
    import pickle

    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps({"not": "a model"}))
    register(client, experiment, "pk", path, format="pickle")
    with pytest.raises(ModelLoadError, match="pickle file, and loading one runs"):
        source(uri, "mlflow:pk/1").load("1")
    with pytest.raises(ModelLoadError, match="has neither predict_batch nor 'predict'"):
        source(uri, "mlflow:pk/1", allow_pickle=True).load("1")


# -- rollback ------------------------------------------------------------------------------


@needs_mlflow
def test_roll_back_follows_the_alias_history_tag(
    uri: str, client: Any, experiment: str, logreg_onnx: Path
) -> None:
    for _ in range(3):
        register(client, experiment, "fraud", logreg_onnx, alias="production")
    history = json.loads(
        client.get_registered_model("fraud").tags["headrace.alias_history.production"]
    )
    assert (history["version"], history["history"]) == ("3", ["1", "2"])
    src = source(uri, "mlflow:fraud@production")
    src.roll_back("3")
    assert alias_of(client, "fraud") == "2"
    src.roll_back("2")
    assert alias_of(client, "fraud") == "1"
    # Nothing older: a rollback from 1 has nowhere to go, and says so.
    with pytest.raises(RegistryError, match="cannot roll back from version 1"):
        src.roll_back("1")
    assert alias_of(client, "fraud") == "1"


@needs_mlflow
def test_roll_back_leaves_an_alias_that_moved_meanwhile(
    uri: str, client: Any, experiment: str, logreg_onnx: Path
) -> None:
    from headrace.registry.mlflow import promote_mlflow_version

    for _ in range(3):
        register(client, experiment, "fraud", logreg_onnx, alias="production")
    src = source(uri, "mlflow:fraud@production")
    promote_mlflow_version(client, "fraud", "1", "production")  # someone moved it on
    src.roll_back("3")
    assert alias_of(client, "fraud") == "1"
    client.delete_registered_model_alias("fraud", "production")
    src.roll_back("1")  # no alias at all: nothing to move, no error
    # A pinned reference has no alias to move.
    source(uri, "mlflow:fraud/2").roll_back("2")


@needs_mlflow
def test_roll_back_uses_the_versions_loaded_when_the_tag_is_stale(
    uri: str, client: Any, experiment: str, logreg_onnx: Path
) -> None:
    """An alias moved by another tool (the MLflow UI) leaves the history tag behind; the
    source then goes back to the version it loaded before the bad one."""
    register(client, experiment, "fraud", logreg_onnx, alias="production")
    for _ in range(2):
        register(client, experiment, "fraud", logreg_onnx)
    src = source(uri, "mlflow:fraud@production")
    src.load(src.latest())
    client.set_registered_model_alias("fraud", "production", "2")  # not through headrace
    src.load(src.latest())
    client.set_registered_model_alias("fraud", "production", "3")
    src.load(src.latest())
    src.roll_back("3")
    assert alias_of(client, "fraud") == "2"
    # The tag describes the alias again, so another process (which loaded nothing) can
    # roll back further.
    source(uri, "mlflow:fraud@production").roll_back("2")
    assert alias_of(client, "fraud") == "1"


# -- configuration and a pipeline ----------------------------------------------------------


def _config(ref: str, **model: Any) -> dict[str, Any]:
    return {
        "name": "mlflow-test",
        "source": {"type": "generator", "rate": 0, "count": 40, "seed": 3},
        "model": {"type": "registry", "ref": ref, "features": {"vector": "features"}, **model},
        "sinks": [{"type": "null"}],
    }


@pytest.mark.parametrize(
    "ref", ["mlflow:fraud@production", "mlflow:My Model/12", "registry:fraud@production"]
)
def test_config_accepts_mlflow_references(ref: str) -> None:
    config = parse_config(_config(ref, tracking_uri="sqlite:///x.db"))
    assert config.model.ref == ref  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "ref", ["mlflow:fraud/0", "mlflow:fraud/v1", "mlflow:a/b@c", "mlflow: fraud@production"]
)
def test_config_refuses_bad_mlflow_references(ref: str) -> None:
    with pytest.raises(ConfigError, match=r"model\.ref"):
        parse_config(_config(ref))


def test_without_mlflow_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from headrace.build import registry_source

    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow raises ImportError
    config = parse_config(_config("mlflow:fraud@production"))
    assert config.model.tracking_uri is None  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match=r"pip install 'headrace\[mlflow\]'"):
        registry_source(config.model.ref, config.model)  # type: ignore[union-attr,arg-type]


@pytest.fixture(scope="module")
def sensor_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An IsolationForest over the generator's 8 features, as ONNX."""
    x = np.random.default_rng(1).normal(size=(256, 8)).astype(np.float32)
    forest = IsolationForest(n_estimators=5, random_state=0).fit(x)
    path = tmp_path_factory.mktemp("sensor") / "sensor.onnx"
    path.write_bytes(to_onnx(forest, x[:1], target_opset=OPSET).SerializeToString())
    return path


@needs_mlflow
def test_a_pipeline_scores_with_the_version_behind_the_alias(
    uri: str, client: Any, experiment: str, sensor_onnx: Path, tmp_path: Path
) -> None:
    from headrace.pipeline import Pipeline

    opts = {"output": "scores"}
    register(client, experiment, "sensor", sensor_onnx, options=opts, alias="production")
    # Version 2: the same graph, its bytes changed (another producer name), so another sha.
    v2 = tmp_path / "sensor-v2.onnx"
    import onnx

    graph = onnx.load_from_string(sensor_onnx.read_bytes())
    graph.producer_name = "headrace-test-v2"
    v2.write_bytes(graph.SerializeToString())
    register(client, experiment, "sensor", v2, options=opts, alias="production")

    out = tmp_path / "out.jsonl"
    config = _config("mlflow:sensor@production", tracking_uri=uri)
    config["sinks"] = [{"type": "jsonl", "path": str(out)}]
    summary = Pipeline.from_config(parse_config(config)).run(install_signal_handlers=False)
    assert summary is not None
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 40
    models = {(r["model"]["name"], r["model"]["version"], r["model"]["sha256"]) for r in rows}
    assert models == {("sensor", "2", sha256_of(v2)[:12])}
    assert all(isinstance(r["prediction"], float) for r in rows)


# -- plain MLflow versions (a python_function flavour, no Headrace tags) --------------------

HAVE_PYFUNC = HAVE_MLFLOW and importlib.util.find_spec("pandas") is not None
FIELDS = ["a", "b", "c", "d"]


def _columns(*names: str, kind: str = "double") -> str:
    return json.dumps([{"type": kind, "name": n, "required": True} for n in names])


def plain_version(
    client: Any,
    experiment: str,
    name: str,
    flavors: dict[str, Any],
    files: dict[str, bytes],
    inputs: str | None,
) -> str:
    """A version as ``mlflow.<flavour>.log_model`` leaves it: an MLmodel file (written
    here as MLflow writes it: mlflow.pyfunc needs pandas, which the mlflow extra lacks),
    the model's files, and no Headrace tags."""
    import tempfile

    import yaml

    mlmodel: dict[str, Any] = {"artifact_path": "model", "flavors": flavors}
    if inputs is not None:
        mlmodel["signature"] = {
            "inputs": inputs,
            "outputs": json.dumps(
                [{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1]}}]
            ),
            "params": None,
        }
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "MLmodel").write_text(yaml.safe_dump(mlmodel))
        for file, data in files.items():
            (Path(tmp) / file).write_bytes(data)
        try:
            client.get_registered_model(name)
        except Exception:
            client.create_registered_model(name)
        run = client.create_run(experiment)
        client.log_artifacts(run.info.run_id, tmp, artifact_path="model")
    mv = client.create_model_version(name, f"runs:/{run.info.run_id}/model", run_id=run.info.run_id)
    return str(mv.version)


def _pyfunc(loader: str, **extra: Any) -> dict[str, Any]:
    return {"loader_module": loader, "python_version": "3.11", **extra}


@pytest.fixture(scope="module")
def booster_ubj(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, Any, np.ndarray]:
    import xgboost as xgb

    x = np.random.default_rng(2).normal(size=(200, len(FIELDS))).astype(np.float32)
    booster = xgb.train(
        {"objective": "binary:logistic", "max_depth": 2, "nthread": 1},
        xgb.DMatrix(x, label=(x[:, 0] > x[:, 1]).astype(int)),
        num_boost_round=4,
    )
    return bytes(booster.save_raw("ubj")), booster, x


def _xgb_flavors(model_class: str = "xgboost.core.Booster") -> dict[str, Any]:
    return {
        "python_function": _pyfunc("mlflow.xgboost", data="model.ubj"),
        "xgboost": {"data": "model.ubj", "model_class": model_class, "model_format": "ubj"},
    }


def _featurizer(*fields: str, vector: str | None = None) -> Any:
    from headrace.models import Featurizer

    return Featurizer(list(fields), vector)


@needs_mlflow
@pytest.mark.parametrize(
    ("flavors", "why"),
    [
        (
            {
                "python_function": _pyfunc("mlflow.sklearn", model_path="model.pkl"),
                "sklearn": {"pickled_model": "model.pkl", "serialization_format": "cloudpickle"},
            },
            "its flavour mlflow.sklearn keeps the model as a pickle",
        ),
        (
            {
                "python_function": _pyfunc("mlflow.lightgbm", data="model.pkl"),
                "lightgbm": {"data": "model.pkl", "model_class": "lightgbm.sklearn.LGBMClassifier"},
            },
            "mlflow.lightgbm pickles a lightgbm.sklearn.LGBMClassifier",
        ),
        (
            {"python_function": _pyfunc("mlflow.pyfunc.model", python_model="python_model.pkl")},
            "its flavour mlflow.pyfunc.model keeps the model as a pickle",
        ),
        (_xgb_flavors("os.system"), "mlflow.xgboost would instantiate os.system"),
    ],
)
def test_a_plain_version_that_carries_a_pickle_needs_allow_pickle(
    uri: str, client: Any, experiment: str, flavors: dict[str, Any], why: str
) -> None:
    plain_version(client, experiment, "plain", flavors, {"model.pkl": b"x"}, _columns(*FIELDS))
    src = source(uri, "mlflow:plain/1", featurizer=_featurizer(*FIELDS))
    with pytest.raises(ModelLoadError) as exc:
        src.load("1")
    message = str(exc.value)
    assert message.startswith("mlflow model 'plain' version 1 is a plain MLflow pyfunc model")
    assert why in message and "Set allow_pickle: true" in message and "\n" not in message


@needs_mlflow
@pytest.mark.parametrize(
    ("inputs", "featurizer", "message"),
    [
        (
            _columns("a", "b", "c"),
            ("a", "b", "c", "d"),
            "its signature takes 3 inputs (a, b, c), the featurizer gives 4 "
            "(model.features.fields: a, b, c, d)",
        ),
        (
            _columns("a", "b", "c", "e"),
            ("a", "b", "c", "d"),
            "its signature's columns (a, b, c, e) are not model.features.fields (a, b, c, d)",
        ),
        (
            _columns("a", "b", "c", "d", kind="string"),
            ("a", "b", "c", "d"),
            "non-numeric input columns: a (string), b (string)",
        ),
        (
            json.dumps([{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 5]}}]),
            ("a", "b", "c", "d"),
            "its signature takes 5 inputs, the featurizer gives 4",
        ),
        (None, ("a", "b", "c", "d"), "has no input signature: log it with one"),
    ],
)
def test_a_plain_version_whose_signature_does_not_fit_is_refused_in_one_line(
    uri: str,
    client: Any,
    experiment: str,
    booster_ubj: tuple[bytes, Any, np.ndarray],
    inputs: str | None,
    featurizer: tuple[str, ...],
    message: str,
) -> None:
    """Checked from the MLmodel file alone, before the model is downloaded or loaded."""
    plain_version(
        client, experiment, "plain", _xgb_flavors(), {"model.ubj": booster_ubj[0]}, inputs
    )
    with pytest.raises(ModelLoadError) as exc:
        source(
            uri,
            "mlflow:plain/1",
            featurizer=_featurizer(*featurizer),
        ).load("1")
    assert message in str(exc.value)
    assert str(exc.value).startswith("mlflow model 'plain' version 1")
    assert "\n" not in str(exc.value)


@needs_mlflow
def test_a_plain_xgboost_version_scores_in_a_pipeline(
    uri: str,
    client: Any,
    experiment: str,
    booster_ubj: tuple[bytes, Any, np.ndarray],
    tmp_path: Path,
) -> None:
    """A version logged the standard way serves through mlflow.pyfunc, its outputs what
    XGBoost predicts; without pandas (the mlflow extra lacks it), one line says so."""
    import xgboost as xgb

    from headrace.pipeline import Pipeline

    data, booster, x = booster_ubj
    v = plain_version(
        client, experiment, "churn", _xgb_flavors(), {"model.ubj": data}, _columns(*FIELDS)
    )
    client.set_registered_model_alias("churn", "production", v)
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text(
        "".join(json.dumps(dict(zip(FIELDS, map(float, r), strict=True))) + "\n" for r in x[:30])
    )
    config = {
        "name": "plain-mlflow",
        "source": {"type": "jsonl", "path": str(inp)},
        "model": {
            "type": "registry",
            "ref": "mlflow:churn@production",
            "tracking_uri": uri,
            "features": {"fields": FIELDS},
        },
        "sinks": [{"type": "jsonl", "path": str(out)}],
    }
    if not HAVE_PYFUNC:
        from headrace import PipelineError

        with pytest.raises(PipelineError, match=r"needs mlflow\.pyfunc.*pip install pandas"):
            Pipeline.from_config(parse_config(config)).run(install_signal_handlers=False)
        return
    summary = Pipeline.from_config(parse_config(config)).run(install_signal_handlers=False)
    assert summary.records_out == 30
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    np.testing.assert_allclose(
        [r["prediction"] for r in rows], booster.predict(xgb.DMatrix(x[:30])), rtol=1e-5
    )
    assert {(r["model"]["name"], r["model"]["version"]) for r in rows} == {("churn", "1")}


@needs_mlflow
@pytest.mark.skipif(not HAVE_PYFUNC, reason="mlflow.pyfunc needs pandas, not in the mlflow extra")
def test_a_sklearn_version_logged_by_mlflow_loads_only_with_allow_pickle(
    uri: str, client: Any, experiment: str, tmp_path: Path
) -> None:
    """mlflow.sklearn.log_model, as users call it: a pickle, so allow_pickle or nothing."""
    import mlflow
    import mlflow.sklearn
    from mlflow.models import infer_signature
    from sklearn.linear_model import LinearRegression

    x = np.random.default_rng(4).normal(size=(50, len(FIELDS)))
    reg = LinearRegression().fit(x, x @ [1.0, 2.0, 3.0, 4.0])
    frame = __import__("pandas").DataFrame(x, columns=FIELDS)
    mlflow.set_tracking_uri(uri)
    try:
        with mlflow.start_run(experiment_id=experiment):
            mlflow.sklearn.log_model(
                reg,
                name="model",
                signature=infer_signature(frame, reg.predict(x)),
                registered_model_name="reg",
            )
    finally:
        mlflow.set_tracking_uri(None)
    featurizer = _featurizer(*FIELDS)
    with pytest.raises(ModelLoadError, match=r"mlflow\.sklearn keeps the model as a pickle"):
        source(uri, "mlflow:reg/1", featurizer=featurizer).load("1")
    model = source(uri, "mlflow:reg/1", featurizer=featurizer, allow_pickle=True).load("1")
    assert model.format == "mlflow-pyfunc" and len(model.sha256) == 64
    batch = x[:5].astype(np.float32)
    np.testing.assert_allclose(model.predict_batch(batch), reg.predict(batch), rtol=1e-4)
