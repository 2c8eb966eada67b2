"""Loading registered versions: each format, and the artifacts that must be refused before
a single byte is deserialised."""

from __future__ import annotations

import asyncio
import inspect
import io
import pickle
import sys
from pathlib import Path
from typing import Any

import joblib
import msgspec
import numpy as np
import pytest
from sklearn.ensemble import IsolationForest
from sklearn.linear_model import LogisticRegression

from headrace.models import CallableModel, Model, ModelLoadError
from headrace.registry import LocalRegistry, RegisteredModel, VersionInfo, load_version

TREE = "sklearn.tree._tree.Tree"


class CreatesFile:
    """A pickle payload: unpickling it creates ``path``, the way a malicious one would run
    any code it likes, without needing os.system."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.path,))


class Doubler:
    """A picklable object with its own predict_batch."""

    def predict_batch(self, inputs: Any) -> Any:
        return [sum(row) * 2 for row in inputs]


def file_with(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def wrong_digest(info: VersionInfo) -> VersionInfo:
    flipped = ("0" if info.sha256[0] != "0" else "1") + info.sha256[1:]
    return msgspec.structs.replace(info, sha256=flipped)


# -- ONNX ------------------------------------------------------------------------------------


def test_onnx_loads_from_the_verified_bytes(
    registry: LocalRegistry,
    logreg_onnx: Path,
    logreg: LogisticRegression,
    data: np.ndarray,
    sessions: list[Any],
) -> None:
    """The model carries the registry's name, version and sha256, predicts like the source
    estimator, and ONNX Runtime was handed bytes, not a path to reopen."""
    info = registry.register("lr", logreg_onnx, format="onnx")
    model = load_version(registry, info)
    assert isinstance(model, Model) and isinstance(model, RegisteredModel)
    assert (model.name, model.version, model.sha256) == ("lr", "1", info.sha256)
    assert model.short_sha == info.sha256[:12] and "lr/1" in repr(model)
    np.testing.assert_allclose(model.predict_batch(data), logreg.predict_proba(data), atol=1e-4)
    assert len(sessions) == 1 and isinstance(sessions[0][0], bytes)
    assert sessions[0][0] == logreg_onnx.read_bytes()


def test_onnx_options_pick_the_output(
    registry: LocalRegistry, logreg_onnx: Path, logreg: LogisticRegression, data: np.ndarray
) -> None:
    info = registry.register("lr", logreg_onnx, format="onnx", options={"output": "label"})
    np.testing.assert_array_equal(
        load_version(registry, info).predict_batch(data), logreg.predict(data)
    )
    bad = registry.register("lr", logreg_onnx, format="onnx", options={"output": "nope"})
    with pytest.raises(ModelLoadError, match="no output 'nope'"):
        load_version(registry, bad)


def test_truncated_onnx_is_refused_before_deserialising(
    registry: LocalRegistry, logreg_onnx: Path, sessions: list[Any]
) -> None:
    """An artifact cut short after registration fails its sha256 check: ONNX Runtime never
    sees it."""
    info = registry.register("lr", logreg_onnx, format="onnx")
    path = registry.artifact_path(info)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ModelLoadError, match="sha256 mismatch") as exc:
        load_version(registry, info)
    assert str(path) in str(exc.value)
    assert sessions == []


def test_swapped_onnx_is_refused_before_deserialising(
    registry: LocalRegistry, logreg_onnx: Path, iforest_onnx: Path, sessions: list[Any]
) -> None:
    """A valid model that is not the registered one (a sha256 mismatch) is refused, as is a
    version whose recorded digest was altered."""
    info = registry.register("lr", logreg_onnx, format="onnx")
    registry.artifact_path(info).write_bytes(iforest_onnx.read_bytes())
    with pytest.raises(ModelLoadError, match="sha256 mismatch"):
        load_version(registry, info)
    other = registry.register("lr", logreg_onnx, format="onnx")
    with pytest.raises(ModelLoadError, match="sha256 mismatch"):
        load_version(registry, wrong_digest(other))
    assert sessions == []


def test_missing_artifact_is_a_load_error(registry: LocalRegistry, logreg_onnx: Path) -> None:
    info = registry.register("lr", logreg_onnx, format="onnx")
    registry.artifact_path(info).unlink()
    with pytest.raises(ModelLoadError, match="cannot read the model file"):
        load_version(registry, info)


def test_garbage_with_a_matching_digest_is_a_load_error(
    registry: LocalRegistry, artifact: Path
) -> None:
    """Bytes that pass the digest (they were registered as they are) but are no model fail
    as a load error naming the version."""
    info = registry.register("junk", artifact, format="onnx")
    with pytest.raises(ModelLoadError, match="junk: ONNX Runtime cannot load"):
        load_version(registry, info)
    sk = registry.register("junk", artifact, format="skops")
    with pytest.raises(ModelLoadError, match="'junk' version '2': cannot load the skops"):
        load_version(registry, sk)


# -- skops -----------------------------------------------------------------------------------


def test_skops_loads_default_trusted_estimator(
    registry: LocalRegistry,
    logreg_skops: Path,
    logreg: LogisticRegression,
    data: np.ndarray,
    skops_calls: list[str],
) -> None:
    info = registry.register(
        "lr", logreg_skops, format="skops", options={"method": "predict_proba"}
    )
    model = load_version(registry, info)
    assert (model.name, model.version, model.sha256) == ("lr", "1", info.sha256)
    np.testing.assert_array_equal(model.predict_batch(data), logreg.predict_proba(data))
    assert skops_calls == ["get_untrusted_types", "loads"]


def test_skops_untrusted_types_are_refused_until_registered_as_trusted(
    registry: LocalRegistry,
    iforest_skops: Path,
    iforest: IsolationForest,
    data: np.ndarray,
    skops_calls: list[str],
) -> None:
    """An IsolationForest holds sklearn's Tree, which skops does not trust by default: the
    version without it in trusted_types is refused naming it; the one with it loads, with
    the method and sign its options ask for."""
    plain = registry.register("if", iforest_skops, format="skops")
    with pytest.raises(ModelLoadError) as info:
        load_version(registry, plain)
    assert TREE in str(info.value) and "--trusted-type" in str(info.value)
    assert "loads" not in skops_calls
    trusted = registry.register(
        "if",
        iforest_skops,
        format="skops",
        trusted_types=[TREE],
        options={"method": "score_samples", "negate": True},
    )
    model = load_version(registry, trusted)
    np.testing.assert_array_equal(model.predict_batch(data), -iforest.score_samples(data))


def test_skops_tampered_artifact_is_never_inspected(
    registry: LocalRegistry, logreg_skops: Path, skops_calls: list[str]
) -> None:
    info = registry.register("lr", logreg_skops, format="skops")
    path = registry.artifact_path(info)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ModelLoadError, match="sha256 mismatch"):
        load_version(registry, info)
    assert skops_calls == []


def test_skops_method_the_estimator_lacks(registry: LocalRegistry, logreg_skops: Path) -> None:
    info = registry.register(
        "lr", logreg_skops, format="skops", options={"method": "score_samples"}
    )
    with pytest.raises(
        ModelLoadError,
        match="LogisticRegression, which has neither predict_batch nor 'score_samples'",
    ):
        load_version(registry, info)


# -- pickle and joblib -----------------------------------------------------------------------


def test_pickle_is_refused_without_opt_in_and_runs_nothing(
    registry: LocalRegistry, tmp_path: Path
) -> None:
    """A pickle whose loading would create a file: without allow_pickle it is refused, the
    file does not exist afterwards, and the message says why and how to opt in."""
    marker = tmp_path / "pwned"
    path = file_with(tmp_path, "evil.pkl", pickle.dumps(CreatesFile(marker)))
    for fmt in ("pickle", "joblib"):
        info = registry.register("evil", path, format=fmt)
        with pytest.raises(ModelLoadError) as exc:
            load_version(registry, info)
        message = str(exc.value)
        assert "allow_pickle=True" in message and "runs whatever code" in message
        assert not marker.exists()


def test_the_evil_pickle_really_runs_code_when_allowed(
    registry: LocalRegistry, tmp_path: Path
) -> None:
    """The same payload, allowed, does create the file (so the test above proves something)
    and, being no model, then fails to load."""
    marker = tmp_path / "pwned"
    path = file_with(tmp_path, "evil.pkl", pickle.dumps(CreatesFile(marker)))
    info = registry.register("evil", path, format="pickle")
    with pytest.raises(ModelLoadError, match="holds a NoneType"):
        load_version(registry, info, allow_pickle=True)
    assert marker.exists()


def test_tampered_pickle_is_refused_even_when_allowed(
    registry: LocalRegistry, tmp_path: Path
) -> None:
    """allow_pickle trusts the registered file, not whatever replaced it: an artifact
    swapped for a malicious pickle fails the sha256 check and runs nothing."""
    marker = tmp_path / "pwned"
    good = file_with(tmp_path, "good.pkl", pickle.dumps(Doubler()))
    info = registry.register("m", good, format="pickle")
    registry.artifact_path(info).write_bytes(pickle.dumps(CreatesFile(marker)))
    with pytest.raises(ModelLoadError, match="sha256 mismatch"):
        load_version(registry, info, allow_pickle=True)
    assert not marker.exists()
    truncated = registry.register("m", good, format="pickle")
    path = registry.artifact_path(truncated)
    path.write_bytes(path.read_bytes()[:5])
    with pytest.raises(ModelLoadError, match="sha256 mismatch"):
        load_version(registry, truncated, allow_pickle=True)


def test_pickle_and_joblib_load_when_allowed(
    registry: LocalRegistry, tmp_path: Path, logreg: LogisticRegression, data: np.ndarray
) -> None:
    """With the opt-in, an object with predict_batch is used as it is, and an estimator
    through its method."""
    own = registry.register(
        "d", file_with(tmp_path, "d.pkl", pickle.dumps(Doubler())), format="pickle"
    )
    model = load_version(registry, own, allow_pickle=True)
    assert (model.name, model.version) == ("d", "1")
    assert model.predict_batch([[1, 2], [3, 4]]) == [6, 14]

    buffer = io.BytesIO()
    joblib.dump(logreg, buffer)
    info = registry.register(
        "lr",
        file_with(tmp_path, "lr.joblib", buffer.getvalue()),
        format="joblib",
        options={"method": "decision_function", "negate": True},
    )
    model = load_version(registry, info, allow_pickle=True)
    np.testing.assert_array_equal(model.predict_batch(data), -logreg.decision_function(data))


# -- torch -----------------------------------------------------------------------------------


def test_missing_torch_is_a_clear_error(
    registry: LocalRegistry, artifact: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without torch installed, a PyTorch version fails with how to fix it, before its
    file is read."""
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` fail
    for fmt, options in [("torchscript", {}), ("torch-weights", {"factory": "torch.nn:Linear"})]:
        info = registry.register("t", artifact, format=fmt, options=options)
        registry.artifact_path(info).unlink()  # would be "cannot read" if it were read first
        with pytest.raises(ModelLoadError, match=r"needs torch.*pip install torch"):
            load_version(registry, info)


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")  # still what it loads
def test_torchscript_loads(registry: LocalRegistry, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(3, 1))
    path = tmp_path / "m.pt"
    torch.jit.save(torch.jit.script(module), str(path))
    info = registry.register("ts", path, format="torchscript")
    model = load_version(registry, info)
    x = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()[:, 0]
    out = model.predict_batch(x.tolist())
    assert out.shape == (5,)
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_torch_weights_load_into_the_factory_module(
    registry: LocalRegistry, tmp_path: Path
) -> None:
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    source = torch.nn.Linear(4, 2)
    path = tmp_path / "w.pt"
    torch.save(source.state_dict(), path)
    info = registry.register(
        "tw",
        path,
        format="torch-weights",
        options={
            "factory": "torch.nn:Linear",
            "factory_kwargs": {"in_features": 4, "out_features": 2},
        },
    )
    model = load_version(registry, info)
    x = np.ones((3, 4), dtype=np.float32)
    with torch.no_grad():
        expected = source(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(model.predict_batch(x), expected, atol=1e-6)

    wrong = registry.register(
        "tw",
        path,
        format="torch-weights",
        options={
            "factory": "torch.nn:Linear",
            "factory_kwargs": {"in_features": 5, "out_features": 2},
        },
    )
    with pytest.raises(ModelLoadError, match="cannot load the torch-weights artifact"):
        load_version(registry, wrong)
    missing = registry.register(
        "tw", path, format="torch-weights", options={"factory": "no_such_module:f"}
    )
    with pytest.raises(ModelLoadError, match="cannot import the factory 'no_such_module:f'"):
        load_version(registry, missing)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
def test_torch_weights_refuse_pickled_code(registry: LocalRegistry, tmp_path: Path) -> None:
    """weights_only: a weights file that is really a code-running pickle is refused by
    torch's restricted unpickler, and runs nothing."""
    pytest.importorskip("torch")
    marker = tmp_path / "pwned"
    path = file_with(tmp_path, "evil.pt", pickle.dumps(CreatesFile(marker)))
    info = registry.register(
        "tw", path, format="torch-weights", options={"factory": "torch.nn:Identity"}
    )
    with pytest.raises(ModelLoadError, match="cannot load the torch-weights artifact"):
        load_version(registry, info)
    assert not marker.exists()


def test_registered_model_keeps_an_async_predict_batch_awaitable(
    registry: LocalRegistry, artifact: Path
) -> None:
    """The engine awaits a coroutine predict_batch on its loop; the wrapper must not hide
    that behind a plain method."""

    async def double(xs: Any) -> Any:
        return [2 * x for x in xs]

    info = registry.register("a", artifact, format="pickle")
    model = RegisteredModel(CallableModel(double, name="inner"), info)
    assert inspect.iscoroutinefunction(model.predict_batch)
    assert asyncio.run(model.predict_batch([1, 2])) == [2, 4]
    plain = RegisteredModel(CallableModel(lambda xs: xs, name="inner"), info)
    assert not inspect.iscoroutinefunction(plain.predict_batch)
    assert (plain.name, plain.version, plain.sha256) == ("a", "1", info.sha256)
